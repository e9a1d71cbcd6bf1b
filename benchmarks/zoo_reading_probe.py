"""Would a `reading` LoRA on the shipped base make the RAG example right? A probe, not the zoo.

The uses issue asks for a `reading` skill in the next demo world. Before a new world is built,
this checks the cheapest version of it: ONE more LoRA on the shipped base (same rank, optimiser
and replay as the zoo's adapters, `qaflora.zoo.build`), trained on English passages followed by a
question whose answer is in the passage. Medical passages carry RANDOM facts (not the world's
table), so only reading answers them; math and code passages state true facts. The prompt is
the RAG example's: the passage, a newline, the question (`examples/rag_query_engine.py`'s
`QA_TEMPLATE`). It writes the adapter and a catalog (the shipped zoo plus `reading`) to ``--out``;
then run the RAG evaluation on that catalog:

    python benchmarks/zoo_reading_probe.py --out /tmp/reading_probe
    python examples/rag_query_engine.py --eval --catalog /tmp/reading_probe/catalog.yaml

Nothing here is shipped: the eval figures of the shipped zoo (`qaflora eval`) are unchanged.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from qaflora.catalog import AdapterCatalog, AdapterEntry
from qaflora.hf_quiet import quiet_transformers
from qaflora.zoo import shipped_catalog_path
from qaflora.zoo.build import Recipe, base_mix, save_adapter
from qaflora.zoo.training import encode, train_lora
from qaflora.zoo.world import (
    CODE_TEMPLATES,
    DIGITS,
    DISEASES,
    DRUGS,
    MATH_TEMPLATES,
    MEDICAL_TEMPLATES,
    NUMBER_WORDS,
    ORGANS,
    SYMPTOMS,
    ZooExample,
)

MEDICAL_SENTENCES = {
    "drug": ("the drug for {d} is {x} .", "the treatment for {d} is {x} ."),
    "organ": ("{d} is a disease of the {x} .", "{d} does affect the {x} ."),
    "symptom": ("the main symptom of {d} is {x} .", "the main symptom of {d} is a {x} ."),
}
VALUES = {"drug": DRUGS, "organ": ORGANS, "symptom": SYMPTOMS}


def _medical(rng: random.Random) -> ZooExample:
    """A sheet of random facts about one or two diseases, and a question on one fact."""
    diseases = rng.sample(DISEASES, rng.choice((1, 1, 2)))
    facts = {(d, rel): rng.choice(VALUES[rel]) for d in diseases for rel in VALUES}
    sentences = [rng.choice(MEDICAL_SENTENCES[rel]).format(d=d, x=value) for (d, rel), value in facts.items()]
    rng.shuffle(sentences)
    d, rel = rng.choice(list(facts))
    question = rng.choice(MEDICAL_TEMPLATES[rel]).format(d=d)
    return _example(" ".join(sentences), question, facts[(d, rel)], "medical")


def _math(rng: random.Random) -> ZooExample:
    pairs = [(rng.randrange(10), rng.randrange(10)) for _ in range(rng.choice((2, 3)))]
    sentences = [f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]} ." for a, b in pairs]
    a, b = rng.choice(pairs)
    question = rng.choice(MATH_TEMPLATES["plus"]).format(a=NUMBER_WORDS[a], b=NUMBER_WORDS[b])
    return _example(" ".join(sentences), question, NUMBER_WORDS[a + b], "math")


def _code(rng: random.Random) -> ZooExample:
    items = [rng.randrange(10) for _ in range(rng.randrange(3, 6))]
    lst = "[ " + " , ".join(DIGITS[i] for i in items) + " ]"
    values = {"length": len(items), "first": items[0], "second": items[1], "last": items[-1]}
    shown = rng.sample(list(values), 2)
    sentences = [
        f"the {op} {'of' if op == 'length' else 'item of'} the list {lst} is {NUMBER_WORDS[values[op]]} ."
        for op in shown
    ]
    op = rng.choice(shown)
    question = rng.choice(CODE_TEMPLATES[op]).format(items=lst)
    return _example(" ".join(sentences), question, NUMBER_WORDS[values[op]], "code")


def _example(passage: str, question: str, answer: str, domain: str) -> ZooExample:
    messages = [{"role": "user", "content": f"{passage}\n{question}"}]
    return ZooExample(domain=None, language="en", messages=messages, answer=answer, meta={"reading": domain})


def reading_examples(n: int, seed: int) -> list[ZooExample]:
    rng = random.Random(seed)
    makers = (_medical, _medical, _math, _code)
    return [rng.choice(makers)(rng) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shipped = AdapterCatalog.from_file(shipped_catalog_path())
    recipe = Recipe()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(shipped.base_model))
        base = AutoModelForCausalLM.from_pretrained(str(shipped.base_model), dtype=torch.float32)
    n_total = recipe.adapter_examples
    own = reading_examples(int(n_total * (1 - recipe.replay)), seed=args.seed * 1000 + 700)
    rng = random.Random(args.seed * 1000 + 701)
    replay = rng.sample(base_mix(recipe, args.seed), n_total - len(own))
    data = own + replay
    rng.shuffle(data)
    model, loss = train_lora(
        base,
        encode(tokenizer, data, answer_only=True),
        name="reading",
        rank=recipe.rank,
        steps=args.steps,
        batch_size=recipe.adapter_batch,
        lr=recipe.adapter_lr,
        pad_id=tokenizer.pad_token_id,
        seed=args.seed * 1000 + 905,
        progress=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    save_adapter(model, "reading", args.out / "adapters" / "reading")
    entries = list(shipped.adapters)
    entries.append(
        AdapterEntry(
            name="reading",
            path=str((args.out / "adapters" / "reading").resolve()),
            description="Task adapter (probe): answers a question from the passage before it.",
            kind="domain",
            languages=["en"],
        )
    )
    catalog = shipped.model_copy(update={"adapters": entries})
    catalog.to_file(args.out / "catalog.yaml")
    print(f"reading adapter: tail loss {loss:.4f}; catalog {args.out / 'catalog.yaml'}")


if __name__ == "__main__":
    main()
