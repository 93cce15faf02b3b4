"""User-facing pipeline errors: one line saying what went wrong and what to do."""

from ..errors import FluxDepthError


class PipelineError(FluxDepthError, RuntimeError):
    """Base for every error the pipeline manager reports to the user."""


class ModelSourceError(PipelineError):
    """The model cannot be found, downloaded or recognised."""


class OutOfMemoryError(PipelineError):
    """The accelerator ran out of memory; the manager stays usable."""


class GenerationCancelled(PipelineError):
    """The user cancelled a generation between two denoising steps."""
