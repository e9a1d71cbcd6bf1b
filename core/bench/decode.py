"""Decode speed with fused adapters vs the base model, PEFT's adapter loop and add_weighted_adapter.

All in one run, same prompt, greedy, EOS ignored so every run makes the same number of tokens:
  * engine base: our decode loop with no adapter (the reference for ratios);
  * engine fused k: our stacked-LoRA path, k adapters with uniform weights;
  * HF base / PEFT loop k: ``model.generate`` on a PeftModel with adapters disabled / k active
    adapters (PEFT sums active adapters in a Python loop per module);
  * PEFT merge k: per query ``add_weighted_adapter(..., combination_type="cat")`` + ``set_adapter``
    + ``generate`` + ``delete_adapter`` (what a static per-query merge costs).
Decode tokens/s exclude the prefill (measured separately and subtracted for HF runs).
"""

from __future__ import annotations

import time
import warnings

import torch
from rich.console import Console

from ..engine import FusionEngine
from .common import (
    BENCH_FUSION,
    bench_parser,
    bench_world,
    count_parameters,
    environment,
    median_seconds,
    print_table,
    prompt_of_tokens,
    write_json,
)
from .weigh import _peft_model


def engine_decode_rates(
    engine: FusionEngine, prompt: str, tokens: int, repeats: int, variants: dict[str, dict]
) -> dict[str, float]:
    """Median decode tokens/s of the engine per variant (prefill excluded via its own timings).

    The variants run interleaved (base, fused, base, fused, ...) so that a slow phase of a shared
    CPU hits both sides of a ratio alike instead of biasing whichever ran during it.
    """
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats + 1):
        for name, fusion in variants.items():
            result = engine.generate(prompt, formatted=True, max_new_tokens=tokens, ignore_eos=True, **fusion)
            rates[name].append((result.usage.completion_tokens - 1) / result.timings.decode)
    medians = {}
    for name, values in rates.items():
        kept = sorted(values[1:])  # first round is warm-up
        medians[name] = kept[len(kept) // 2]
    return medians


def hf_decode_rate(model, ids: torch.Tensor, tokens: int, repeats: int, sync: bool) -> float:
    def run(n: int):
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )

    prefill = median_seconds(lambda: run(1), repeats, warmup=1, sync=sync)
    total = median_seconds(lambda: run(tokens), repeats, warmup=1, sync=sync)
    return (tokens - 1) / max(total - prefill, 1e-9)


def merge_per_query(model, names: list[str], ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    """One query the add_weighted_adapter way: (merge+delete seconds, generate seconds)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "merged", combination_type="cat")
    model.set_adapter("merged")
    merged = time.perf_counter()
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        pad_token_id=0,
    )
    generated = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.delete_adapter("merged")
    deleted = time.perf_counter()
    return (merged - start) + (deleted - generated), generated - merged


def run(
    shape: str, ks: list[int], tokens: int, prompt_tokens: int, repeats: int, device: str, console: Console
) -> dict:
    world = bench_world(shape, max(ks))
    names = list(world.adapters)
    engine = FusionEngine.from_pretrained(
        world.base, world.catalog(), config=BENCH_FUSION, device=device, progress=False
    )
    peft_model = _peft_model(world, names, device)
    prompt = prompt_of_tokens(engine.tokenizer, prompt_tokens)
    ids = torch.tensor([engine.encode(prompt, formatted=True).ids], device=engine.device)
    sync = engine.device.type == "cuda"
    records = []
    with torch.inference_mode():
        with peft_model.disable_adapter():
            hf_base = hf_decode_rate(peft_model, ids, tokens, repeats, sync)
        for k in ks:
            chosen = names[:k]
            rates = engine_decode_rates(
                engine,
                prompt,
                tokens,
                repeats,
                {"base": {"mode": "base"}, "fused": {"mode": "static", "adapters": chosen}},
            )
            ours_base, ours = rates["base"], rates["fused"]
            peft_model.base_model.set_adapter(chosen)
            loop = hf_decode_rate(peft_model, ids, tokens, repeats, sync)
            merges = [merge_per_query(peft_model, chosen, ids, tokens) for _ in range(max(2, repeats // 2))]
            merge_s = sorted(m[0] for m in merges)[len(merges) // 2]
            merged_gen_s = sorted(m[1] for m in merges)[len(merges) // 2]
            records.append(
                {
                    "k": k,
                    "engine_base_tok_s": ours_base,
                    "engine_fused_tok_s": ours,
                    "fused_over_base": ours / ours_base,
                    "hf_base_tok_s": hf_base,
                    "peft_loop_tok_s": loop,
                    "peft_loop_over_hf_base": loop / hf_base,
                    "fused_over_peft_loop": ours / loop,
                    "merge_setup_ms": merge_s * 1e3,
                    "merged_generate_ms": merged_gen_s * 1e3,
                    "merged_tok_s_incl_prefill": tokens / merged_gen_s,
                }
            )
    info = {
        **world.describe(),
        "params": count_parameters(engine.model),
        "prompt_tokens": ids.shape[1],
        "new_tokens": tokens,
        "device": str(engine.device),
        "repeats": repeats,
        **environment(),
    }
    engine.close()
    rows = [
        [
            r["k"],
            r["engine_base_tok_s"],
            r["engine_fused_tok_s"],
            r["fused_over_base"],
            r["hf_base_tok_s"],
            r["peft_loop_tok_s"],
            r["peft_loop_over_hf_base"],
            r["fused_over_peft_loop"],
            r["merge_setup_ms"],
        ]
        for r in records
    ]
    print_table(
        console,
        f"decode tokens/s ({info['params'] / 1e6:.1f} M params, {info['layers']} layers, "
        f"d={info['hidden_size']}, r={world.rank}, {tokens} new tokens, {info['device']}; medians)",
        [
            "k",
            "engine base",
            "engine fused",
            "fused/base",
            "HF base",
            "PEFT loop",
            "loop/HF base",
            "fused/loop",
            "merge setup ms",
        ],
        rows,
    )
    return {"suite": "decode", "info": info, "results": records}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=5)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    payload = run(
        args.shape, args.k, args.tokens, args.prompt_tokens, args.repeats, args.device, Console(width=160)
    )
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
