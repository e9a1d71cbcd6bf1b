"""LlamaIndex LLM over a qaflora :class:`~qaflora.FusionEngine`: :class:`QaFloraLLM`.

    from qaflora_integrations.llama_index import QaFloraLLM

    llm = QaFloraLLM(base_path="path/to/base", catalog="adapters.yaml", max_new_tokens=64)
    response = llm.complete("which drug treats flu ?")
    response.additional_kwargs["fusion_weights"]  # the per-layer weights of THIS query

It follows ``HuggingFaceLLM`` (llama-index-llms-huggingface): same field names
(``context_window``, ``max_new_tokens``, ``generate_kwargs``, ``is_chat_model``,
``system_prompt``, ``messages_to_prompt``, ``completion_to_prompt``), the
``llm_completion_callback`` / ``llm_chat_callback`` decorators on every entry point.
Where HuggingFaceLLM is weak, this class does more, because a fused answer is only
useful if you can see why it came out that way:

* every response (streamed ones included: the final chunk) carries the selected
  adapters, the per-layer fusion weights and the token usage;
* per-call kwargs are honoured: any fusion option (``mode``, ``top_k``, ``adapters``...)
  or generation option (``max_new_tokens``, ``temperature``, ``stop``...);
* the async methods are truly async (``CustomLLM``'s defaults call the sync methods
  and block the event loop); concurrent calls are batched by the engine, each with
  its own fusion weights;
* chat uses the base tokenizer's own chat template (via the engine), not a generic
  ``"user: ..."`` prompt, so the model is prompted as its adapters were trained.
"""

from .engines import clear_engine_cache, load_engine
from .llm import QaFloraLLM
from .messages import to_engine_messages
from .responses import response_metadata
from .tracing import FusionTraceHandler

__all__ = [
    "FusionTraceHandler",
    "QaFloraLLM",
    "clear_engine_cache",
    "load_engine",
    "response_metadata",
    "to_engine_messages",
]
