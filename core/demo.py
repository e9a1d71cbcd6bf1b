"""``qaflora demo``: composite multilingual questions answered by the demo zoo through LangChain.

The demo goes through the real LangChain chat model (``ChatQaFlora``), batching all
questions in one ``batch`` call, and reads the fusion weights back from each message's
``response_metadata`` — the same path a user's chain would take.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from .catalog import AdapterCatalog
from .plotting import plot_heatmap, weights_table
from .results import FusionWeights

DEMO_SEED = 2026


def demo_questions(per_cell: int = 1):
    """One composite question per (language, domain) cell, from a seed unused by training."""
    from .zoo.world import eval_set

    return eval_set("composite", per_cell, seed=DEMO_SEED)


def run_demo(
    console: Console,
    *,
    catalog: Path | None = None,
    plot_dir: Path | None = None,
    max_new_tokens: int = 24,
    top_k: int | None = None,
    normalize: str = "max",
    policy: str = "relevant",
) -> list[dict]:
    from qaflora_integrations.langchain import ChatQaFlora

    from .engine import FusionEngine
    from .zoo import catalog_or_shipped
    from .zoo.world import answered_in_english, is_correct

    try:
        catalog_path = catalog_or_shipped(catalog)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from exc
    adapters = AdapterCatalog.from_file(catalog_path)
    with console.status("loading the demo zoo..."):
        engine = FusionEngine.from_pretrained(adapters.base_model, adapters, progress=False)
    llm = ChatQaFlora(
        engine=engine,
        max_tokens=max_new_tokens,
        top_k=top_k,
        fusion_kwargs={"normalize": normalize, "policy": policy},
    )
    questions = demo_questions()
    console.print(
        f"[bold]qaflora demo[/bold]: base [cyan]{engine.model_name}[/cyan] "
        f"({sum(p.numel() for p in engine.model.parameters()) / 1e6:.1f} M parameters, "
        f"{engine.num_layers} layers) with adapters {', '.join(engine.adapter_names)}.\n"
        f"Each question is a task asked in an invented language and must be answered in it: it needs "
        f"a task adapter AND a language adapter. "
        + (f"LoGo keeps the top-{top_k} adapters, then " if top_k else "")
        + (
            f"qa-FLoRA weighs {'them' if top_k else 'all adapters'} per layer (normalize={normalize!r}). "
            if policy == "shares"
            else "the adapters that move the next-token distribution are kept at their trained strength, "
            "then a composition check picks their strengths, per block of layers where that does better "
            "(policy='relevant'). "
        )
        + f"All {len(questions)} questions go through ChatQaFlora.batch in one call.\n"
    )
    messages = [[("human", q.prompt)] for q in questions]
    replies = llm.batch(messages)
    report = []
    for index, (question, reply) in enumerate(zip(questions, replies, strict=True)):
        fusion = FusionWeights.from_dict(reply.response_metadata["fusion"])
        ok = is_correct(str(reply.content), question)
        in_english = not ok and answered_in_english(str(reply.content), question)
        verdict = "[green]correct[/green]" if ok else f"[red]expected[/red] {question.answer!r}"
        if in_english:
            verdict += " [yellow](right answer, but in English: the language adapter lost)[/yellow]"
        console.print(
            Panel.fit(
                f"[bold]{question.prompt}[/bold]\n"
                f"({question.domain} question in {question.language})\n"
                f"answer: [cyan]{str(reply.content).strip()!r}[/cyan]  {verdict}\n"
                f"adapters: {', '.join(f'{n} {w:.2f}' for n, w in fusion.ranked())}",
                title=f"question {index + 1}",
            )
        )
        console.print(weights_table(fusion))
        report.append(
            {
                "question": question.prompt,
                "answer": str(reply.content),
                "correct": ok,
                "right_in_english": in_english,
                "adapters": fusion.adapters,
                "fusion": fusion.to_dict(),
            }
        )
        if plot_dir is not None:
            path = plot_heatmap(fusion, Path(plot_dir) / f"demo_{index + 1}.png", suptitle=question.prompt)
            console.print(f"[dim]heatmap: {path}[/dim]")
    correct = sum(r["correct"] for r in report)
    console.print(
        f"\n[bold]{correct}/{len(report)} correct[/bold] "
        f"(`qaflora eval` runs the full benchmark against every baseline)."
    )
    engine.close()
    return report
