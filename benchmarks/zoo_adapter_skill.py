"""In-domain skill of a zoo's task adapters, per task type; optionally retrain one first.

Backs the z6 notes in ZOO.md: the code adapter's misses were all "second item", and how a
schedule (steps, learning rate, thread count) changes that. Evaluation: greedy, 6 new
tokens, exact match on ``--n`` held-out English queries per domain (evaluation seed).

    python benchmarks/zoo_adapter_skill.py --zoo core/zoo/artifacts
    python benchmarks/zoo_adapter_skill.py --zoo core/zoo/artifacts --retrain code \\
        --steps 800 --lr 4e-3 --threads 1 --out /tmp/code_lr4

``--retrain`` trains the adapter exactly as ``qaflora zoo build`` does (same data mix, seed 0 and
code path, on the zoo's saved base) except for the options given, then evaluates it in place of
the zoo's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from qaflora import AdapterCatalog, AdapterEntry, FusionEngine
from qaflora.zoo.build import FULL, adapter_names, base_mix, save_adapter, train_adapter
from qaflora.zoo.world import DEFAULT_EVAL_SEED, DOMAINS, is_correct, make_examples
from transformers import AutoTokenizer, LlamaForCausalLM


def retrain(zoo: Path, name: str, args: argparse.Namespace, out: Path) -> float:
    """Train adapter ``name`` on ``zoo``'s base with the build's recipe, overridden by ``args``."""
    overrides = {}
    if args.steps is not None:
        overrides["code_adapter_steps" if name == "code" else "adapter_steps"] = args.steps
    if args.lr is not None:
        overrides["code_adapter_lr" if name == "code" else "adapter_lr"] = args.lr
    recipe = dataclasses.replace(FULL, **overrides)
    tokenizer = AutoTokenizer.from_pretrained(str(zoo / "base"))
    base = LlamaForCausalLM.from_pretrained(zoo / "base", dtype=torch.float32)
    model, loss = train_adapter(name, base, tokenizer, base_mix(recipe, 0), recipe, 0, progress=True)
    save_adapter(model, name, out)
    return loss


def skill(base: Path, adapters: dict[str, Path], n: int) -> dict[str, Counter]:
    """Per adapter: Counter of (task, correct) over ``n`` held-out queries of its domain."""
    entries = [AdapterEntry(name=name, path=path) for name, path in adapters.items()]
    catalog = AdapterCatalog.build(entries, base_model=str(base))
    results: dict[str, Counter] = {}
    with FusionEngine.from_pretrained(catalog.base_model, catalog, progress=False) as engine:
        for name in adapters:
            examples = make_examples(name, "en", n, seed=DEFAULT_EVAL_SEED)
            replies = engine.generate_batch(
                [e.messages for e in examples], mode="single", adapters=[name], max_new_tokens=6
            )
            counts: Counter = Counter()
            for reply, example in zip(replies, examples, strict=True):
                counts[(example.meta["task"], is_correct(reply.text, example))] += 1
            results[name] = counts
    return results


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--zoo", type=Path, default=Path("core/zoo/artifacts"))
    parser.add_argument("--n", type=int, default=300, help="held-out queries per domain")
    parser.add_argument("--retrain", choices=DOMAINS, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the build uses 2)")
    parser.add_argument("--out", type=Path, default=None, help="where to keep a retrained adapter")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    adapters = {name: args.zoo / "adapters" / name for name in adapter_names() if name in DOMAINS}
    with tempfile.TemporaryDirectory() as scratch:
        if args.retrain is not None:
            out = args.out or Path(scratch) / args.retrain
            start = time.perf_counter()
            loss = retrain(args.zoo, args.retrain, args, out)
            print(f"retrained {args.retrain}: tail loss {loss:.4f}, {time.perf_counter() - start:.0f} s")
            adapters = {args.retrain: out}
        results = skill(args.zoo / "base", adapters, args.n)
    for name, counts in results.items():
        tasks = sorted({task for task, _ in counts})
        right = sum(v for (_, ok), v in counts.items() if ok)
        cells = ", ".join(f"{t} {counts[(t, True)]}/{counts[(t, True)] + counts[(t, False)]}" for t in tasks)
        print(f"{name}: {right / args.n:.1%} of {args.n} ({cells})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
