"""Silence transformers' per-load progress bars and warnings where they drown our own output."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from transformers.utils import logging as hf_logging


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Disable transformers' progress bars for the block (a test log or a CLI table stays readable)."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


# Deprecation warnings that a library raises on its own behalf, whatever we pass it: PEFT's
# ``PeftModel.__init__`` reads transformers 5.x's deprecated ``is_gradient_checkpointing``.
# Everything else (a deprecated argument of ours, say) stays visible, and the tests make it an error.
LIBRARY_INTERNAL_DEPRECATIONS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)


@contextlib.contextmanager
def ignore_library_internal_deprecations() -> Iterator[None]:
    """Hide only :data:`LIBRARY_INTERNAL_DEPRECATIONS` for the block."""
    with warnings.catch_warnings():
        for message, category in LIBRARY_INTERNAL_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
