"""Distractor adapters: large catalogs in which the relevant adapters must be found.

LoGo's setting is a catalog much larger than any query needs. The demo zoo has five
adapters; this module grows it to 16 or 32 with two kinds of distractors that a
selection method must learn to ignore without labels:

* ``sub_<task>``: real LoRAs trained briefly on ONE generic English sub-task of the world
  (colours, opposites, animal sounds, ...), with the same recipe shape as the zoo's
  adapters. The base already does these tasks well, so they are genuine "other domain"
  adapters that stay near the base on the composite queries.
* ``noise_<i>``: random LoRA factors whose per-module Frobenius norms match one of the real
  adapters, so a norm-based signal cannot dismiss them for being small.

Both kinds keep every real adapter's rank and target modules (Arrow needs that). The real
adapters are referenced, not copied.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..catalog import AdapterCatalog, AdapterEntry
from ..hf_quiet import quiet_transformers

NOISE_SEED = 515


def subtask_names() -> list[str]:
    from .world import GENERIC_TEMPLATES

    return sorted(GENERIC_TEMPLATES)


def _subtask_examples(task: str, n: int, seed: int):
    from .world import make_examples

    pool = make_examples(None, "en", n * 20, seed)
    own = [ex for ex in pool if ex.meta.get("task") == task]
    return own[:n]


def train_subtask_adapter(
    catalog: AdapterCatalog, task: str, out: Path, *, steps: int, seed: int, progress: bool
) -> Path:
    """A LoRA trained on one generic English sub-task, saved like the zoo's adapters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .build import save_adapter
    from .training import encode, train_lora

    reference = catalog.enabled[0]
    rank = int(reference.read_peft_config()["r"])
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(catalog.base_model))
        base = AutoModelForCausalLM.from_pretrained(str(catalog.base_model), dtype=torch.float32)
    data = encode(tokenizer, _subtask_examples(task, 2000, seed), answer_only=True)
    name = f"sub_{task}"
    model, _ = train_lora(
        base,
        data,
        name=name,
        rank=rank,
        steps=steps,
        batch_size=32,
        lr=2e-3,
        pad_id=tokenizer.pad_token_id,
        seed=seed,
        progress=progress,
    )
    save_adapter(model, name, out)
    return out


def make_noise_adapter(reference: Path, out: Path, seed: int) -> Path:
    """Random factors with the reference adapter's shapes, config and per-module norms."""
    generator = torch.Generator().manual_seed(seed)
    tensors = load_file(str(reference / "adapter_model.safetensors"))
    noisy = {}
    for key, value in tensors.items():
        sample = torch.randn(value.shape, generator=generator)
        noisy[key] = (sample * (value.float().norm() / sample.norm())).to(value.dtype).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(noisy, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text((reference / "adapter_config.json").read_text())
    return out


def build_distractor_catalogs(
    catalog_path: Path,
    out_dir: Path,
    *,
    sizes: tuple[int, ...] = (16, 32),
    subtask_steps: int = 120,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, Path]:
    """Write ``catalog_<n>.yaml`` for each size: the real adapters first, then distractors.

    Sub-task adapters come first among distractors (as many as the world has sub-tasks),
    noise adapters fill the rest; larger catalogs contain the smaller ones.
    """
    catalog = AdapterCatalog.from_file(catalog_path)
    real = catalog.enabled
    out_dir = Path(out_dir)
    needed = max(sizes) - len(real)
    if needed < 0:
        raise ValueError(f"the catalog already has {len(real)} adapters, more than {max(sizes)}")
    entries: list[AdapterEntry] = []
    tasks = subtask_names()[:needed]
    for i, task in enumerate(tqdm(tasks, desc="sub-task distractors", disable=not progress)):
        path = out_dir / "adapters" / f"sub_{task}"
        if not (path / "adapter_model.safetensors").exists():
            train_subtask_adapter(
                catalog, task, path, steps=subtask_steps, seed=seed * 100 + i, progress=False
            )
        entries.append(
            AdapterEntry(
                name=f"sub_{task}",
                path=path,
                kind="distractor",
                languages=["en"],
                description=f"generic sub-task '{task}' (distractor)",
            )
        )
    rng = random.Random(NOISE_SEED + seed)
    for i in range(needed - len(tasks)):
        reference = rng.choice(real)
        path = make_noise_adapter(
            reference.path, out_dir / "adapters" / f"noise_{i:02d}", NOISE_SEED + seed + i
        )
        entries.append(
            AdapterEntry(
                name=f"noise_{i:02d}",
                path=path,
                kind="distractor",
                description=f"random factors, norms of {reference.name!r} (distractor)",
            )
        )
    written = {}
    for size in sorted(sizes):
        chosen = [*real, *entries[: size - len(real)]]
        path = out_dir / f"catalog_{size}.yaml"
        AdapterCatalog.build(chosen, base_model=catalog.base_model).to_file(path)
        written[size] = path
    return written
