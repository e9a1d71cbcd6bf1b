"""The fusion methods the use examples compare (agent, RAG), as options of the LLM wrappers.

One definition for every example, so their tables name and configure methods alike: the base,
each adapter alone, qa-FLoRA as published (sum-to-one shares) and the default fusion. Each hint
has its row without it: for requests that offer tools the default without ``tools_hint``, and
with ``conversation_weights="once"``, the cheaper conversation policy an agent might pick
(benchmarks/ZOO.md: it answers composite tool requests in English); for a query engine the
default without ``QaFloraLLM``'s ``reading_hint``.
"""

from __future__ import annotations

from typing import Any


def fusion_methods(
    adapters: list[str], *, offers_tools: bool = False, reads_context: bool = False
) -> dict[str, dict[str, Any]]:
    """Constructor options of ``ChatQaFlora``/``QaFloraLLM`` per compared method, by method name."""
    methods: dict[str, dict[str, Any]] = {"base alone": {"mode": "base"}}
    methods.update({f"{name} alone": {"mode": "single", "adapters": [name]} for name in adapters})
    methods["qa-FLoRA as published"] = {"fusion_kwargs": {"policy": "shares"}}
    if offers_tools:
        methods["default without tools hint"] = {"fusion_kwargs": {"tools_hint": False}}
        methods["default without call target"] = {"fusion_kwargs": {"call_target": False}}
        once = {"conversation_weights": "once"}  # the call turn's weights kept for the answer turn
        methods["default, weights once per conversation"] = {"fusion_kwargs": once}
    if reads_context:  # QaFloraLLM's reading_hint: a query engine's retrieved context asks for `reading`
        methods["default without reading hint"] = {"reading_hint": False}
    methods["default fusion"] = {}
    return methods
