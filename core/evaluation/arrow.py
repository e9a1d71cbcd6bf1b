"""PEFT's Arrow routing (data-free, training-free, token-level), run through PEFT itself.

``peft.create_arrow_model`` loads the task adapters into an Arrow router that, per token
and per layer, picks the top-k adapters by the alignment of the token's hidden state with
each adapter's principal direction. We only batch the greedy generation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from peft import ArrowConfig, create_arrow_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..hf_quiet import quiet_transformers


class ArrowRunner:
    def __init__(
        self, base_path: Path, adapter_paths: dict[str, Path], top_k: int, device: str = "cpu"
    ) -> None:
        self.names = list(adapter_paths)
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_path))
        self.tokenizer.padding_side = "left"
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = AutoModelForCausalLM.from_pretrained(str(base_path)).to(device)
            self.model = create_arrow_model(
                base_model=base,
                task_specific_adapter_paths=[str(adapter_paths[n]) for n in self.names],
                arrow_config=ArrowConfig(
                    top_k=min(top_k, len(self.names)), router_temperature=1.0, rng_seed=0
                ),
            ).eval()
        self.device = device

    @torch.inference_mode()
    def generate(self, queries: list, max_new_tokens: int, batch_size: int = 32) -> list[str]:
        texts = [
            self.tokenizer.apply_chat_template(q, tokenize=False, add_generation_prompt=True) for q in queries
        ]
        outputs: list[str] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(
                self.device
            )
            generated = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            new = generated[:, enc["input_ids"].shape[1] :]
            outputs.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return outputs
