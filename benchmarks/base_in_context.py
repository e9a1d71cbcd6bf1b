"""Can a uses-world base read its own context? Exact match of a base on its in-context tasks.

The base learns three generic tasks that read the prompt: ``lastword`` (copy the word before
"?", a fixed position), ``follows`` (the word after a key in a list: an induction pattern) and
``story`` (2-4 made-up facts, then a question on one). The reading adapter binds a question to
one fact of a passage; it cannot do better than the base's own lookup allows
(``benchmarks/reading_breakdown.py``). This trains a base with the uses recipe, optionally
changed (``--steps``, ``--batch``, ``--shape``, ``--heads``, ``--layers``, ``--lr``,
``--in-context-share``, ``--warmup-steps``, ``--answer-only``; ``--train-seed`` draws another
base of the same recipe, builds use 0), and measures those tasks and generic English as a
whole; ``--eval-only DIR`` measures a saved base (e.g. a zoo's ``base/``) with the same code.

    QAFLORA_ZOO_WORLD=uses python benchmarks/base_in_context.py --eval-only E/base
    QAFLORA_ZOO_WORLD=uses OMP_NUM_THREADS=1 python benchmarks/base_in_context.py --steps 4800 --out /tmp/b
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from qaflora.zoo.build import build_recipe, save_base, train_base
from qaflora.zoo.tokenizer import build_tokenizer
from qaflora.zoo.world import (
    DEFAULT_EVAL_SEED,
    IN_CONTEXT_TASKS,
    USES,
    is_correct,
    make_examples,
    make_in_context,
)
from transformers import AutoTokenizer, LlamaForCausalLM

PROBED_TASKS = ("lastword", "follows", "story", "repeat")


@torch.inference_mode()
def in_context_accuracy(base_dir: Path, n: int, seed: int) -> dict[str, Any]:
    """Greedy exact match of the saved base on ``n`` generic English queries, by task.

    ``tasks``: the in-context ones (and extra ``repeat`` queries); ``generic_english``: all
    ``n`` generic queries; ``generic_questions``: those of them that are not in-context tasks
    (``world.generic_questions``), the measure the stream's generic cells in any language are
    capped by (a language adapter only changes the reply's language)."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    generic = make_examples(None, "en", n, seed)
    repeat = [e for e in make_in_context(n // 4, seed) if e.meta["task"] == "repeat"]
    hits: dict[str, list[bool]] = {}
    for example in generic + repeat:
        ids = tokenizer(example.chat_prompt(tokenizer), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        hits.setdefault(example.meta["task"], []).append(is_correct(text, example))
    repeat_hits = hits.pop("repeat", [])

    def rate(v: list[bool]) -> dict[str, float]:
        return {"n": len(v), "accuracy": round(sum(v) / max(1, len(v)), 3)}

    every = [hit for v in hits.values() for hit in v]
    return {
        "tasks": {t: rate(repeat_hits if t == "repeat" else hits.get(t, [])) for t in PROBED_TASKS},
        "generic_english": {**rate(every), "by_task": {t: rate(v) for t, v in sorted(hits.items())}},
        "generic_questions": rate([hit for t, v in hits.items() if t not in IN_CONTEXT_TASKS for hit in v]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-only", type=Path, default=None, help="a saved base directory")
    parser.add_argument("--steps", type=int, default=None, help="base steps (recipe: 2400)")
    parser.add_argument("--batch", type=int, default=None, help="base batch (recipe: 64)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="in-context tasks alone first")
    parser.add_argument("--lr", type=float, default=None, help="base peak learning rate (recipe: 3e-3)")
    parser.add_argument(
        "--in-context-share", type=float, default=None, help="extra in-context share of the mix"
    )
    parser.add_argument("--train-seed", type=int, default=0, help="the base's seed (builds: 0)")
    parser.add_argument("--answer-only", nargs="*", default=None, help="tasks whose prompt is not learned")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (shipped: 4)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (shipped: 4)")
    parser.add_argument("--shape", default="shipped", help="base shape (build.SHAPES: shipped, deep6)")
    parser.add_argument("--out", type=Path, default=None, help="where to save the trained base")
    parser.add_argument(
        "--n", type=int, default=1200, help="generic queries drawn (about 1/4 are in-context)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not USES:
        parser.error("run in the uses world: QAFLORA_ZOO_WORLD=uses")
    report: dict[str, Any] = {"threads": torch.get_num_threads()}
    if args.eval_only is not None:
        base_dir = args.eval_only
    else:
        if args.out is None:
            parser.error("--out is needed to train a base")
        recipe = build_recipe(shape=args.shape)
        recipe = replace(
            recipe,
            size=replace(
                recipe.size,
                heads=args.heads or recipe.size.heads,
                layers=args.layers or recipe.size.layers,
            ),
            base_steps=args.steps or recipe.base_steps,
            base_batch=args.batch or recipe.base_batch,
            base_lr=args.lr or recipe.base_lr,
            in_context_warmup_steps=args.warmup_steps,
            in_context_answer_only=(
                recipe.in_context_answer_only if args.answer_only is None else tuple(args.answer_only)
            ),
            in_context_share=(
                recipe.in_context_share if args.in_context_share is None else args.in_context_share
            ),
        )
        started = time.time()
        tokenizer = build_tokenizer()
        model, _, loss = train_base(tokenizer, recipe, seed=args.train_seed, progress=True)
        save_base(model, tokenizer, args.out)
        report.update(
            shape=args.shape,
            heads=recipe.size.heads,
            layers=recipe.size.layers,
            steps=recipe.base_steps,
            batch=recipe.base_batch,
            lr=recipe.base_lr,
            warmup_steps=recipe.in_context_warmup_steps,
            in_context_share=recipe.in_context_share,
            answer_only=list(recipe.in_context_answer_only),
            train_seed=args.train_seed,
            loss=round(loss, 4),
        )
        report["seconds"] = round(time.time() - started, 1)
        base_dir = args.out
    report["base"] = str(base_dir)
    report.update(in_context_accuracy(base_dir, args.n, args.seed))
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
