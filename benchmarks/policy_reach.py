"""Two data-free ways to spot an always-on distractor in a large catalog, measured (dev seed).

The default policy keeps the adapters whose next-token KL *gained with depth* reaches 0.5 nats
(``core/policy.py``). On the 32-adapter catalog (the zoo plus ``qaflora zoo distractors``) the
mixed single-domain stream still loses 7.4 points against five adapters: ``sub_lastword`` and
``sub_color`` are kept next to the right adapter (benchmarks/POLICY.md). This script measures
two ideas for telling them apart without labels:

1. **Reach over the base's own queries.** Sample ``--probes`` user turns from the base model
   itself (the chat template up to the user's text, sampled until the assistant's turn starts:
   no data, any chat model), weigh each over the catalog and count, per adapter, the share of
   probes where its depth gain reaches the floor. An adapter made for one thing should fire on
   few of them; one that moves every answer on many.
2. **What the second adapter adds to the first.** For queries where two adapters pass the
   floor, the KL between the first adapter alone and both together at the output (one fused
   forward per combination): a needed partner should change the answer, a redundant or
   conflicting one less.

Both print how they separate the adapters a query needs from the others (labels used only to
score). ``policy_features.py`` makes the features file.

    python benchmarks/policy_features.py --n 50 --seed 7777778 --catalog catalog_32.yaml --out F.pt
    python benchmarks/policy_reach.py F.pt --catalog catalog_32.yaml
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from policy_features import Features, FusedProbe, divergences_of, lens_rows, load_engine
from qaflora.engine import FusionEngine
from qaflora.policy import depth_gain, select_relevant

FLOOR = 0.5
CAP = 2
MARKER = "qafloraprobemarker"


def gains(kl: torch.Tensor) -> torch.Tensor:
    """``[Q, N]`` depth gain of every adapter from ``[Q, N, L]`` per-layer KLs."""
    return torch.stack([depth_gain(k[:, -1], k) for k in kl])


def sample_user_turns(engine: FusionEngine, n: int, seed: int, max_new_tokens: int = 40) -> list[str]:
    """``n`` user messages written by the base model itself (temperature 1)."""
    tokenizer = engine.tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": MARKER}], tokenize=False, add_generation_prompt=True
    )
    prefix, suffix = text.split(MARKER)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    stop = tokenizer(suffix.strip(), add_special_tokens=False)["input_ids"][:1]
    torch.manual_seed(seed)
    ids = torch.tensor([prefix_ids] * n)
    with torch.inference_mode():
        out = engine.loaded.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=[*stop, tokenizer.eos_token_id],
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = []
    for row in out[:, len(prefix_ids) :].tolist():
        kept = [t for t in row if t not in (tokenizer.pad_token_id, *stop)]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    return [t for t in texts if t]


def exact(features: Features, drift: torch.Tensor, prefix: str) -> float:
    """Share of queries of a kind whose kept adapters are exactly the labelled ones."""
    rows = features.mask(prefix)
    hits = sum(
        {features.names[j] for j in select_relevant(drift[i], FLOOR, CAP)} == set(features.relevant[i])
        for i in rows
    )
    return 100.0 * hits / len(rows)


def reach_report(engine: FusionEngine, features: Features, gain: torch.Tensor, n: int, seed: int) -> None:
    probes = sample_user_turns(engine, n, seed)
    prompts = [engine.encode([{"role": "user", "content": p}]).ids for p in probes]
    probe_gain = gains(
        divergences_of(
            torch.cat([lens_rows(engine, prompts[i : i + 16]) for i in range(0, len(prompts), 16)])
        )
    )
    reach = (probe_gain >= FLOOR).float().mean(0)
    print(
        f"\n## 1. Reach: share of {len(probes)} base-written user turns where the adapter's "
        f"depth gain >= {FLOOR}\n"
    )
    print("examples: " + " | ".join(probes[:6]))
    order = sorted(range(len(features.names)), key=lambda j: -float(reach[j]))
    print("\n| adapter | reach % |\n|---|---|")
    for j in order:
        if reach[j] > 0:
            print(f"| {features.names[j]} | {100 * reach[j]:.1f} |")
    print(f"| every other adapter | 0.0 |\n\nkept = labelled, % (floor {FLOOR}, at most {CAP}):\n")
    print("| relevance | composite | single | generic English |\n|---|---|---|---|")
    for label, drift in [("depth gain (default)", gain)] + [
        (f"depth gain x (1 - {c} x reach)", gain * (1 - c * reach).clamp_min(0)) for c in (1, 2, 4)
    ]:
        print(
            f"| {label} | "
            + " | ".join(f"{exact(features, drift, k):.1f}" for k in ("composite", "single", "generic"))
            + " |"
        )


def marginal_report(engine: FusionEngine, features: Features, gain: torch.Tensor) -> None:
    rows, pairs = [], []
    for i in range(len(features.cells)):
        kept = select_relevant(gain[i], FLOOR, CAP)
        if len(kept) == 2:
            rows.append(i)
            pairs.append(kept)
    n, layers = len(features.names), features.kl.shape[-1]

    def weights(first: float, second: float) -> torch.Tensor:
        w = torch.zeros(len(rows), n, layers)
        for r, (a, b) in enumerate(pairs):
            w[r, a], w[r, b] = first, second
        return w

    probe = FusedProbe(engine, features.prompts)
    both, first_alone = probe.logprobs(weights(1, 1), rows), probe.logprobs(weights(1, 0), rows)
    added = (first_alone.exp() * (first_alone - both)).sum(-1)
    groups: dict[str, list[tuple[float, float]]] = {}
    for r, i in enumerate(rows):
        a, b = (features.names[j] for j in pairs[r])
        needed = set(features.relevant[i])
        if a not in needed:
            continue
        kind = (
            "needed partner"
            if b in needed
            else ("distractor (sub_*/noise_*)" if b.startswith(("sub_", "noise_")) else "another zoo adapter")
        )
        groups.setdefault(kind, []).append((float(added[r]), float(gain[i, pairs[r][1]])))
    print(
        f"\n## 2. What the second kept adapter adds to the first (first one needed; "
        f"{len(rows)} queries keep two)\n"
    )
    print(
        "| second adapter | queries | median KL(first || both) nats | median own depth gain nats |\n"
        "|---|---|---|---|"
    )
    for kind, values in sorted(groups.items()):
        added_median = statistics.median(v[0] for v in values)
        gain_median = statistics.median(v[1] for v in values)
        print(f"| {kind} | {len(values)} | {added_median:.2f} | {gain_median:.2f} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("features", type=Path, help="output of policy_features.py")
    parser.add_argument("--catalog", type=Path, required=True, help="the catalog the features were made on")
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    features = Features.load(args.features)
    engine = load_engine(args.catalog)
    try:
        if engine.adapter_names != features.names:
            raise SystemExit("the catalog's adapters differ from the features file's")
        gain = gains(features.kl)
        reach_report(engine, features, gain, args.probes, args.seed)
        marginal_report(engine, features, gain)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
