"""Decode speed of plain ``transformers`` generate on the main thread vs a second thread.

Backs the profile in RESULTS.md §4.2: the engine decodes on its scheduler thread, and on a
2-core machine a second thread running torch ops with two OpenMP threads is much slower than
the main thread. Run it as is, with ``OMP_NUM_THREADS=1`` and with ``OMP_WAIT_POLICY=PASSIVE``.

    python benchmarks/omp_threads.py
"""

from __future__ import annotations

import threading

import torch
from qaflora.bench.common import bench_world
from qaflora.bench.decode import hf_decode_rate
from transformers import AutoModelForCausalLM


def decode_rate(model, ids: torch.Tensor, tokens: int = 64) -> float:
    """Tokens/s of greedy generate, prefill excluded: the decode suite's own measurement."""
    return hf_decode_rate(model, ids, tokens, repeats=3, sync=False)


def in_thread(fn) -> float:
    out: list[float] = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join()
    return out[0]


def main() -> int:
    world = bench_world("cpu-small", 1)
    model = AutoModelForCausalLM.from_pretrained(str(world.base)).eval()
    ids = torch.randint(5, model.config.vocab_size - 1, (1, 64), generator=torch.Generator().manual_seed(0))
    print(f"threads={torch.get_num_threads()}")
    with torch.inference_mode():
        for _ in range(3):
            main_rate = decode_rate(model, ids)
            thread_rate = in_thread(lambda: decode_rate(model, ids))
            print(f"main thread {main_rate:.0f} tok/s | second thread {thread_rate:.0f} tok/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
