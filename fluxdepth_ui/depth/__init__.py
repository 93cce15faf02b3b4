"""Depth core: reading depth files and turning them into FLUX.1-Depth-dev control maps. numpy + readers only."""

from .channels import DepthMap, depth_name_tier, interpret, load_depth
from .control import DEFAULT_LONG_SIDE, ControlImage, control_size, make_control_image
from .errors import DepthInputError
from .normalize import (
    DEFAULT_CLIP,
    INVERT_CHOICES,
    MODES,
    ControlMap,
    DepthRange,
    NormalizeSettings,
    compute_range,
    compute_sequence_range,
    normalize,
    valid_mask,
)
from .preview import DepthPreview, DepthSettings, DepthStats, Histogram, prepare_depth, prepare_loaded, write_preview_png
from .readers import Raster, read_raster, sniff_format

__all__ = [
    "DEFAULT_CLIP", "DEFAULT_LONG_SIDE", "INVERT_CHOICES", "MODES", "ControlImage", "ControlMap", "DepthInputError",
    "DepthMap", "DepthPreview", "DepthRange", "DepthSettings", "DepthStats", "Histogram", "NormalizeSettings",
    "Raster", "compute_range", "compute_sequence_range", "control_size", "depth_name_tier", "interpret",
    "load_depth", "make_control_image", "normalize", "prepare_depth", "prepare_loaded", "read_raster",
    "sniff_format", "valid_mask", "write_preview_png",
]
