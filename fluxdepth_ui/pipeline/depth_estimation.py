"""Depth from a photo: Depth Anything through transformers, the estimator FLUX.1-Depth-dev's control maps came from.

The raw prediction is relative inverse depth (near = large). It becomes a `DepthMap` of kind "image" with known
polarity, so the normal `passthrough` normalization min-max stretches it: exactly image_gen_aux's convention.
"""

from __future__ import annotations

import logging

import threading

import numpy as np
import torch
from PIL import Image

from ..depth import DepthMap
from .errors import PipelineError
from .sources import ModelSource, translate_load_error

log = logging.getLogger(__name__)

DEFAULT_DEPTH_MODEL = "LiheYoung/depth-anything-large-hf"


class DepthEstimator:
    """Loads its model on first use and keeps it; thread-safe."""

    def __init__(self, model_id: str = DEFAULT_DEPTH_MODEL, device: str | None = None, token: str | None = None):
        self.model_id = model_id
        self._device = device
        self._token = token
        self._model = None
        self._processor = None
        self._lock = threading.Lock()

    @classmethod
    def from_components(cls, model, processor, name: str = "custom") -> "DepthEstimator":
        est = cls(name)
        est._model, est._processor = model.eval(), processor
        return est

    def _load(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            self._processor = AutoImageProcessor.from_pretrained(self.model_id, token=self._token)
            model = AutoModelForDepthEstimation.from_pretrained(self.model_id, token=self._token)
        except Exception as exc:  # noqa: BLE001 - translated below when it is a hub problem
            message = translate_load_error(exc, ModelSource(self.model_id))
            if message is None:
                log.warning("loading %s failed", self.model_id, exc_info=True)
                message = (f"the depth estimator {self.model_id} could not be loaded (not in the local Hugging Face "
                           "cache, and the Hub cannot be reached): run once with a connection, or drop a rendered "
                           "depth pass instead")
            raise PipelineError(message) from None
        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = model.to(device).eval()

    def estimate(self, image: Image.Image, name: str = "photo") -> DepthMap:
        with self._lock:
            if self._model is None:
                self._load()
            rgb = image.convert("RGB")
            inputs = self._processor(images=rgb, return_tensors="pt")
            device = next(self._model.parameters()).device
            with torch.no_grad():
                pred = self._model(pixel_values=inputs["pixel_values"].to(device)).predicted_depth
            # Back to the photo's size, bilinear (as image_gen_aux does), in float: no 8-bit depth image.
            depth = torch.nn.functional.interpolate(pred[:, None].float(), size=(rgb.height, rgb.width),
                                                    mode="bilinear", align_corners=False)[0, 0]
        values = depth.cpu().numpy().astype(np.float32)
        return DepthMap(
            values=values, kind="image", channel="estimated", channels=("estimated",), source_format="photo",
            sample_type="float32", name=name, notes=(f"depth estimated from the photo with {self.model_id}",),
            near_is_bright=True,
        )
