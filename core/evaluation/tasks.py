"""Which adapters each evaluation query needs, in the demo zoo's naming."""

from __future__ import annotations

from ..zoo.world import ZooExample


def language_adapter(language: str) -> str:
    return f"lang_{language}"


def relevant_adapters(example: ZooExample) -> list[str]:
    """Task adapter first, then language adapter; one of them for single-domain queries."""
    needed = []
    if example.domain is not None:
        needed.append(example.domain)
    if example.language != "en":
        needed.append(language_adapter(example.language))
    return needed


def cell_of(example: ZooExample) -> str:
    """Table cell: ``domain/language`` (``generic`` for non-task text)."""
    return f"{example.domain or 'generic'}/{example.language}"
