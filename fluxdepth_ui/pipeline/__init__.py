"""Generation: the only package that imports torch, diffusers, optimum-quanto, Triton and torchao.

Its names load on first use (PEP 562): `from fluxdepth_ui.pipeline import PipelineManager` imports torch, while the
torch-free modules beside it (settings, outputs, shot, sequence, bfl, depth) never do (tests/test_outputs.py).
"""

from __future__ import annotations

import importlib

_HOMES = {
    "GenerationCancelled": ".errors", "ModelSourceError": ".errors", "OutOfMemoryError": ".errors",
    "PipelineError": ".errors",
    "DEFAULT_GUIDANCE": ".manager", "DEFAULT_STEPS": ".manager", "DEFAULT_STRENGTH": ".manager", "MAX_SEED": ".manager",
    "GenerationResult": ".manager", "GenerationSettings": ".manager", "PipelineManager": ".manager",
    "control_tensor": ".manager",
    "GenerationMetadata": "..outputs", "read_metadata": "..outputs", "save_result": "..outputs",
    "PLACEMENTS": ".placement",
    "DEFAULT_MODEL": ".sources", "DEPTH_LORA": ".sources", "FLUX_DEV": ".sources", "TINY": ".sources",
    "ModelSource": ".sources", "parse_model_source": ".sources",
    "VARIANTS": ".variants",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value
