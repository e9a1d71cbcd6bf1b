"""Adapters that make a qaflora FusionEngine a native LLM of LangChain and LlamaIndex."""
