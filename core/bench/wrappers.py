"""Wrapper overhead: LangChain ``invoke`` and LlamaIndex ``complete`` vs a direct engine call.

Same prompt, same options (greedy, fixed token count, EOS ignored), same engine object,
interleaved runs; the overhead is the median wall time of the wrapper call over the median
of the direct ``engine.generate`` call.
"""

from __future__ import annotations

import statistics
import time

from rich.console import Console

from ..engine import FusionEngine
from .common import (
    BENCH_FUSION,
    bench_parser,
    bench_world,
    count_parameters,
    environment,
    print_table,
    write_json,
)


def run(shape: str, k: int, tokens: int, repeats: int, device: str, console: Console) -> dict:
    from langchain_core.messages import HumanMessage

    from qaflora_integrations.langchain import ChatQaFlora
    from qaflora_integrations.llama_index import QaFloraLLM

    world = bench_world(shape, k)
    engine = FusionEngine.from_pretrained(
        world.base, world.catalog(), config=BENCH_FUSION, device=device, progress=False
    )
    prompt = "Solve the sum of twelve and seven, then answer in Russian please."
    options = {"max_new_tokens": tokens, "ignore_eos": True}
    chat = ChatQaFlora(engine=engine, max_tokens=tokens, fusion_kwargs={}).bind(ignore_eos=True)
    llama = QaFloraLLM(engine, max_new_tokens=tokens, generate_kwargs={"ignore_eos": True})

    calls = {
        "engine.generate": lambda: engine.generate([{"role": "user", "content": prompt}], **options),
        "LangChain invoke": lambda: chat.invoke([HumanMessage(prompt)]),
        "LlamaIndex complete": lambda: llama.complete(prompt),
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(2):  # warm-up
        for call in calls.values():
            call()
    for _ in range(repeats):
        for name, call in calls.items():  # interleaved, so drift hits every variant alike
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    direct = statistics.median(samples["engine.generate"])
    records = [
        {
            "call": name,
            "median_ms": 1e3 * statistics.median(values),
            "overhead_pct": 100 * (statistics.median(values) / direct - 1),
        }
        for name, values in samples.items()
    ]
    info = {
        **world.describe(),
        "params": count_parameters(engine.model),
        "k": k,
        "new_tokens": tokens,
        "device": device,
        "repeats": repeats,
        **environment(),
    }
    engine.close()
    print_table(
        console,
        f"wrapper overhead ({info['params'] / 1e6:.1f} M params, k={k}, {tokens} new tokens, "
        f"{device}; medians of {repeats}, interleaved)",
        ["call", "median ms", "overhead %"],
        [[r["call"], r["median_ms"], r["overhead_pct"]] for r in records],
    )
    return {"suite": "wrappers", "info": info, "results": records}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=9)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args(argv)
    write_json(args.json, run(args.shape, args.k, args.tokens, args.repeats, args.device, Console(width=160)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
