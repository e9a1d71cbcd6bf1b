"""Seconds per adapter training step: one forward per batch, length-sorted micro-batches, buckets.

The uses world's transcripts and passages are 3-4x longer than a question, so one of them pads
a whole random batch. Length buckets made steps cheap but changed which examples share a step
(and cost the code adapter 27 points, benchmarks/ZOO.md); micro-batches keep the step and cut
the padding (``training.backward_batch``). This times ``--steps`` optimizer steps of each
adapter's real training data (``build.adapter_mix``) on a zoo's saved base, the settings
one after another per adapter, and prints the padding each setting computes.

    QAFLORA_ZOO_WORLD=uses python benchmarks/zoo_step_time.py --zoo ZOO --steps 30
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from peft import get_peft_model
from qaflora.zoo.build import FULL, USES, USES_RECIPE, adapter_mix, adapter_names, base_mix
from qaflora.zoo.training import _batches, _micro_batches, encode, lora_config, train_loop
from transformers import AutoTokenizer, LlamaForCausalLM

SETTINGS = {
    "one forward per batch": {"micro_batches": 1, "buckets": 1},
    "4 micro-batches": {"micro_batches": 4, "buckets": 1},
    "8 micro-batches": {"micro_batches": 8, "buckets": 1},
    "length buckets (8)": {"micro_batches": 1, "buckets": 8},
}


def padded_tokens(data, batch: int, steps: int, setting: dict) -> int:
    """Token positions (padding included) the forwards of ``steps`` batches compute."""
    total = 0
    for idx in _batches(data, batch, steps, 0, setting["buckets"]):
        for part in _micro_batches(data, idx, setting["micro_batches"]):
            total += len(part) * max(len(data[i][0]) for i in part)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--adapters", nargs="*", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    recipe = USES_RECIPE if USES else FULL
    tokenizer = AutoTokenizer.from_pretrained(str(args.zoo / "base"))
    base = LlamaForCausalLM.from_pretrained(args.zoo / "base", dtype=torch.float32)
    pool = base_mix(recipe, 0)
    rows = []
    for name in args.adapters or adapter_names():
        data = encode(tokenizer, adapter_mix(name, recipe, pool, 0), answer_only=True)
        for label, setting in SETTINGS.items():
            model = get_peft_model(copy.deepcopy(base), lora_config(recipe.rank), adapter_name=name)
            start = time.perf_counter()
            train_loop(
                model, data, steps=args.steps, batch_size=recipe.adapter_batch, lr=recipe.adapter_lr,
                pad_id=tokenizer.pad_token_id, seed=0, desc=name, progress=False, **setting,
            )  # fmt: skip
            seconds = (time.perf_counter() - start) / args.steps
            tokens = padded_tokens(data, recipe.adapter_batch, args.steps, setting) / args.steps
            rows.append({"adapter": name, "setting": label, "s_per_step": seconds, "tokens_per_step": tokens})
            print(
                f"{name:9s} {label:24s} {seconds:.3f} s/step  {tokens:8.0f} token positions/step", flush=True
            )
    print("\n| setting | median s/step over adapters | vs one forward per batch |\n|---|---|---|")
    reference = statistics.median(r["s_per_step"] for r in rows if r["setting"] == "one forward per batch")
    for label in SETTINGS:
        median = statistics.median(r["s_per_step"] for r in rows if r["setting"] == label)
        print(f"| {label} | {median:.3f} | {median / reference:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"zoo": str(args.zoo), "steps": args.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
