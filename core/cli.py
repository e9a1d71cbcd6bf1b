"""The ``qaflora`` command line: demo, weights, generate, eval, bench, zoo build.

Every command that needs a model takes ``--base`` and ``--catalog``; without them
it uses the demo zoo shipped with the package (``qaflora zoo build`` rebuilds
it). ``--tiny`` builds a tiny random model with random adapters instead, for a
first look on a machine with nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .catalog import AdapterCatalog
from .config import MODES

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
zoo_app = typer.Typer(no_args_is_help=True, help="The demo model zoo.")
app.add_typer(zoo_app, name="zoo")
console = Console()

BaseOpt = Annotated[Path | None, typer.Option("--base", help="Base model directory (HF format).")]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="Adapter catalog (YAML/JSON).")]
TinyOpt = Annotated[bool, typer.Option("--tiny", help="Use a tiny random model with random adapters.")]
ModeOpt = Annotated[str, typer.Option("--mode", help=f"Fusion mode: {', '.join(MODES)}.")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="LoGo preselection: keep k adapters.")]
AdaptersOpt = Annotated[
    list[str] | None, typer.Option("--adapter", "-a", help="Restrict candidates (repeatable).")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda or auto.")]


def resolve_model_paths(base: Path | None, catalog: Path | None, tiny: bool) -> tuple[Path, Path]:
    """Pick base and catalog: explicit paths, else the tiny model, else the shipped demo zoo."""
    if tiny:
        return build_tiny_world()
    from .zoo import catalog_or_shipped

    try:
        catalog = catalog_or_shipped(catalog)
    except FileNotFoundError as exc:
        raise typer.BadParameter(f"{exc}, or --tiny for a tiny random model") from exc
    if base is None:
        base = AdapterCatalog.from_file(catalog).base_model
        if base is None:
            raise typer.BadParameter(f"--base is required: {catalog} names no base_model")
    return base, catalog


def build_tiny_world(root: Path | None = None) -> tuple[Path, Path]:
    """A tiny random Llama with three random adapters, cached in a temp directory."""
    from .catalog import AdapterEntry
    from .testing import build_tiny_model, make_random_adapter

    root = root or Path(tempfile.gettempdir()) / "qaflora-tiny"
    catalog_path = root / "catalog.yaml"
    if catalog_path.exists():
        return root / "base", catalog_path
    with console.status("building a tiny random model and 3 random adapters..."):
        base = build_tiny_model("llama", root / "base")
        entries = [
            AdapterEntry(
                name=name,
                path=make_random_adapter(base, root / name, seed=i, strength=1.0 + i),
                description=f"random adapter {i}",
            )
            for i, name in enumerate(["alpha", "beta", "gamma"])
        ]
        AdapterCatalog.build(entries, base_model=base).to_file(catalog_path)
    return base, catalog_path


def load_engine(base: Path, catalog: Path, device: str | None = None, **config: Any):
    from .config import FusionConfig
    from .engine import FusionEngine

    with console.status(f"loading {base.name} and the adapters of {catalog.name}..."):
        return FusionEngine.from_pretrained(
            base, catalog, config=FusionConfig(**config), device=device, progress=False
        )


def fusion_overrides(
    mode: str, top_k: int | None, adapters: list[str] | None, policy: str = "relevant"
) -> dict[str, Any]:
    if mode not in MODES:
        raise typer.BadParameter(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if policy not in ("relevant", "shares"):
        raise typer.BadParameter(f"unknown policy {policy!r}; choose from relevant, shares")
    overrides: dict[str, Any] = {"mode": mode, "top_k": top_k, "adapters": adapters or None, "policy": policy}
    if mode == "single" and not adapters:
        raise typer.BadParameter("--mode single needs one --adapter")
    return overrides


PolicyOpt = Annotated[
    str,
    typer.Option(
        help="mode qaflora: 'relevant' (default: adapters that move the next token, at trained "
        "strength, composition-checked) or 'shares' (the paper's per-layer shares).",
    ),
]


@app.command()
def weights(
    query: Annotated[str, typer.Argument(help="The query to weigh.")],
    base: BaseOpt = None,
    catalog: CatalogOpt = None,
    tiny: TinyOpt = False,
    mode: ModeOpt = "qaflora",
    top_k: TopKOpt = None,
    adapter: AdaptersOpt = None,
    divergence: Annotated[str, typer.Option(help="kl, js, cosine or euclidean.")] = "kl",
    token: Annotated[str, typer.Option(help="last or mean.")] = "last",
    policy: PolicyOpt = "relevant",
    plot: Annotated[Path | None, typer.Option(help="Save a heatmap PNG here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device: DeviceOpt = None,
) -> None:
    """Print the per-layer fusion weights of QUERY (a table; --plot saves a heatmap)."""
    from .plotting import plot_heatmap, weights_table

    base_path, catalog_path = resolve_model_paths(base, catalog, tiny)
    engine = load_engine(base_path, catalog_path, device)
    try:
        result = engine.fusion_weights(
            query, divergence=divergence, token=token, **fusion_overrides(mode, top_k, adapter, policy)
        )
    finally:
        engine.close()
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        console.print(weights_table(result, title=f"{mode} weights for: {query}"))
    if plot is not None:
        console.print(f"heatmap saved to {plot_heatmap(result, plot, suptitle=query)}")


@app.command()
def generate(
    query: Annotated[str, typer.Argument(help="The question (sent as one user message).")],
    base: BaseOpt = None,
    catalog: CatalogOpt = None,
    tiny: TinyOpt = False,
    mode: ModeOpt = "qaflora",
    top_k: TopKOpt = None,
    adapter: AdaptersOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    system: Annotated[str | None, typer.Option(help="Optional system message.")] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they come.")] = True,
    policy: PolicyOpt = "relevant",
    device: DeviceOpt = None,
) -> None:
    """Answer QUERY with fused adapters; print the answer and the weights."""
    from .plotting import weights_table

    base_path, catalog_path = resolve_model_paths(base, catalog, tiny)
    engine = load_engine(base_path, catalog_path, device)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": query}
    ]
    options = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        **fusion_overrides(mode, top_k, adapter, policy),
    )
    try:
        if stream:
            result = None
            for event in engine.stream(messages, **options):
                console.print(event.text, end="", highlight=False, markup=False)
                result = event.result or result
            console.print()
        else:
            result = engine.generate(messages, **options)
            console.print(result.text, highlight=False, markup=False)
    finally:
        engine.close()
    assert result is not None
    console.print(weights_table(result.weights, title="fusion weights"))
    timings = result.timings
    console.print(
        f"[dim]{result.usage.prompt_tokens} prompt + {result.usage.completion_tokens} generated tokens; "
        f"preselect {timings.preselect * 1e3:.0f} ms, weigh {timings.weigh * 1e3:.0f} ms, "
        f"prefill {timings.prefill * 1e3:.0f} ms, decode {timings.decode * 1e3:.0f} ms[/dim]"
    )


@app.command()
def demo(
    plot: Annotated[Path | None, typer.Option(help="Directory for PNG heatmaps.")] = None,
    catalog: CatalogOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget per answer.")] = 24,
    top_k: Annotated[int | None, typer.Option(help="LoGo preselection before qa-FLoRA.")] = None,
    normalize: Annotated[
        str, typer.Option(help="With --policy shares: 'sum' (paper) or 'max' (strongest at 1).")
    ] = "max",
    policy: PolicyOpt = "relevant",
) -> None:
    """Answer composite multilingual queries with the shipped demo zoo and show the weights."""
    from .demo import run_demo

    run_demo(
        console,
        catalog=catalog,
        plot_dir=plot,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        normalize=normalize,
        policy=policy,
    )


@app.command("eval")
def evaluate(
    catalog: CatalogOpt = None,
    n_per_cell: Annotated[int, typer.Option(help="Queries per (domain, language) cell.")] = 100,
    seed: Annotated[int | None, typer.Option(help="Evaluation seed (default: held-out seed).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget per answer.")] = 6,
    table: Annotated[
        list[str] | None, typer.Option(help="composite, stream and/or generic (repeatable).")
    ] = None,
    method: Annotated[
        list[str] | None, typer.Option(help="Only rows whose name contains this (repeatable).")
    ] = None,
    arrow: Annotated[bool, typer.Option(help="Include PEFT's Arrow routing.")] = True,
    grid: Annotated[str, typer.Option(help="Oracle weight grid, comma separated.")] = "0.5,1.0,1.5",
    plot: Annotated[Path | None, typer.Option(help="Directory for per-cell heatmaps.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all results as JSON.")] = None,
    device: DeviceOpt = None,
) -> None:
    """The composite benchmark on the demo zoo: every method side by side, Markdown on stdout."""
    from .evaluation.suite import run_eval, write_json
    from .zoo.world import DEFAULT_EVAL_SEED

    _, catalog_path = resolve_model_paths(None, catalog, False)
    payload = run_eval(
        catalog_path,
        n_per_cell=n_per_cell,
        seed=DEFAULT_EVAL_SEED if seed is None else seed,
        max_new_tokens=max_new_tokens,
        grid=tuple(float(g) for g in grid.split(",")),
        with_arrow=arrow,
        tables=tuple(table or ("composite", "stream", "generic")),
        plot_dir=plot,
        device=device or "cpu",
        methods=tuple(method) if method else None,
    )
    print(payload["markdown"])
    print(f"(evaluated in {payload['seconds']:.0f} s)")
    if json_out is not None:
        write_json(payload, json_out)


@app.command()
def serve(
    base: BaseOpt = None,
    catalog: CatalogOpt = None,
    tiny: TinyOpt = False,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Name clients use (default: the base's directory).")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most requests generated together.")] = 16,
    plan_ahead: Annotated[
        bool,
        typer.Option(
            "--plan-ahead",
            help="Weigh newcomers on a second thread while the batch decodes: more tokens/s, "
            "slower weighing on a small CPU (benchmarks/RESULTS.md 6.1).",
        ),
    ] = False,
    device: DeviceOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    replicas: Annotated[
        int | None,
        typer.Option(min=1, help="Run on Ray Serve with this many replicas (each one engine)."),
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run on Ray Serve (one replica unless --replicas).")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join this Ray cluster (from 'ray start --head') instead of starting one."),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="Ray: torch threads (and CPUs) per replica.")] = 1,
    autoscaling: Annotated[
        str | None,
        typer.Option(help='Ray: Serve autoscaling_config as JSON, e.g. {"min_replicas":1,"max_replicas":4}.'),
    ] = None,
    max_ongoing_requests: Annotated[
        int | None, typer.Option(min=1, help="Ray: requests one replica takes at once (default 2x batch).")
    ] = None,
) -> None:
    """An OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, /metrics).

    With --replicas, --ray or --ray-address it runs as a Ray Serve application: N
    replicas of the same app, each loading its own engine.
    """
    from .config import FusionConfig
    from .engine import FusionEngine

    try:
        from qaflora_integrations.serve import run_server
    except ImportError as exc:
        raise typer.BadParameter(
            f"the server needs the 'serve' extra: pip install 'qaflora[serve]' ({exc})"
        ) from exc
    base_path, catalog_path = resolve_model_paths(base, catalog, tiny)
    if ray or replicas is not None or ray_address is not None or autoscaling is not None:
        serve_replicated(
            base_path,
            catalog_path,
            host=host,
            port=port,
            model_name=model_name,
            max_batch_size=max_batch_size,
            plan_ahead=plan_ahead,
            device=device,
            replicas=replicas,
            ray_address=ray_address,
            threads=threads,
            autoscaling=autoscaling,
            max_ongoing_requests=max_ongoing_requests,
        )
        return
    with console.status(f"loading {base_path.name} and the adapters of {catalog_path.name}..."):
        engine = FusionEngine.from_pretrained(
            base_path,
            catalog_path,
            config=FusionConfig(),
            device=device,
            progress=False,
            max_batch_size=max_batch_size,
            model_name=model_name,
            plan_ahead=plan_ahead,
        )
    name = model_name or engine.model_name
    console.print(
        f"serving [bold]{name}[/bold] and {', '.join(f'{name}:{a}' for a in engine.adapter_names)} "
        f"on http://{host}:{port}/v1" + (" (planning ahead)" if engine.plans_ahead else "")
    )
    try:
        run_server(engine, host=host, port=port, log_level=log_level)
    finally:
        engine.close()


def serve_replicated(
    base: Path,
    catalog: Path,
    *,
    host: str,
    port: int,
    model_name: str | None,
    max_batch_size: int,
    plan_ahead: bool,
    device: str | None,
    replicas: int | None,
    ray_address: str | None,
    threads: int,
    autoscaling: str | None,
    max_ongoing_requests: int | None,
) -> None:
    """``qaflora serve`` on Ray Serve: deploy, serve until SIGINT/SIGTERM, then drain and stop."""
    try:
        from qaflora_integrations.serve.ray_runtime import serve_on_ray
    except ImportError as exc:
        raise typer.BadParameter(
            f"--replicas/--ray need the 'ray' extra: pip install 'qaflora[ray]' ({exc})"
        ) from exc
    autoscaling_config = None
    if autoscaling is not None:
        try:
            autoscaling_config = json.loads(autoscaling)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--autoscaling is not JSON: {exc}") from exc
        if replicas is not None:
            raise typer.BadParameter("give --replicas or --autoscaling, not both")
    options: dict[str, Any] = {
        "base": str(base),
        "catalog": str(catalog),
        "model_name": model_name,
        "device": device,
        "max_batch_size": max_batch_size,
        "plan_ahead": plan_ahead,
        "threads": threads,
        "num_replicas": None if autoscaling_config is not None else (replicas or 1),
        "autoscaling_config": autoscaling_config,
        "max_ongoing_requests": max_ongoing_requests,
    }
    where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray runtime"
    sizing = f"autoscaling {autoscaling_config}" if autoscaling_config else f"{replicas or 1} replica(s)"
    console.print(f"deploying {base.name} with {sizing} on {where}...")

    def ready() -> None:
        console.print(f"serving on http://{host}:{port}/v1 (Ray Serve, {sizing}); Ctrl-C or SIGTERM stops")

    serve_on_ray(options, host=host, port=port, address=ray_address, on_ready=ready)
    console.print("stopped")


BENCH_SUITES = (
    "weigh",
    "decode",
    "concurrency",
    "wrappers",
    "memory",
    "scaling",
    "serving",
    "transcript",
    "http",
)
# run only when named: long, or needing the 'serve' extra
OPT_IN_SUITES = ("scaling", "serving", "transcript", "http", "replicas")


@app.command()
def bench(
    suite: Annotated[
        list[str] | None, typer.Option(help=f"Suites to run: {', '.join(BENCH_SUITES)}.")
    ] = None,
    shape: Annotated[str, typer.Option(help="Model shape: cpu-small, 7b-layer, tiny.")] = "cpu-small",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    repeats: Annotated[
        int | None, typer.Option(help="Runs per measurement (median reported); default: the suite's own.")
    ] = None,
    json_dir: Annotated[
        Path | None, typer.Option("--json", help="Directory for one JSON file per suite.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Where the scaling suite saves its plot.")] = None,
) -> None:
    """The performance table: every figure against its naive baseline, measured in the same run."""
    import importlib

    chosen = suite or [s for s in BENCH_SUITES if s not in OPT_IN_SUITES]
    unknown = set(chosen) - set(BENCH_SUITES)
    if unknown:
        raise typer.BadParameter(f"unknown suite(s) {sorted(unknown)}; choose from {BENCH_SUITES}")
    for name in chosen:
        module = importlib.import_module(f"qaflora.bench.{name}")
        argv = ["--shape", shape, "--device", device]
        if name not in ("memory",) and repeats is not None:
            argv += ["--repeats", str(repeats)]
        if name == "scaling" and plot is not None:
            argv += ["--plot", str(plot)]
        if json_dir is not None:
            argv += ["--json", str(json_dir / f"{name}.json")]
        module.main(argv)


@zoo_app.command("build")
def zoo_build(
    out: Annotated[Path | None, typer.Option(help="Output directory (default: the shipped zoo).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed (which examples are sampled).")] = 0,
    quick: Annotated[bool, typer.Option(help="Tiny fast variant, for testing the pipeline.")] = False,
    world_seed: Annotated[
        int | None,
        typer.Option(help="Build in another world (new lexicons and fact tables); needs --out."),
    ] = None,
    shape: Annotated[str, typer.Option(help="Base shape: shipped or deep6 (6 layers, d=160).")] = "shipped",
    world: Annotated[
        str | None,
        typer.Option(
            help="uses (the shipped world: tasks, tools, reading) or qa (the earlier one: tasks "
            "only); needs --out."
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            help="Adapters trained at once, one process each (default: one per core where the "
            "world's recipe fixes each adapter's threads, as the uses world's does; else 1).",
            min=1,
        ),
    ] = None,
) -> None:
    """Generate the synthetic world and train the demo base model and its adapters (CPU)."""
    import subprocess
    import sys

    from .zoo import shipped_catalog_path
    from .zoo.world import DEFAULT_WORLD, WORLD_SEED_VARIABLE, WORLD_VARIABLE, WORLDS

    if world is not None and world not in WORLDS:
        raise typer.BadParameter(f"--world {world!r}: expected one of {WORLDS}")
    want_seed = world_seed is not None and os.environ.get(WORLD_SEED_VARIABLE) != str(world_seed)
    want_world = world is not None and os.environ.get(WORLD_VARIABLE, DEFAULT_WORLD) != world
    from .zoo.adapter_jobs import check_jobs
    from .zoo.build import build_recipe, build_zoo

    try:  # before hours of training (or a second process): an unknown shape, --jobs it cannot take
        check_jobs(jobs or 1, build_recipe(quick, shape, world=world))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if want_seed or want_world:
        if out is None:
            raise typer.BadParameter("--world-seed/--world: give --out (the shipped zoo stays)")
        # The world is fixed when qaflora.zoo.world is imported: build in a fresh process in it.
        argv = ["zoo", "build", "--out", str(out), "--seed", str(seed), "--shape", shape]
        argv += ["--quick"] if quick else []
        argv += ["--jobs", str(jobs)] if jobs is not None else []
        env = dict(os.environ)
        if world_seed is not None:
            argv += ["--world-seed", str(world_seed)]
            env[WORLD_SEED_VARIABLE] = str(world_seed)
        if world is not None:
            argv += ["--world", world]
            env[WORLD_VARIABLE] = world
        code = "from qaflora.cli import main; main()"
        raise typer.Exit(subprocess.run([sys.executable, "-c", code, *argv], env=env).returncode)
    target = out or shipped_catalog_path().parent
    catalog_path = build_zoo(target, seed=seed, quick=quick, progress=True, shape=shape, jobs=jobs)
    console.print(f"zoo written; catalog: {catalog_path}")


@zoo_app.command("distractors")
def zoo_distractors(
    out: Annotated[Path, typer.Option(help="Directory for the distractor adapters and catalogs.")],
    catalog: CatalogOpt = None,
    size: Annotated[list[int] | None, typer.Option(help="Catalog sizes (repeatable).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps per sub-task distractor.")] = 120,
) -> None:
    """Grow the demo zoo's catalog to 16/32 adapters with distractors (for LoGo's setting)."""
    from .zoo import catalog_or_shipped
    from .zoo.distractors import build_distractor_catalogs

    written = build_distractor_catalogs(
        catalog_or_shipped(catalog), out, sizes=tuple(size or (16, 32)), subtask_steps=steps
    )
    for n, path in written.items():
        console.print(f"{n} adapters: {path}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    app()


if __name__ == "__main__":
    main()
