"""The demo zoo: a synthetic multilingual, multi-domain world, a tiny Llama base and its LoRA adapters."""
