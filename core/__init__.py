"""qaflora: query-adaptive, per-layer fusion of LoRA adapters (qa-FLoRA) with LoGo preselection.

from qaflora import AdapterCatalog, FusionConfig, FusionEngine
engine = FusionEngine.from_pretrained("path/to/base", AdapterCatalog.from_file("adapters.yaml"))
engine.generate("Solve 12+7, answer in Russian").text
"""

from .catalog import AdapterCatalog, AdapterEntry
from .config import MODES, FusionConfig, GenerationOptions
from .engine import FusionEngine
from .errors import QaFloraError
from .results import FusionResult, FusionWeights, SchedulerState, StreamEvent, Timings, Usage

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "AdapterCatalog",
    "AdapterEntry",
    "FusionConfig",
    "FusionEngine",
    "FusionResult",
    "FusionWeights",
    "GenerationOptions",
    "QaFloraError",
    "SchedulerState",
    "StreamEvent",
    "Timings",
    "Usage",
    "__version__",
]
