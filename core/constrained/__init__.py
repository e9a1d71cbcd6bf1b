"""Grammar-constrained decoding: JSON schemas, JSON objects and tool calls enforced token by token.

Built on llguidance (guidance-ai, MIT), chosen over xgrammar and outlines after checking
all three on our tokenizers (the reasons, measured, are in ``benchmarks/RESULTS.md``):

* correctness: xgrammar 0.2.9 lets strings with ``maxLength``/``minLength`` contain raw
  control characters (invalid JSON, upstream issue mlc-ai/xgrammar#800, open) and reads
  the special tokens of our byte-level test tokenizer as plain text; llguidance produced
  only valid, schema-valid JSON in the same random walks;
* weight: xgrammar requires ``triton`` on Linux x86-64 (a 286 MB wheel) plus
  ``apache-tvm-ffi``; llguidance is one 3 MB abi3 wheel with no dependencies; outlines
  pulls in a framework and its Rust core compiles JSON schemas to regexes only, without
  the triggered (``<tool_call>`` anywhere in free text) grammars tool calling needs;
* features: llguidance compiles JSON schema and Lark, and its lazy lexemes express
  "free text until ``<tool_call>``, then a valid call";
* cost: compile in milliseconds, masks in tens of microseconds per token on CPU.

Its one gap on our tokenizers, a ``Metaspace`` decoder read literally, is bridged and
checked in :mod:`.vocabulary`.
"""

from .compiler import CompiledGrammar, GrammarCompiler
from .grammars import grammar_for
from .matcher import GrammarConstraint, GrammarViolation, shortest_completion
from .vocabulary import Vocabulary, build_vocabulary

__all__ = [
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarConstraint",
    "GrammarViolation",
    "Vocabulary",
    "build_vocabulary",
    "grammar_for",
    "shortest_completion",
]
