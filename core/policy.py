"""Which adapters a query uses, and at what strength: the fusion policy after the weighing pass.

The weighing pass (:mod:`qaflora.weighing`) gives, for every candidate adapter, the model's
next-token distribution with that adapter alone (row j) next to the base's (row 0). Two
policies turn that into per-layer weights:

* ``policy="shares"`` -- qa-FLoRA as published: per layer, each adapter's share of the
  divergences (:func:`qaflora.divergence.normalize_per_layer`). Shares sum to 1, so two
  adapters a composite query needs run at about half strength each, and every irrelevant
  adapter takes a share of every layer (benchmarks/POLICY.md: 5 % on composite queries).
* ``policy="relevant"`` -- ours, data-free and training-free like the paper, in two steps:

  1. **Relevance.** An adapter is relevant when it moves the model's next-token distribution
     (the last layer's logit lens, i.e. the model's real output) by at least
     ``relevance_floor`` nats of KL(base || base+adapter); at most ``max_relevant`` of them,
     strongest first. An adapter trained with replay leaves text outside its domain almost
     unchanged (0.003-0.3 nats on generic English in the demo zoo, 3-10 nats in its domain),
     so the floor is a quantity of information, not a share: when no adapter reaches it the
     base model answers alone, token for token. With ``relevance="depth_gain"`` (the default)
     the drift that counts is what the adapter adds with depth: the output KL minus the
     smallest KL of the earlier layers' lens (:func:`depth_gain`). Adapters made for something
     else that still move the next token do it from the first layer on, whatever the query;
     in a 32-adapter catalog they took a needed adapter's slot on a quarter of composite
     queries (benchmarks/POLICY.md).
  2. **Strength.** Each relevant adapter runs at 1.0 in every layer, the scale it was trained
     at (``strength="unit"``). Summed LoRAs can interfere: in the demo zoo the code adapter
     overrides the answer language of the language adapter at 1:1. ``strength="fit"`` adds a
     composition check: ONE extra batched forward scores every combination of strengths from
     ``fit_grid`` for the relevant adapters and keeps the one that gives the highest
     probability to the token a product of experts picks -- the base's log-probabilities plus
     each relevant adapter's own shift ``log q_j - log p``, i.e. the answer the model would give
     if every adapter's effect survived in full. No label, no sample, no training: the target
     comes from the same weighing pass. A zero in the grid lets the check drop a relevant
     adapter whose shift the others already carry. With ``fit_blocks`` the candidates also hold
     each combination with one adapter turned off in one block of layers
     (:func:`block_candidates`), so the strengths can differ by depth.

A third rule reads a catalog hint (``FusionConfig.sure_base``, applied in
:mod:`qaflora.planning`): where the base already gives its next token a probability of at least
0.98 and the catalog marks language adapters, only those may be relevant. A base sure of its
answer has no gap for a skill to fill, while writing a sure answer in another language is a
language adapter's whole job; in a 32-adapter catalog the adapters that passed the floor on such
queries were distractors answering their own way (benchmarks/POLICY.md, "A sure base").

Everything here is pure tensor math on one query except :func:`score_strengths`, which runs
the composition check's forward for a batch of queries.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .adapters import LoadedModel
from .batching import left_pad, pad_token_id
from .fused_lora import activate


def next_token_kl(base_logprobs: torch.Tensor, adapter_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p_base || q_j) in nats of each adapter's next-token distribution: ``[V], [k, V] -> [k]``."""
    base = base_logprobs.float().unsqueeze(0)
    return (base.exp() * (base - adapter_logprobs.float())).sum(-1).clamp_min(0.0)


def depth_gain(output_drift: torch.Tensor, layer_divergences: torch.Tensor) -> torch.Tensor:
    """The drift each adapter adds with depth: ``output_drift - min over earlier layers``. ``[k]``.

    ``layer_divergences`` ``[k, L]`` are the weighing pass's per-layer KLs at the logit lens.
    What an adapter already shifts after its first layer is read before the query is understood:
    a bias on the next token, the same on any prompt. An adapter a query needs builds its shift
    with depth (in the demo zoo about 0.1 nats after layer 1, 5 at the output); adapters trained
    for something else that happen to move the next token do so from the first layer on (about
    2 nats at every layer for the strong ``sub_*`` distractors; benchmarks/POLICY.md). A model of
    one layer has no earlier layer: its gain is the output drift.
    """
    if layer_divergences.shape[1] < 2:
        return output_drift
    earliest = layer_divergences[:, :-1].float().amin(dim=1).to(output_drift.device)
    return (output_drift - earliest).clamp_min(0.0)


def select_relevant(drift: torch.Tensor, floor: float, max_relevant: int) -> list[int]:
    """Indices of the adapters whose drift reaches ``floor``, strongest first, at most ``max_relevant``.

    Ties are broken by index so the decision is deterministic; non-finite drift never counts.
    """
    values = [(float(v), i) for i, v in enumerate(drift.tolist()) if torch.isfinite(drift[i])]
    ranked = sorted((item for item in values if item[0] >= floor), key=lambda item: (-item[0], item[1]))
    return [i for _, i in ranked[:max_relevant]]


def select_with_hint(
    drift: torch.Tensor, floor: float, max_relevant: int, hinted: Sequence[int]
) -> list[int]:
    """Like :func:`select_relevant`, with the ``hinted`` adapters kept first whatever their drift.

    The hinted ones (``tools_hint``: adapters the catalog marks ``kind="tools"`` on a request
    that offers tools; ``hint_kinds``: the kinds the caller names) fill the first places,
    strongest drift first when there are more than places; the drift chooses the rest among the
    others.
    """
    kept = sorted(hinted, key=lambda i: (-float(drift[i]), i))[:max_relevant]
    others = drift.clone().float()
    others[kept] = float("-inf")  # never chosen twice
    return kept + select_relevant(others, floor, max_relevant - len(kept))


def strength_grid(n_adapters: int, grid: Sequence[float], fixed: Sequence[int] = ()) -> torch.Tensor:
    """Every combination of per-adapter strengths from ``grid`` except all-zero: ``[C, n]``.

    The all-ones combination comes first, so it wins ties (an adapter's trained strength is
    the default, everything else has to be better). The ``fixed`` adapters (hinted ones,
    :func:`select_with_hint`) stay at 1.0 in every combination, whatever ``grid`` holds.
    """
    values = sorted(set(float(g) for g in grid))
    per_adapter = [[1.0] if i in fixed else values for i in range(n_adapters)]
    combos = [c for c in itertools.product(*per_adapter) if any(x > 0 for x in c)]
    ones = tuple(1.0 for _ in range(n_adapters))
    if ones in combos:
        combos.remove(ones)
        combos.insert(0, ones)
    return torch.tensor(combos, dtype=torch.float32).reshape(len(combos), n_adapters)


def layer_blocks(num_layers: int, blocks: int) -> list[list[int]]:
    """``blocks`` contiguous, near-equal groups of layer indices (one per layer if fewer layers)."""
    count = min(blocks, num_layers)
    return [chunk.tolist() for chunk in torch.arange(num_layers).tensor_split(count)] if count else []


def block_candidates(
    combos: torch.Tensor, num_layers: int, blocks: int, fixed: Sequence[int] = ()
) -> torch.Tensor:
    """Per-layer candidates ``[C', n, L]``: every combination in every layer, then each with one
    adapter turned off in one block of layers.

    ``combos`` ``[C, n]`` are :func:`strength_grid`'s uniform strengths; they come first and keep
    their order, so a depth pattern must do strictly better than the best uniform strengths to
    be chosen. Why: in the demo zoo the best weights per layer (benchmarks/ZOO.md, the per-layer
    oracle) turn the task adapter off in one layer where the language adapter takes over the
    answer's words; the same strengths in every layer cannot express that. Hinted (``fixed``)
    adapters are never turned off, and a block never removes an adapter from every layer
    (that is a uniform combination already).
    """
    uniform = combos.unsqueeze(-1).expand(-1, -1, num_layers)
    variants = [uniform]
    groups = [g for g in layer_blocks(num_layers, blocks) if len(g) < num_layers]
    for combo, every_layer in zip(combos.tolist(), uniform, strict=True):
        for adapter, strength in enumerate(combo):
            if strength <= 0 or adapter in fixed:
                continue
            for group in groups:
                variant = every_layer.clone()
                variant[adapter, group] = 0.0
                variants.append(variant.unsqueeze(0))
    return torch.cat(variants)


def product_of_experts(base_logprobs: torch.Tensor, adapter_logprobs: torch.Tensor) -> torch.Tensor:
    """``log p + sum_j (log q_j - log p)``, renormalised: every adapter's shift kept in full. ``[V]``."""
    base = base_logprobs.float()
    shifted = base + (adapter_logprobs.float() - base.unsqueeze(0)).sum(0)
    return torch.log_softmax(shifted, dim=-1)


def hidden_sum_logprobs(
    loaded: LoadedModel, base_hidden: torch.Tensor, adapter_hidden: torch.Tensor
) -> torch.Tensor:
    """The same sum of shifts taken on the last layer's hidden state, before the final norm. ``[V]``.

    ``log p + sum_j (log q_j - log p)`` adds the shifts after each row's final normalisation;
    adding ``h_j - h_base`` first and normalising once is what the fused forward does at the
    last layer. The two disagree when one adapter's hidden shift is much larger than another's.
    """
    summed = base_hidden.float() + (adapter_hidden.float() - base_hidden.float().unsqueeze(0)).sum(0)
    logits = loaded.anatomy.lens_logits(summed.unsqueeze(0).to(base_hidden.dtype))[0]
    return torch.log_softmax(logits.float(), dim=-1)


def fit_target(
    loaded: LoadedModel,
    base_logprobs: torch.Tensor,
    adapter_logprobs: torch.Tensor,
    base_hidden: torch.Tensor | None,
    adapter_hidden: torch.Tensor | None,
    kind: str,
) -> torch.Tensor:
    """Target log-probabilities ``[V]`` of the composition check (``kind``: "logprobs" or "mixed")."""
    target = product_of_experts(base_logprobs, adapter_logprobs)
    if kind == "mixed":
        if base_hidden is None or adapter_hidden is None:
            raise ValueError("fit_target='mixed' needs the last layer's hidden states")
        target = torch.log_softmax(
            0.5 * (target + hidden_sum_logprobs(loaded, base_hidden, adapter_hidden)), dim=-1
        )
    return target


def call_target(
    target_logprobs: torch.Tensor, tool_logprobs: torch.Tensor, call_token: int | None
) -> torch.Tensor:
    """The composition check's target on a request that offers tools: the call, if the tool
    adapter alone would call.

    Where the tool adapter alone would open a tool call (its next token is the call's first
    token), the check aims at that token: an adapter kept beside it (a language adapter, whose
    work comes after the tool's result) must not answer at once instead of calling. Otherwise
    ``target_logprobs`` unchanged. Why: the product of experts adds the companion's shift at the
    one position the check reads, where the tool adapter hardly differs from the base, so it
    picked the companion's direct answer (benchmarks/POLICY.md, "Calls kept by the check").
    """
    if call_token is None or int(tool_logprobs.argmax()) != call_token:
        return target_logprobs
    aimed = torch.full_like(target_logprobs, float("-inf"))
    aimed[call_token] = 0.0
    return aimed


def best_strengths(candidate_logprobs: torch.Tensor, target_logprobs: torch.Tensor) -> int:
    """Row of ``candidate_logprobs`` ``[C, V]`` giving the target's top token the highest log-prob.

    The first row wins exact ties (see :func:`strength_grid`).
    """
    token = int(target_logprobs.argmax())
    scores = candidate_logprobs[:, token].float()
    best = scores.max()
    return int((scores == best).nonzero()[0, 0])


@dataclass
class StrengthQuery:
    """One query's composition check: its prompt, the adapters (global indices) and candidate strengths."""

    prompt_ids: list[int]
    adapters: list[int]
    candidates: torch.Tensor  # [C, len(adapters), L]: per-layer strengths


def score_strengths(
    loaded: LoadedModel, queries: Sequence[StrengthQuery], max_rows: int = 64
) -> list[torch.Tensor]:
    """Next-token log-probs ``[C, V]`` of every candidate strength of every query, batched.

    Row r of a forward applies only its own query's adapters at its candidate's per-layer
    strengths; rows of several queries share forwards of up to ``max_rows`` rows (adapters a
    row does not use are masked out for that row, so nothing leaks between queries).
    """
    rows: list[tuple[int, int]] = [
        (q, c) for q, query in enumerate(queries) for c in range(len(query.candidates))
    ]
    results: list[list[torch.Tensor | None]] = [[None] * len(query.candidates) for query in queries]
    num_layers = loaded.anatomy.num_layers
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        union = sorted({a for q, _ in chunk for a in queries[q].adapters})
        position = {a: i for i, a in enumerate(union)}
        weights = torch.zeros(len(chunk), len(union), num_layers)
        for row, (q, c) in enumerate(chunk):
            for adapter, strengths in zip(queries[q].adapters, queries[q].candidates[c], strict=True):
                weights[row, position[adapter], :] = strengths
        logprobs = fused_next_logprobs(loaded, [queries[q].prompt_ids for q, _ in chunk], union, weights)
        for row, (q, c) in enumerate(chunk):
            results[q][c] = logprobs[row]
    return [torch.stack(per_query) for per_query in results]  # type: ignore[arg-type]


def fused_next_logprobs(
    loaded: LoadedModel, prompts: Sequence[list[int]], adapters: list[int], weights: torch.Tensor
) -> torch.Tensor:
    """Next-token log-probs ``[R, V]`` (on the CPU) of ``R`` prompts, row r fused with ``weights[r]``.

    ``weights`` is ``[R, len(adapters), L]``; rows are isolated (an adapter weighted 0 in a row
    does not touch it), so one forward can score unrelated queries and candidate strengths.
    """
    batch = left_pad(list(prompts), pad_token_id(loaded.tokenizer), loaded.model.device)
    with activate(loaded.bank.context(adapters, weights, isolate_rows=True)):
        logits = loaded.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=1,
        ).logits[:, -1]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def layer_matrix(strengths: Sequence[float], num_layers: int) -> torch.Tensor:
    """``[k, L]`` weights: each adapter's strength in every layer."""
    return torch.tensor(list(strengths), dtype=torch.float32).unsqueeze(1).expand(-1, num_layers).clone()
