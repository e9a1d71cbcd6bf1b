"""Measure a zoo with plain PEFT (independent of the qaflora engine).

Reports, all with greedy decoding and exact match:

* accuracy of the base and of every single adapter on every query group (in-domain skill and
  off-domain preservation),
* next-token drift: mean KL(base || base+adapter) at the last prompt token per query group,
* composite queries (task asked in a language): base, task adapter alone, language adapter
  alone, the plain sum of the two, and the ORACLE pair (weights chosen on a separate dev
  set from a grid) -- the question "can composition work in this world at all",
* qa-FLoRA-style routing from logit-lens KL per layer (a quick stand-in for the engine).

Usage (the numbers in benchmarks/ZOO.md)::

    python -m qaflora.zoo.probe --catalog core/zoo/artifacts/catalog.yaml --n 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from qaflora.zoo.world import (
    DEFAULT_EVAL_SEED,
    DOMAINS,
    LANGUAGES,
    LEXICONS,
    ZooExample,
    generic_questions,
    is_correct,
    make_examples,
    normalize,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

GRID: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
LAYER_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
DEV_SEED = DEFAULT_EVAL_SEED + 1


class Zoo:
    """Base + every catalog adapter loaded into ONE PeftModel, with per-adapter weights."""

    def __init__(self, catalog: Path, dtype: torch.dtype = torch.float32) -> None:
        catalog = Path(catalog)
        spec = yaml.safe_load(catalog.read_text())
        root = catalog.parent
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(root / spec["base_model"])
        base = AutoModelForCausalLM.from_pretrained(root / spec["base_model"], dtype=dtype)
        self.entries = {e["name"]: e for e in spec["adapters"]}
        self.names = list(self.entries)
        first, *rest = self.names
        self.model = PeftModel.from_pretrained(base, root / self.entries[first]["path"], first)
        for name in rest:
            self.model.load_adapter(root / self.entries[name]["path"], adapter_name=name)
        self.model.eval()
        self.lora_layers: list[LoraLayer] = []
        self.layer_of: dict[int, int] = {}  # id(module) -> decoder layer index
        for mod_name, module in self.model.named_modules():
            if isinstance(module, LoraLayer):
                parts = mod_name.split(".")
                self.layer_of[id(module)] = int(parts[parts.index("layers") + 1])
                self.lora_layers.append(module)
        self.base_scaling = {
            id(m): dict(m.scaling) for m in self.lora_layers
        }  # scale_j = alpha / r per module
        self.n_layers = self.model.base_model.model.config.num_hidden_layers

    @contextmanager
    def weighted(self, weights: dict[str, float | Sequence[float]]) -> Iterator[None]:
        """Activate adapters with weights (a scalar, or one weight per decoder layer).

        An empty dict means the bare base model.
        """
        if not weights:
            with self.model.disable_adapter():
                yield
            return
        names = list(weights)
        self.model.base_model.set_adapter(names)
        for m in self.lora_layers:
            layer = self.layer_of[id(m)]
            for name in names:
                w = weights[name]
                w = w[layer] if isinstance(w, Sequence) else w
                m.scaling[name] = self.base_scaling[id(m)][name] * float(w)
        try:
            yield
        finally:
            for m in self.lora_layers:
                m.scaling.update(self.base_scaling[id(m)])

    def _batch(self, examples: Sequence[ZooExample]) -> dict[str, torch.Tensor]:
        texts = [
            self.tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=False)
            for ex in examples
        ]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    @torch.no_grad()
    def generate(
        self, examples: Sequence[ZooExample], batch_size: int = 256, max_new_tokens: int = 0
    ) -> list[str]:
        """Greedy answers (special tokens dropped).

        A plain loop without KV cache: answers are one or two tokens, so this is much faster
        than ``generate`` here. ``max_new_tokens=0`` means longest expected answer + 1 (enough
        to see whether the model stops after the answer, which exact match requires).
        """
        if max_new_tokens <= 0:
            lens = self.tokenizer([ex.answer for ex in examples], add_special_tokens=False)
            max_new_tokens = max(len(ids) for ids in lens["input_ids"]) + 1
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        out: list[str] = []
        for i in range(0, len(examples), batch_size):
            enc = self._batch(examples[i : i + batch_size])
            ids, mask = enc["input_ids"], enc["attention_mask"]
            done = torch.zeros(ids.shape[0], dtype=torch.bool)
            new: list[torch.Tensor] = []
            for _ in range(max_new_tokens):
                pos = (mask.cumsum(-1) - 1).clamp_min(0)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
                nxt = logits[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                new.append(nxt)
                done |= nxt == eos
                ids = torch.cat([ids, nxt[:, None]], 1)
                mask = torch.cat([mask, (~done | (nxt == eos)).long()[:, None]], 1)
                if bool(done.all()):
                    break
            gen = torch.stack(new, 1)
            out += self.tokenizer.batch_decode(gen, skip_special_tokens=True)
        return out

    def accuracy(self, examples: Sequence[ZooExample]) -> float:
        answers = self.generate(examples)
        return sum(is_correct(a, ex) for a, ex in zip(answers, examples, strict=True)) / len(examples)

    @torch.no_grad()
    def lens_logprobs(self, examples: Sequence[ZooExample]) -> torch.Tensor:
        """Logit-lens log-probs at the last prompt token: [layers, batch, vocab]."""
        enc = self._batch(examples)
        inner = self.model.base_model.model  # LlamaForCausalLM
        captured: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(
                lambda _m, _i, o: captured.append((o[0] if isinstance(o, tuple) else o)[:, -1])
            )
            for layer in inner.model.layers
        ]
        try:
            self.model(**enc)
        finally:
            for h in hooks:
                h.remove()
        hidden = torch.stack(captured)  # left padding: position -1 is the last prompt token
        return F.log_softmax(inner.lm_head(inner.model.norm(hidden)).float(), dim=-1)


_WORD_OWNER: dict[str, tuple[str, str]] = {
    word: (en, lang) for lang in LANGUAGES for en, word in LEXICONS[lang].items()
}


def content_and_language(text: str, example: ZooExample) -> tuple[bool, bool]:
    """(right content in any language, every word in the example's language).

    Separates the two halves of a composite query: a task adapter alone typically gets the
    content right in English, a language adapter alone the language right with wrong content.
    """
    words = normalize(text).split()
    owners = [_WORD_OWNER.get(w, (w, "")) for w in words]
    gold = [_WORD_OWNER.get(w, (w, ""))[0] for w in normalize(example.answer).split()]
    content = bool(words) and [en for en, _ in owners] == gold
    language = bool(words) and all(lang == example.language for _, lang in owners)
    return content, language


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def query_groups(n: int, seed: int) -> dict[str, list[ZooExample]]:
    """Named query groups: English domains, generic text per language, composite cells."""
    groups: dict[str, list[ZooExample]] = {}
    for dom in DOMAINS:
        groups[f"{dom}/en"] = make_examples(dom, "en", n, seed)
    for lang in LANGUAGES:
        groups[f"generic/{lang}"] = generic_questions(lang, n, seed)
    for lang in LANGUAGES[1:]:
        for dom in DOMAINS:
            groups[f"{dom}/{lang}"] = make_examples(dom, lang, n, seed)
    return groups


def expected_adapters(group: str) -> set[str]:
    dom, lang = group.split("/")
    want = set()
    if dom != "generic":
        want.add(dom)
    if lang != "en":
        want.add(f"lang_{lang}")
    return want


def _per_layer_oracle(
    zoo: Zoo,
    dev: Sequence[ZooExample],
    task: str,
    lang: str,
    start: tuple[float, float],
    grid: Sequence[float],
    passes: int = 2,
) -> dict[str, list[float]]:
    """Per-layer weights of a pair by coordinate ascent on the dev set (an upper bound for
    layer-wise fusion, not a method): start from the best scalar pair, then try every grid
    value for one (adapter, layer) at a time and keep strict improvements."""
    weights = {task: [start[0]] * zoo.n_layers, lang: [start[1]] * zoo.n_layers}
    with zoo.weighted(weights):
        best = zoo.accuracy(dev)
    for _ in range(passes):
        improved = False
        for name in (task, lang):
            for layer in range(zoo.n_layers):
                for value in grid:
                    if value == weights[name][layer]:
                        continue
                    trial = {k: list(v) for k, v in weights.items()}
                    trial[name][layer] = value
                    with zoo.weighted(trial):
                        acc = zoo.accuracy(dev)
                    if acc > best:
                        best, weights, improved = acc, trial, True
        if not improved:
            break
    return weights


def run(
    catalog: Path,
    n: int,
    seed: int,
    grid: Sequence[float],
    layer_grid: Sequence[float] = LAYER_GRID,
) -> dict:
    torch.set_num_threads(2)
    t0 = time.time()
    zoo = Zoo(catalog)
    groups = query_groups(n, seed)
    dev = query_groups(n, DEV_SEED)
    res: dict = {"n_per_group": n, "seed": seed, "accuracy": {}, "drift_kl": {}}

    # 1. single adapters everywhere
    for g, exs in groups.items():
        row = {}
        with zoo.weighted({}):
            row["base"] = zoo.accuracy(exs)
            base_lp = zoo.lens_logprobs(exs)
        drift = {}
        for name in zoo.names:
            with zoo.weighted({name: 1.0}):
                row[name] = zoo.accuracy(exs)
                lp = zoo.lens_logprobs(exs)
            drift[name] = kl(base_lp[-1], lp[-1]).mean().item()
        res["accuracy"][g] = row
        res["drift_kl"][g] = drift

    # 2. composite: oracle pair, weights picked on the dev set
    comp = {}
    for lang in LANGUAGES[1:]:
        for dom in DOMAINS:
            g, la = f"{dom}/{lang}", f"lang_{lang}"
            best, best_w = -1.0, (1.0, 1.0)
            for wt, wl in itertools.product(grid, grid):
                with zoo.weighted({dom: wt, la: wl}):
                    acc = zoo.accuracy(dev[g])
                if acc > best:
                    best, best_w = acc, (wt, wl)
            split = {}
            for label, w in (("task_only", {dom: 1.0}), ("pair_1_1", {dom: 1.0, la: 1.0})):
                with zoo.weighted(w):
                    outs = zoo.generate(groups[g])
                cl = [content_and_language(o, ex) for o, ex in zip(outs, groups[g], strict=True)]
                split[label] = {
                    "content": sum(c for c, _ in cl) / len(cl),
                    "language": sum(la_ok for _, la_ok in cl) / len(cl),
                }
            with zoo.weighted({dom: 1.0, la: 1.0}):
                plain = zoo.accuracy(groups[g])
            with zoo.weighted({dom: best_w[0], la: best_w[1]}):
                oracle = zoo.accuracy(groups[g])
            layered_w = _per_layer_oracle(zoo, dev[g], dom, la, best_w, layer_grid)
            with zoo.weighted(layered_w):
                layered = zoo.accuracy(groups[g])
            row = res["accuracy"][g]
            comp[g] = {
                "base": row["base"],
                "task_only": row[dom],
                "lang_only": row[la],
                "pair_1_1": plain,
                "oracle_pair": oracle,
                "oracle_weights": best_w,
                "oracle_dev": best,
                "oracle_per_layer": layered,
                "oracle_per_layer_weights": {k: list(v) for k, v in layered_w.items()},
                "content_language": split,
            }
    res["composite"] = comp

    # 3. routing from logit-lens KL (qa-FLoRA divergences, summed over layers)
    routing = {}
    for g, exs in groups.items():
        with zoo.weighted({}):
            base_lp = zoo.lens_logprobs(exs)
        divs = []
        for name in zoo.names:
            with zoo.weighted({name: 1.0}):
                divs.append(kl(base_lp, zoo.lens_logprobs(exs)))  # [layers, batch]
        div = torch.stack(divs)  # [adapters, layers, batch]
        alpha = div / div.sum(0, keepdim=True).clamp_min(1e-12)
        score = alpha.mean(1)  # [adapters, batch]
        # qa-FLoRA-style fusion: every adapter at every layer weighted by its alpha there.
        fused = 0
        for b, ex in enumerate(exs):
            per_layer = {nm: alpha[i, :, b].tolist() for i, nm in enumerate(zoo.names)}
            with zoo.weighted(per_layer):
                fused += is_correct(zoo.generate([ex])[0], ex)
        want = expected_adapters(g)
        hit_rate = None
        if want:
            top = score.topk(len(want), dim=0).indices.T.tolist()
            hits = [{zoo.names[i] for i in t} == want for t in top]
            hit_rate = sum(hits) / len(hits)
        routing[g] = {
            "expected": sorted(want),
            "hit_rate": hit_rate,
            "kl_alpha_fused_acc": fused / len(exs),
            "mean_alpha": {nm: round(score[i].mean().item(), 3) for i, nm in enumerate(zoo.names)},
        }
    res["routing"] = routing
    res["seconds"] = round(time.time() - t0, 1)
    return res


def to_markdown(res: dict) -> str:
    """Tables for benchmarks/ZOO.md."""
    acc, drift = res["accuracy"], res["drift_kl"]
    names = [k for k in next(iter(acc.values())) if k != "base"]
    lines = ["### Exact match, single adapters (rows: query group)", ""]
    lines.append("| group | base | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * (len(names) + 1))
    for g, row in acc.items():
        cells = [f"{row['base']:.2f}"] + [f"{row[nm]:.2f}" for nm in names]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", "### Drift: mean KL(base || base+adapter), next token after the prompt", ""]
    lines.append("| group | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for g, row in drift.items():
        lines.append(f"| {g} | " + " | ".join(f"{row[nm]:.3f}" for nm in names) + " |")
    lines += ["", "### Composite queries (task asked and answered in a language)", ""]
    lines.append(
        "| cell | base | task only | lang only | pair 1:1 | oracle pair | w (task, lang) "
        "| per-layer oracle | per-layer w (task; lang) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for g, r in res["composite"].items():
        lw = "; ".join(",".join(f"{x:g}" for x in v) for v in r["oracle_per_layer_weights"].values())
        lines.append(
            f"| {g} | {r['base']:.2f} | {r['task_only']:.2f} | {r['lang_only']:.2f} | "
            f"{r['pair_1_1']:.2f} | {r['oracle_pair']:.2f} | {tuple(r['oracle_weights'])} | "
            f"{r['oracle_per_layer']:.2f} | {lw} |"
        )
    lines += [
        "",
        "### Composite queries: right content (any language) / right language, separately",
        "",
        "| cell | task only: content | task only: language | pair 1:1: content | pair 1:1: language |",
        "|---|---|---|---|---|",
    ]
    for g, r in res["composite"].items():
        t, p = r["content_language"]["task_only"], r["content_language"]["pair_1_1"]
        lines.append(
            f"| {g} | {t['content']:.2f} | {t['language']:.2f} | {p['content']:.2f} | {p['language']:.2f} |"
        )
    lines += [
        "",
        "### Routing (expected adapter(s) = top-k of layer-mean logit-lens alpha) and the",
        "### accuracy of qa-FLoRA-style fusion (all adapters, per-layer alpha weights)",
        "",
    ]
    lines.append("| group | expected | routing hit rate | alpha-fused accuracy |")
    lines.append("|---|---|---|---|")
    for g, r in res["routing"].items():
        hit = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.2f}"
        exp = ", ".join(r["expected"]) or "-"
        lines.append(f"| {g} | {exp} | {hit} | {r['kl_alpha_fused_acc']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(__file__).parent / "artifacts" / "catalog.yaml"
    ap.add_argument("--catalog", type=Path, default=default)
    ap.add_argument("--n", type=int, default=100, help="queries per group")
    ap.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED)
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    ap.add_argument("--layer-grid", type=float, nargs="+", default=list(LAYER_GRID))
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    res = run(args.catalog, args.n, args.seed, args.grid, args.layer_grid)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(to_markdown(res))
    print(f"probe took {res['seconds']} s")


if __name__ == "__main__":
    main()
