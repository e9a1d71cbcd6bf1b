"""examples/rag_query_engine.py end to end: real embedding model, real LlamaIndex, tiny fused LLM.

The tiny random model answers gibberish; what is checked is the pipeline: retrieval
with all-MiniLM-L6-v2 finds the right document, the synthesis call goes through
QaFloraLLM (seen by LlamaIndex instrumentation), its fusion weights come back, and
every prompt LlamaIndex packs fits the model's 256-token window.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent, LLMCompletionStartEvent

from qaflora_integrations.embeddings import LocalSentenceEmbedding
from qaflora_integrations.llama_index import QaFloraLLM

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rag_query_engine.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("rag_query_engine", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


rag = _load_example()


class LLMCalls(BaseEventHandler):
    calls: list[str] = Field(default_factory=list)

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMChatStartEvent | LLMCompletionStartEvent):
            self.calls.append(event.model_dict.get("class_name"))


@pytest.fixture
def llm_calls():
    handler = LLMCalls(calls=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    yield handler.calls
    dispatcher.event_handlers.remove(handler)


@pytest.fixture(scope="module")
def embed_model() -> LocalSentenceEmbedding:
    return LocalSentenceEmbedding()


@pytest.fixture
def llm(llama_engine) -> QaFloraLLM:
    return QaFloraLLM(llama_engine, max_new_tokens=4)


@pytest.fixture(scope="module")
def catalog_file(llama_zoo, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rag") / "catalog.yaml"
    llama_zoo.catalog().model_copy(update={"base_model": llama_zoo.base}).to_file(path)
    return path


def test_embedding_model_is_real(embed_model):
    flu, gout = embed_model.get_text_embedding_batch(
        ["the drug that treats flu is penicillin .", "gout is a disease of the bone ."]
    )
    query = embed_model.get_query_embedding("which drug treats flu ?")
    assert len(query) == 384
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(query, flu) > dot(query, gout) + 0.2


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("what is the maximum of the list [ 3 , 8 , 1 ] ?", "en_code_max_min.txt"),
        ("nine minus four", "en_math_minus.txt"),
        ("¿Qué medicamento trata la migraña?", "es_medicina_migrana.txt"),
    ],
)
def test_retrieval_finds_the_right_document(llm, embed_model, query, expected):
    index, _ = rag.build_query_engine(llm, embed_model, rag.load_documents())
    top = index.as_retriever(similarity_top_k=1).retrieve(query)[0]
    assert top.node.metadata["file_name"] == expected


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        ("which organ does flu affect ?", "kidney"),
        ("toto rara xogu babozor ?", "katata"),  # Zorbic: which drug treats rabies ?
        ("nemel hifena lahanin hesase ?", "meha"),  # Velari: which drug treats flu ?
    ],
)
def test_hybrid_retrieval_finds_the_sentence_that_answers(llm, embed_model, query, answer):
    """Why the default is hybrid: the English embedding model ranks another sentence first, BM25
    matches the question's words, and the fused top-1 node is the one holding the answer."""
    from llama_index.core.schema import MetadataMode

    index = rag.build_index(llm, embed_model, rag.load_documents())
    top = {
        kind: rag.build_retriever(index, llm, kind).retrieve(query)[0].node for kind in ("vector", "hybrid")
    }
    assert answer not in top["vector"].get_content().split()
    assert answer in top["hybrid"].get_content().split()
    # the fused node is the index's own sentence node: no metadata reaches the prompt
    assert top["hybrid"].get_content(metadata_mode=MetadataMode.LLM) == top["hybrid"].get_content()


def test_retrievers_return_top_k_and_refuse_an_unknown_kind(llm, embed_model):
    index = rag.build_index(llm, embed_model, rag.load_documents())
    nodes = len(index.docstore.docs)
    for kind in rag.RETRIEVERS:
        for top_k in (1, 3, nodes + 5):  # more than the index holds: all of it, no error
            found = rag.build_retriever(index, llm, kind, top_k).retrieve("which drug treats flu ?")
            assert len(found) == min(top_k, nodes), (kind, top_k)
            assert len({n.node.node_id for n in found}) == len(found)
    with pytest.raises(ValueError, match="retriever must be one of"):
        rag.build_retriever(index, llm, "keyword")


def test_main_runs_the_pipeline_end_to_end(llama_zoo, catalog_file, llm_calls, capsys):
    argv = ["--base", str(llama_zoo.base), "--catalog", str(catalog_file), "--max-new-tokens", "4"]
    assert rag.main(argv) == 0
    out = capsys.readouterr().out
    retrieved = out.split("retrieved:\n", 1)[1].splitlines()
    assert retrieved[0].split()[0] == "en_medical_flu.txt"  # the default query's document
    assert "fusion (qaflora)" in out
    for name in ("ad0", "ad1", "ad2"):
        assert f"  {name} " in out
    assert llm_calls and set(llm_calls) == {"QaFloraLLM"}


def test_ask_streams_and_reports_the_synthesis_weights(llm, embed_model, llm_calls):
    _, engine = rag.build_query_engine(llm, embed_model, rag.load_documents())
    answer = rag.ask(engine, rag.DEFAULT_QUERY, echo=False)
    assert [s["file_name"] for s in answer.sources] == ["en_medical_flu.txt"]
    assert answer.llm_calls == 1 == len(llm_calls)
    fusion = answer.fusion
    assert fusion["adapters"] == ["ad0", "ad1", "ad2"]
    assert len(fusion["fusion_weights"]["matrix"]) == 3
    assert len(fusion["fusion_weights"]["matrix"][0]) == llm.engine.num_layers
    assert 0 < fusion["completion_tokens"] <= 4
    # the prompt holds the retrieved text: more tokens than the question alone
    assert fusion["prompt_tokens"] > len(llm.engine.encode(rag.DEFAULT_QUERY).ids) + 20


def test_sentence_nodes_hold_one_sentence_and_no_metadata(llm, embed_model):
    """The default split: what the model reads of a node is one sentence of its document."""
    from llama_index.core.schema import MetadataMode

    index = rag.build_index(llm, embed_model, rag.load_documents())
    flu = [n for n in index.docstore.docs.values() if n.metadata["file_name"] == "en_medical_flu.txt"]
    assert [n.get_content(metadata_mode=MetadataMode.LLM).strip() for n in flu] == [
        "flu is a disease .",
        "the drug that treats flu is penicillin .",
        "flu does affect the kidney , and the main symptom of flu is swelling .",
    ]
    with pytest.raises(ValueError, match="nodes must be one of"):
        rag.build_index(llm, embed_model, rag.load_documents(), nodes="paragraph")


@pytest.mark.parametrize("nodes", rag.NODE_SPLITS)
def test_long_documents_are_repacked_to_fit_the_window(llm, embed_model, tmp_path, llm_calls, nodes):
    """LlamaIndex packs prompts from the LLM's metadata; none may overflow the real window."""
    clause = "the drug that treats flu is penicillin and flu does affect the kidney {} , "
    # one sentence, so one node, over twice the window; its chunks differ (retrievers that fuse
    # results drop nodes of identical text)
    sentence = "".join(clause.format(i % 10) for i in range(30)) + "."
    (tmp_path / "en_long.txt").write_text(sentence)
    (tmp_path / "en_other.txt").write_text("gout is a disease of the bone . " * 20)
    assert len(llm.tokenize(sentence)) > 2 * llm.metadata.context_window
    documents = rag.load_documents(tmp_path)
    _, engine = rag.build_query_engine(llm, embed_model, documents, similarity_top_k=3, nodes=nodes)
    answer = rag.ask(engine, "which drug treats flu ?", echo=False)
    assert answer.llm_calls >= 2  # compact + refine over several packed chunks
    assert answer.fusion["prompt_tokens"] < llm.metadata.context_window


def test_default_catalog_is_the_shipped_zoo_when_present(capsys):
    if rag.default_catalog() is None:
        assert rag.main(["--max-new-tokens", "2"]) == 2
        assert "--catalog" in capsys.readouterr().err
    else:
        assert rag.main(["--max-new-tokens", "2"]) == 0
        out = capsys.readouterr().out
        assert out.split("retrieved:\n", 1)[1].split()[0] == "en_medical_flu.txt"


def test_invented_language_documents_are_written_in_the_zoo_lexicon():
    """Every word of a Zorbic/Velari sheet is a word of that language (or a digit, punctuation)."""
    from qaflora.zoo.world import DIGITS, LEXICONS, PUNCTUATION

    sheets = sorted(p for p in rag.DATA_DIR.glob("**/*.txt") if p.name.split("_")[0] in ("zo", "ve"))
    assert len(sheets) >= 16  # the evaluation set's and the dev set's
    for path in sheets:
        words = set(LEXICONS[path.name[:2]].values()) | set(DIGITS) | set(PUNCTUATION)
        foreign = [w for w in path.read_text(encoding="utf-8").split() if w not in words]
        assert not foreign, f"{path.name}: {foreign}"


@pytest.mark.parametrize("directory", [rag.DATA_DIR, rag.DATA_DIR / "dev"], ids=["evaluation", "dev"])
def test_question_set_answers_are_in_their_sources(directory):
    import re

    questions = rag.load_questions(directory / "questions.yaml")
    assert len(questions) >= 30
    assert {q.language for q in questions} == {"en", "zo", "ve"}
    for question in questions:
        texts = [(directory / name).read_text(encoding="utf-8") for name in question.sources]
        pattern = rf"(?<![\w]){re.escape(question.answer)}(?![\w])"
        assert any(re.search(pattern, text) for text in texts), (question.text, question.answer)


def test_evaluation_compares_every_method_on_the_same_retrieval(llm, embed_model):
    questions = [q for q in rag.load_questions() if q.language == "en"][:3]
    rows = rag.evaluate(llm, embed_model, rag.load_documents(), questions)
    names = [row["method"] for row in rows]
    adapters = llm.engine.adapter_names
    singles = [f"{a} alone" for a in adapters]
    hint_off = "default without reading hint"
    assert names == ["base alone", *singles, "qa-FLoRA as published", hint_off, "default fusion"]
    assert len({row["retrieval_hit_rate"] for row in rows}) == 1
    assert rows[0]["retrieval_hit_rate"] == 1.0  # three English questions about flu find its sheet
    # ... but a one-sentence node of that sheet need not hold the answer: the same for every method
    assert len({row["answer_in_context_rate"] for row in rows}) == 1
    for row in rows:
        assert row["questions"] == 3 and 0.0 <= row["accuracy"] <= 1.0
    table = rag.format_evaluation(rows)
    assert table.count("\n") == len(rows) + 1 and "right (en)" in table and "answer in context" in table
