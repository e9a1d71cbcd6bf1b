"""Weighing overhead: qa-FLoRA weights for k adapters vs one base prefill and vs the naive loop.

Baselines, timed in the same run on the same prompt:
  * base prefill: one forward of the base model over the prompt;
  * naive loop: PEFT ``set_adapter`` + forward (with hidden states) per adapter, plus the base;
    the logit lens computed the same way (the obvious implementation);
  * PEFT mixed batch: one PEFT forward with ``adapter_names=["__base__", a1..ak]``;
  * engine: ``FusionEngine.fusion_weights`` (one batched forward, fused LoRA rows).
"""

from __future__ import annotations

import warnings

import torch
from peft import PeftModel
from rich.console import Console
from transformers import AutoModelForCausalLM

from ..engine import FusionEngine
from ..hf_quiet import quiet_transformers
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


def _peft_model(world, names: list[str], device: str) -> PeftModel:
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained(str(world.base)).to(device)
        model = PeftModel.from_pretrained(base, str(world.adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(world.adapters[name]), adapter_name=name)
    return model.eval()


def _lens(model: PeftModel, out) -> torch.Tensor:
    inner = model.get_base_model()
    norm, head = inner.model.norm, inner.get_output_embeddings()
    hidden = out.hidden_states
    rows = [head(norm(hidden[i][:, -1])) for i in range(1, len(hidden) - 1)]
    rows.append(out.logits[:, -1])
    return torch.log_softmax(torch.stack(rows, dim=1).float(), dim=-1)  # [rows, L, V]


def naive_loop(model: PeftModel, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    with model.disable_adapter():
        base = _lens(model, model(input_ids=ids, output_hidden_states=True))[0]
    divs = []
    for name in names:
        model.set_adapter(name)
        lp = _lens(model, model(input_ids=ids, output_hidden_states=True))[0]
        divs.append((base.exp() * (base - lp)).sum(-1))
    return torch.stack(divs)


def peft_mixed_batch(model: PeftModel, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    rows = ids.expand(len(names) + 1, -1)
    out = model(input_ids=rows, output_hidden_states=True, adapter_names=["__base__", *names])
    lp = _lens(model, out)
    return (lp[0:1].exp() * (lp[0:1] - lp[1:])).sum(-1)


def run(shape: str, ks: list[int], prompt_tokens: int, repeats: int, device: str, console: Console) -> dict:
    world = bench_world(shape, max(ks))
    names = list(world.adapters)
    engine = FusionEngine.from_pretrained(
        world.base, world.catalog(), config=BENCH_FUSION, device=device, progress=False
    )
    peft_model = _peft_model(world, names, device)
    prompt = prompt_of_tokens(engine.tokenizer, prompt_tokens)
    ids = torch.tensor([engine.encode(prompt, formatted=True).ids], device=engine.device)
    sync = engine.device.type == "cuda"
    rows, records = [], []
    with torch.inference_mode():
        base_s = median_seconds(lambda: engine.model(input_ids=ids, use_cache=False), repeats, sync=sync)
        for k in ks:
            chosen = names[:k]
            engine_s = median_seconds(
                lambda c=chosen: engine.fusion_weights(prompt, formatted=True, adapters=c), repeats, sync=sync
            )
            naive_s = median_seconds(lambda c=chosen: naive_loop(peft_model, ids, c), repeats, sync=sync)
            mixed_s = median_seconds(
                lambda c=chosen: peft_mixed_batch(peft_model, ids, c), repeats, sync=sync
            )
            record = {
                "k": k,
                "base_prefill_ms": base_s * 1e3,
                "engine_ms": engine_s * 1e3,
                "naive_loop_ms": naive_s * 1e3,
                "peft_mixed_batch_ms": mixed_s * 1e3,
                "engine_over_prefill": engine_s / base_s,
                "naive_over_prefill": naive_s / base_s,
                "mixed_over_prefill": mixed_s / base_s,
                "naive_over_engine": naive_s / engine_s,
            }
            records.append(record)
            rows.append(
                [
                    k,
                    record["base_prefill_ms"],
                    record["engine_ms"],
                    record["naive_loop_ms"],
                    record["peft_mixed_batch_ms"],
                    record["engine_over_prefill"],
                    record["naive_over_prefill"],
                    record["mixed_over_prefill"],
                    record["naive_over_engine"],
                ]
            )
    info = {
        **world.describe(),
        "params": count_parameters(engine.model),
        "prompt_tokens": ids.shape[1],
        "device": str(engine.device),
        "repeats": repeats,
        **environment(),
    }
    engine.close()
    print_table(
        console,
        f"qa-FLoRA weighing time ({info['params'] / 1e6:.1f} M params, "
        f"{info['layers']} layers, d={info['hidden_size']}, r={world.rank}, "
        f"{info['prompt_tokens']}-token prompt, {info['device']}; medians of {repeats})",
        [
            "k",
            "base prefill ms",
            "engine ms",
            "naive loop ms",
            "PEFT mixed ms",
            "engine/prefill",
            "naive/prefill",
            "mixed/prefill",
            "naive/engine",
        ],
        rows,
    )
    return {"suite": "weigh", "info": info, "results": records}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=7)
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    payload = run(args.shape, args.k, args.prompt_tokens, args.repeats, args.device, Console(width=160))
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
