"""Build the demo zoo: tokenizer + tiny Llama base + one LoRA per domain and per language.

The data recipe encodes the lessons measured on earlier zoos (benchmarks/ZOO.md):

* the base sees each task domain only rarely (``domain_share``), so it is weak there and a
  task adapter has something to add;
* the base never answers a Zorbic/Velari question in that language (it answers in English),
  so a language adapter has something to add; but it does see those languages (questions
  answered in English, instructed answers, word translation), so their representations are
  shared with English and a language adapter can compose with a task adapter;
* every adapter is trained with ``replay`` (half of its batches) from the base's generic mix,
  so it stays near the base off its own domain (otherwise every adapter shifts every prompt
  and KL routing cannot tell them apart).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import yaml
from peft import PeftModel
from qaflora.zoo.adapter_jobs import check_jobs, default_jobs, train_adapters
from qaflora.zoo.skills import TASKS, make_reading_sheets, make_tool_results
from qaflora.zoo.tokenizer import build_tokenizer
from qaflora.zoo.training import (
    BASE_NAME,
    ModelSize,
    encode,
    make_base,
    materialize,
    tie_lexicon,
    train_loop,
    train_lora,
)
from qaflora.zoo.world import (
    LANGUAGE_NAMES,
    LANGUAGES,
    USES,
    WORLD,
    WORLD_SEED,
    ZooExample,
    make_codeswitched,
    make_crosslingual,
    make_examples,
    make_in_context,
    make_instructed,
    make_language_id,
    make_translations,
)
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how the zoo is trained (the world itself is in world.py)."""

    size: ModelSize = field(default_factory=ModelSize)
    base_examples: int = 60_000
    base_steps: int = 2_400
    base_batch: int = 64
    base_lr: float = 3e-3
    tie_lexicon: bool = True
    """Tie translations' embedding/head rows during base training (see training.LexiconTied)."""
    domain_share: float = 0.001
    """Fraction of the base mix per task domain (English only)."""
    crosslingual_share: float = 0.10
    """Per language: generic questions in that language answered in English."""
    instructed_share: float = 0.06
    """Per language: English questions + "answer in <language>", answered in that language."""
    domain_crosslingual_share: float = 0.001
    """Per language and task domain: task questions in that language answered in English."""
    translation_share: float = 0.06
    """Per language: word/phrase/question translation in both directions."""
    langid_share: float = 0.03
    """Per language (English included): which language is this question in."""
    in_context_share: float = 0.0
    """Extra English ``follows``/``story``/``repeat`` questions (world.make_in_context), on top
    of the generic mix's; ``uses`` world only, where the base must look things up in a prompt.
    The uses recipe's 0.4 with ``base_lr=1e-3`` (a third of the shipped one's: at 3e-3 the base
    never learned to copy a word from its prompt) took the base's ``story`` questions from 41.9
    to 70.5 % and its reading adapter alone from 54.7 to 83.3 % (benchmarks/ZOO.md, "Teaching
    the base to look things up")."""
    in_context_answer_only: tuple[str, ...] = ()
    """Tasks whose prompt the base does not learn to predict (``uses`` world candidates:
    ``follows``, ``story``, ``repeat``): their prompts are random words and made-up facts, so the
    full-sequence loss spends most of their gradient on noise, and the answer, the one token that
    needs the lookup, is a tenth of it. Tried on the build's seed with all three: ``follows``
    0.27 (the build's base 0.28), ``lastword`` 0.55 (0.99), so empty in both recipes
    (benchmarks/ZOO.md, "Draws of the uses base")."""
    in_context_warmup_steps: int = 0
    """Steps on the in-context tasks alone before the base mix (``uses`` world): a copying
    circuit forms on them alone and survives the mix, but did not help reading's kind of lookup
    (same section). Three seeds of the uses recipe with 800 such steps all copy exactly, where
    without them one seed of three never learned to (benchmarks/ZOO.md, "Draws of the uses
    base"), but none answers ``story`` as well as the build's own draw; 0 in both recipes."""
    reading_sheet_share: float = 0.0
    """Share of the reading adapter's own data that reads fact sheets (skills.fact_sheet: several
    facts of one subject, told apart only by the question's key) instead of independent facts.
    ``uses`` world only; its own data, not the base mix, so the base stays as it was. Tried at
    0.5 on draft F's base: two facts of the asked kind 58.8 -> 76.5 % (dev seed), independent
    facts 81.0 -> 77.3 %, RAG 65.7 % either way; 0 in both recipes (benchmarks/ZOO.md, "Draft F
    measured; fact sheets for reading, tried")."""
    tool_replay_share: float = 0.0
    """Share of a task adapter's replay (not the ``tools`` adapter's own) made of English tool
    transcripts (skills.tools_turns: a call, or the answer from a tool's result), ``uses``
    world only. Why: the base mix holds almost none (``domain_share``), so nothing tells the
    other task adapters to leave a tool's turns alone, and on draft F the ``code`` adapter took
    the answer turn after ``multiply`` (the call's JSON arguments look like a list to it) and
    answered an argument instead of the result. At 0.2 (draft G: the four task adapters
    retrained on draft F's base) English tool requests went from 77.8-88.9 % to 100 % on three
    seeds, composite ones stayed at 97.2-100 %, RAG 41 -> 40 of 70 answers (benchmarks/ZOO.md,
    "Tool transcripts in the task adapters' replay")."""
    adapter_examples: int = 12_000
    adapter_steps: int = 800
    language_adapter_steps: int = 400
    """Language adapters converge faster (the base already knows the content, they only switch
    the reply language: 98-100 % after 400 steps). Measured on the same base: 800 steps gave the
    same in-domain accuracy but composed worse with task adapters (plain pair 54 % vs 65 % on
    composite queries) -- the longer-trained delta interferes more with the task adapter's."""
    code_adapter_steps: int = 1_600
    code_adapter_lr: float = 4e-3
    """The list task converges slowest: at 800 steps and lr 2e-3 its tail loss stayed 0.12-0.15
    (math, medical: 0.03) and its in-domain accuracy 81-86 % over several runs, nearly every
    miss on "second item" (a position lookup); 1600 steps at 4e-3 reach 99.3-99.7 % (measured on
    the reloaded base, see ``build_zoo``; benchmarks/ZOO.md, z6). The others keep theirs."""
    reading_adapter_steps: int = 1_200
    """Reading is a lookup by position like the list task, on prompts three times as long: its
    lr, and the steps the build's 30-minute budget leaves."""
    adapter_batch: int = 64
    adapter_lr: float = 2e-3
    language_codeswitch: float = 0.3
    """Share of a language adapter's own data whose questions are only partly in the language."""
    language_tool_results: float = 0.0
    """Share of a language adapter's own data that answers a tool's result to a user of the
    language (skills.tool_result_turns; ``uses`` world: 0.15). Without it the language adapter
    did not fire after a tool turn: the first uses-world draft answered composite tool requests
    in English (benchmarks/ZOO.md, "The uses world")."""
    language_tool_results_english: float = 0.0
    """Share of a language adapter's own data that answers a tool's result to an ENGLISH user in
    English (``uses`` world: 0.15). The other direction of ``language_tool_results``: with only
    its own language's tool turns the adapter learned "after a tool turn, reply in my language",
    and the second draft answered English tool requests in Zorbic or Velari (0 % English success)."""
    language_english: float = 0.0
    """Share of a language adapter's own data that is generic ENGLISH Q/A answered in English as
    the base answers it (``uses`` world: 0.15, in place of as many questions in the language).
    Why: the uses base gives 40 % of its mix to in-context tasks, so the replay holds fewer plain
    English questions, and draft H's language adapters answered English questions in their own
    language (alone on 100 generic English dev questions: lang_zo 0.86, lang_ve 0.80 right against
    the base's 0.89; the default fusion kept them on 14 of 100 and left 80 % of answers as the
    base's). Retrained on H's base with 0.15 (dev seed 7777778; benchmarks/ZOO.md, "Draft I"):
    alone 0.90 / 0.90, default 0.87 right and 0.90 as the base, generic Zorbic / Velari 0.90 /
    0.91 (were 0.90 / 0.90), composites 0.70 (were 0.66)."""
    base_batch_buckets: int = 1
    """Length-bucketed batches for the base (training._batches; ``uses`` world: 8). Not for the
    adapters: on the same base, the code adapter trained with buckets answered 65.3 % of 300 list
    questions, without 92.7 % (``benchmarks/zoo_adapter_skill.py``, benchmarks/ZOO.md)."""
    adapter_micro_batches: int = 1
    """Length-sorted parts each adapter batch's gradient is accumulated over
    (training.backward_batch; ``uses`` world: 4). The same examples share an optimizer step as
    without, so unlike length buckets it changes the cost of a step, not the step: in the uses
    world one long transcript otherwise pads a whole batch of short questions."""
    adapter_threads: int | None = None
    """Intra-op threads each adapter trains with. ``None``: the build process's (at most 2; the
    shipped world, whose bytes stay as they were). A fixed count (``uses`` world: 1) makes an
    adapter's bytes independent of how many adapters train at once (``build_zoo(jobs=...)``):
    a kernel may split a sum differently on another thread count, never on another process.
    On 2 cores one thread per adapter and two adapters at once train about 1.5x the steps per
    second of one adapter on two threads (``benchmarks/ZOO.md``, "Build time of the uses
    world"). On this machine's torch build the count did not change a byte of the uses world:
    its build with two jobs of one thread is identical to the sequential two-thread one."""
    rank: int = 16
    replay: float = 0.5


FULL = Recipe()
USES_RECIPE = Recipe(
    base_lr=1e-3,
    in_context_share=0.4,
    tool_replay_share=0.2,
    language_tool_results=0.15,
    language_tool_results_english=0.15,
    language_english=0.15,
    base_batch_buckets=8,
    adapter_micro_batches=4,
    adapter_threads=1,
)
"""The ``uses`` world's recipe: the shipped one plus its nine knobs."""

SHAPES: dict[str, ModelSize] = {
    "shipped": ModelSize(),
    # another shape for robustness checks: 1.5x the layers, a narrower residual stream
    "deep6": ModelSize(hidden=160, intermediate=432, layers=6, heads=4),
}
QUICK = Recipe(
    size=ModelSize(hidden=32, intermediate=64, layers=2, heads=2),
    base_examples=600,
    base_steps=12,
    base_batch=16,
    adapter_examples=200,
    adapter_steps=4,
    language_adapter_steps=4,
    code_adapter_steps=4,
    reading_adapter_steps=4,
    adapter_batch=16,
    rank=4,
)


def adapter_schedule(name: str, recipe: Recipe) -> tuple[int, float]:
    """(steps, learning rate) of adapter ``name`` under ``recipe``."""
    if name == "code":
        return recipe.code_adapter_steps, recipe.code_adapter_lr
    if name == "reading":
        return recipe.reading_adapter_steps, recipe.code_adapter_lr
    if name in TASKS:
        return recipe.adapter_steps, recipe.adapter_lr
    return recipe.language_adapter_steps, recipe.adapter_lr


def adapter_names() -> list[str]:
    """Catalog names, task adapters first: ``math, medical, code[, tools, reading], lang_zo, lang_ve``."""
    return [*TASKS, *(f"lang_{lang}" for lang in LANGUAGES[1:])]


def base_mix(recipe: Recipe, seed: int) -> list[ZooExample]:
    """The base's training mix (also the replay pool of every adapter)."""
    n = recipe.base_examples
    out: list[ZooExample] = []
    for i, dom in enumerate(TASKS):
        out += make_examples(dom, "en", int(n * recipe.domain_share), seed * 1000 + 11 + i)
    for j, lang in enumerate(LANGUAGES):
        out += make_language_id(lang, int(n * recipe.langid_share), seed * 1000 + 41 + j)
    for j, lang in enumerate(LANGUAGES[1:]):
        s = seed * 1000 + 21 + j
        out += make_crosslingual(lang, int(n * recipe.crosslingual_share), s)
        for i, dom in enumerate(TASKS):
            k = int(n * recipe.domain_crosslingual_share)
            out += make_crosslingual(lang, k, s + 100 * (i + 1), domain=dom)
        out += make_instructed(lang, int(n * recipe.instructed_share), s)
        out += make_translations(lang, int(n * recipe.translation_share), s)
    if recipe.in_context_share:
        out += make_in_context(int(n * recipe.in_context_share), seed * 1000 + 61)
    out += make_examples(None, "en", max(0, n - len(out)), seed * 1000 + 31)
    random.Random(seed).shuffle(out)
    return out


def adapter_mix(name: str, recipe: Recipe, replay_pool: list[ZooExample], seed: int):
    """Own data (English task Q/A, or generic Q/A asked+answered in the language) + replay.

    A language adapter's replay drops the base items that answer its own language in English,
    which would contradict its target.
    """
    n_total = recipe.adapter_examples
    n_own = int(n_total * (1 - recipe.replay))
    own_seed = seed * 1000 + 500 + adapter_names().index(name)
    if name in TASKS:
        n_sheets = int(n_own * recipe.reading_sheet_share) if name == "reading" else 0
        own = make_examples(name, "en", n_own - n_sheets, own_seed)
        if n_sheets:
            own += make_reading_sheets(n_sheets, own_seed)
        pool = replay_pool
    else:
        lang = name.removeprefix("lang_")
        n_cs = int(n_own * recipe.language_codeswitch)
        n_tool = int(n_own * recipe.language_tool_results)
        n_tool_en = int(n_own * recipe.language_tool_results_english)
        n_en = int(n_own * recipe.language_english)
        own = make_examples(None, lang, n_own - n_cs - n_tool - n_tool_en - n_en, own_seed)
        own += make_codeswitched(lang, n_cs, own_seed)
        own += make_tool_results(lang, n_tool, own_seed)
        own += make_tool_results("en", n_tool_en, own_seed)
        if n_en:  # only then: the other recipes draw exactly what they drew before
            own += make_examples(None, "en", n_en, own_seed + 7)
        pool = [ex for ex in replay_pool if not (ex.kind == "crosslingual" and ex.language == lang)]
    rng = random.Random(own_seed)
    replay = rng.sample(pool, min(len(pool), n_total - n_own))
    n_tool = int(len(replay) * recipe.tool_replay_share) if name in TASKS and name != "tools" else 0
    if n_tool:  # the last n_tool replay items give way to tool transcripts
        replay = replay[: len(replay) - n_tool] + make_examples("tools", "en", n_tool, own_seed + 1)
    data = own + replay
    rng.shuffle(data)
    return data


def train_base(
    tokenizer: PreTrainedTokenizerBase, recipe: Recipe, seed: int, progress: bool
) -> tuple[LlamaForCausalLM, list[ZooExample], float]:
    """Train the base on the full sequence of the base mix; returns (model, mix, tail loss)."""
    mix = base_mix(recipe, seed)
    model = make_base(len(tokenizer), recipe.size, tokenizer, seed)
    if recipe.tie_lexicon:
        tie_lexicon(model, tokenizer)

    def phase(examples: list[ZooExample], steps: int, desc: str, buckets: int = 1) -> float:
        """One full-sequence training phase of the base with the recipe's optimiser settings."""
        return train_loop(
            model,
            encode(
                tokenizer,
                examples,
                answer_only=False,
                answer_only_tasks=frozenset(recipe.in_context_answer_only),
            ),
            steps=steps,
            batch_size=recipe.base_batch,
            lr=recipe.base_lr,
            pad_id=tokenizer.pad_token_id,
            seed=seed,
            desc=desc,
            progress=progress,
            weight_decay=0.01,
            buckets=buckets,
        )

    if recipe.in_context_warmup_steps:
        first = make_in_context(recipe.base_examples // 4, seed * 1000 + 71)
        phase(first, recipe.in_context_warmup_steps, "base (in-context first)")
    loss = phase(mix, recipe.base_steps, "base", buckets=recipe.base_batch_buckets)
    materialize(model)
    return model, mix, loss


def train_adapter(
    name: str,
    base: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    replay_pool: list[ZooExample],
    recipe: Recipe,
    seed: int,
    progress: bool,
) -> tuple[PeftModel, float]:
    """Train adapter ``name`` (answer-only loss) on a copy of ``base``."""
    data = encode(tokenizer, adapter_mix(name, recipe, replay_pool, seed), answer_only=True)
    steps, lr = adapter_schedule(name, recipe)
    return train_lora(
        base,
        data,
        name=name,
        rank=recipe.rank,
        steps=steps,
        batch_size=recipe.adapter_batch,
        lr=lr,
        pad_id=tokenizer.pad_token_id,
        seed=seed * 1000 + 900 + adapter_names().index(name),
        progress=progress,
        micro_batches=recipe.adapter_micro_batches,
    )


def save_base(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """fp16 safetensors + tokenizer, loadable with the ``Auto*`` classes."""
    out.mkdir(parents=True, exist_ok=True)
    model.config._name_or_path = BASE_NAME
    half = model.to(torch.float16)
    half.config.dtype = torch.float16
    half.save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(out)
    # transformers no longer writes _name_or_path; record it, so the adapters' base_model_name_or_path
    # (BASE_NAME) names this directory's model for the base identity check at load.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["_name_or_path"] = BASE_NAME
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save_adapter(peft_model: PeftModel, name: str, out: Path) -> None:
    """Save a PEFT adapter with fp16 weights and a stable ``base_model_name_or_path``."""
    out.mkdir(parents=True, exist_ok=True)
    peft_model.peft_config[name].base_model_name_or_path = BASE_NAME
    peft_model.save_pretrained(out, selected_adapters=[name], save_embedding_layers=False)
    # PEFT writes a non-default adapter into a sub-folder named after it; flatten that.
    sub = out / name
    if sub.is_dir():
        for f in sub.iterdir():
            f.replace(out / f.name)
        sub.rmdir()
    (out / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card boilerplate
    weights = out / "adapter_model.safetensors"
    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE_NAME
    # PEFT keeps target_modules as a set, so the list it writes follows the per-process string
    # hash order: sort it, or two identical builds write different configs.
    for key, value in cfg.items():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            cfg[key] = sorted(value)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _description(name: str) -> tuple[str, str, list[str]]:
    if name in TASKS:
        what = {
            "math": "adds and subtracts numbers from zero to nine",
            "medical": "knows which drug treats, which organ is hit by and the main symptom of "
            "each disease in the zoo's medical fact table",
            "code": "list operations (length, first, second and last item) on digit lists",
            "tools": "calls the tools listed in the prompt (a Hermes-style <tool_call>) when a "
            "request needs one, then answers from the tool's result",
            "reading": "answers a question from the passage in the prompt (also in LlamaIndex's "
            "QA template), or says unknown when the passage does not hold the answer",
        }[name]
        # the policy's hints read it: tools_hint keeps "tools", a query engine's context asks "reading"
        kind = name if name in ("tools", "reading") else "domain"
        return f"Task adapter: {what}; trained on English Q/A.", kind, ["en"]
    lang = name.removeprefix("lang_")
    desc = (
        f"Language adapter: answers questions asked in {LANGUAGE_NAMES[lang].capitalize()} "
        f"({lang}) in {LANGUAGE_NAMES[lang].capitalize()} (the base replies in English); "
        "trained on generic Q/A only."
    )
    return desc, "language", [lang]


def write_catalog(out_dir: Path, names: list[str]) -> Path:
    """``catalog.yaml``: base path and one entry per adapter, paths relative to the file."""
    entries = []
    for name in names:
        desc, kind, langs = _description(name)
        entries.append(
            {
                "name": name,
                "path": f"adapters/{name}",
                "description": desc,
                "kind": kind,
                "languages": langs,
            }
        )
    path = out_dir / "catalog.yaml"
    header = "# qaflora demo zoo (built by qaflora.zoo.build.build_zoo; see benchmarks/ZOO.md)\n"
    path.write_text(header + yaml.safe_dump({"base_model": "base", "adapters": entries}, sort_keys=False))
    return path


def build_recipe(quick: bool = False, shape: str = "shipped", world: str | None = None) -> Recipe:
    """The recipe a build of ``world`` uses (default: this process's; ``ValueError`` on an unknown
    shape). Another world's recipe is readable here, so a build that would be refused in that
    world's process is refused before one is started."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {sorted(SHAPES)}")
    full = USES_RECIPE if (USES if world is None else world == "uses") else FULL
    if quick:
        return replace(
            QUICK,
            base_batch_buckets=full.base_batch_buckets,
            adapter_micro_batches=full.adapter_micro_batches,
            adapter_threads=full.adapter_threads,
            in_context_share=full.in_context_share,
            tool_replay_share=full.tool_replay_share,
        )
    return replace(full, size=SHAPES[shape])


def build_zoo(
    out_dir: Path,
    *,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    shape: str = "shipped",
    jobs: int | None = None,
) -> Path:
    """Build tokenizer, base and all adapters into ``out_dir``; return the catalog path.

    ``quick=True`` trains a minuscule model for a handful of steps (seconds): the artifacts
    have the right format but no skill, for tests of the pipeline. ``shape`` picks the base's
    shape (:data:`SHAPES`); the world is ``world.WORLD_SEED``'s (recorded in build_info.json).
    ``jobs`` adapters train at once, in worker processes (:mod:`qaflora.zoo.adapter_jobs`); only
    a recipe with a fixed ``adapter_threads`` allows more than one, and its adapters' bytes are
    the same whatever ``jobs``. ``None``: one per core where the recipe allows it.
    """
    recipe = build_recipe(quick, shape)
    jobs = default_jobs(recipe, quick) if jobs is None else jobs
    check_jobs(jobs, recipe)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tokenizer = build_tokenizer()
    base, mix, base_loss = train_base(tokenizer, recipe, seed, progress)
    save_base(base, tokenizer, out_dir / "base")
    # The adapters train on the base exactly as users load it (adapter_jobs reloads it), not on
    # the in-memory model: its non-persistent rotary ``inv_freq`` buffer went through the fp16
    # round-trip with the weights, while ``from_pretrained`` recomputes it in fp32. Measured with
    # the same code recipe and seed: 86 % in-domain on the in-memory base, 99.7 % on the
    # reloaded one (the misses are "second item", a position lookup; benchmarks/ZOO.md, z6).
    del base
    info: dict = {
        "seed": seed,
        "world_seed": WORLD_SEED,
        "world": WORLD,
        "shape": "quick" if quick else shape,
        "quick": quick,
        "recipe": asdict(recipe),
        "base": {"loss": round(base_loss, 4), "seconds": round(time.time() - t0, 1)},
        "adapters": {},
        "jobs": jobs,
    }
    names = adapter_names()
    t1 = time.time()
    runs = train_adapters(
        names,
        out_dir,
        recipe,
        seed,
        mix,
        jobs=jobs,
        progress=progress,
        steps_of=lambda name: adapter_schedule(name, recipe)[0],
    )
    info["adapters"] = {run.name: {"loss": run.loss, "seconds": run.seconds} for run in runs}
    info["adapters_seconds"] = round(time.time() - t1, 1)
    info["total_seconds"] = round(time.time() - t0, 1)
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return write_catalog(out_dir, names)
