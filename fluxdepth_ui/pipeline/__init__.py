"""Generation: the only package that imports torch, diffusers, optimum-quanto, Triton and torchao."""

from .errors import GenerationCancelled, ModelSourceError, OutOfMemoryError, PipelineError
from .manager import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    MAX_SEED,
    GenerationResult,
    GenerationSettings,
    PipelineManager,
    control_tensor,
)
from .metadata import GenerationMetadata, read_metadata, save_result
from .placement import PLACEMENTS
from .sources import DEFAULT_MODEL, DEPTH_LORA, FLUX_DEV, TINY, ModelSource, parse_model_source
from .variants import VARIANTS

__all__ = [
    "DEFAULT_GUIDANCE", "DEFAULT_MODEL", "DEFAULT_STEPS", "DEFAULT_STRENGTH", "DEPTH_LORA", "FLUX_DEV", "MAX_SEED",
    "PLACEMENTS", "TINY", "VARIANTS", "GenerationCancelled", "GenerationMetadata", "GenerationResult",
    "GenerationSettings", "ModelSource", "ModelSourceError", "OutOfMemoryError", "PipelineError", "PipelineManager",
    "control_tensor", "parse_model_source", "read_metadata", "save_result",
]
