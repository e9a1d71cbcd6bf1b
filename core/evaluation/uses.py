"""The fusion methods the use examples compare (agent, RAG), as options of the LLM wrappers.

One definition for every example, so their tables name and configure methods alike: the base,
each adapter alone, qa-FLoRA as published (sum-to-one shares) and the default fusion; for
requests that offer tools also the default without its ``tools_hint``, so the hint has its row,
and with ``conversation_weights="once"``, the cheaper conversation policy an agent might pick
(benchmarks/ZOO.md: it answers composite tool requests in English).
"""

from __future__ import annotations

from typing import Any


def fusion_methods(adapters: list[str], *, offers_tools: bool = False) -> dict[str, dict[str, Any]]:
    """Constructor options of ``ChatQaFlora``/``QaFloraLLM`` per compared method, by method name."""
    methods: dict[str, dict[str, Any]] = {"base alone": {"mode": "base"}}
    methods.update({f"{name} alone": {"mode": "single", "adapters": [name]} for name in adapters})
    methods["qa-FLoRA as published"] = {"fusion_kwargs": {"policy": "shares"}}
    if offers_tools:
        methods["default without tools hint"] = {"fusion_kwargs": {"tools_hint": False}}
        once = {"conversation_weights": "once"}  # the call turn's weights kept for the answer turn
        methods["default, weights once per conversation"] = {"fusion_kwargs": once}
    methods["default fusion"] = {}
    return methods
