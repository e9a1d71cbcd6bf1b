"""qaflora: query-adaptive, per-layer fusion of LoRA adapters (qa-FLoRA) with LoGo preselection."""

__version__ = "0.1.0"
