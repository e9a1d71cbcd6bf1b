"""LangChain integration: ``ChatQaFlora``, a fused base LM + LoRA catalog as a chat model.

from qaflora_integrations.langchain import ChatQaFlora
llm = ChatQaFlora(catalog="zoo/catalog.yaml", max_tokens=64)
llm.invoke("Solve 12+7 and answer in Russian").response_metadata["adapters"]
"""

from .callbacks import FusionTraceHandler
from .chat_model import ChatQaFlora
from .engines import clear_engine_cache, shared_engine
from .messages import to_chat_messages
from .tools import ParsedOutput, ToolCallStreamSplitter, parse_tool_calls

__all__ = [
    "ChatQaFlora",
    "FusionTraceHandler",
    "ParsedOutput",
    "ToolCallStreamSplitter",
    "clear_engine_cache",
    "parse_tool_calls",
    "shared_engine",
    "to_chat_messages",
]
