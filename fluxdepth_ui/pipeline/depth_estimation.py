"""Depth from a photo: Depth Anything through transformers, the estimator FLUX.1-Depth-dev's control maps came from.

The raw prediction is relative inverse depth (near = large). It becomes a `DepthMap` of kind "image" with known
polarity, so the normal `passthrough` normalization min-max stretches it: exactly image_gen_aux's convention.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch
from PIL import Image

from ..depth import DepthMap
from .errors import PipelineError
from .sources import ModelSource, from_cache_or_hub, hub_offline, translate_load_error

log = logging.getLogger(__name__)

DEFAULT_DEPTH_MODEL = "LiheYoung/depth-anything-large-hf"
# After a failed load, further estimates fail at once with the same line for this long (an offline studio must not
# wait for the Hub again on every click): seconds.
FAILURE_REMEMBERED_S = 600.0


class DepthEstimator:
    """Loads its model on first use and keeps it; thread-safe."""

    def __init__(self, model_id: str = DEFAULT_DEPTH_MODEL, device: str | None = None, token: str | None = None):
        self.model_id = model_id
        self._device = device
        self._token = token
        self._model = None
        self._processor = None
        self._lock = threading.Lock()
        self._failure: tuple[str, float] | None = None  # (message, when): a failed load, remembered a while

    @classmethod
    def from_components(cls, model, processor, name: str = "custom") -> "DepthEstimator":
        est = cls(name)
        est._model, est._processor = model.eval(), processor
        return est

    def _load(self) -> None:
        """From the local Hugging Face cache first, the Hub only when not cached and not offline (sources.py
        from_cache_or_hub). A failure is one line, and it is remembered for FAILURE_REMEMBERED_S."""
        if self._failure is not None and time.monotonic() - self._failure[1] < FAILURE_REMEMBERED_S:
            raise PipelineError(self._failure[0])
        try:
            processor, model = from_cache_or_hub(self._from_hub)
        except Exception as exc:  # noqa: BLE001 - one line: offline, or translated when it is a hub problem
            if hub_offline():
                self._fail(f"the depth estimator {self.model_id} is not in the local Hugging Face cache and this "
                           "studio is offline: run once with a connection, or drop a rendered depth pass instead")
            log.warning("loading %s failed", self.model_id, exc_info=True)
            self._fail(translate_load_error(exc, ModelSource(self.model_id)) or (
                f"the depth estimator {self.model_id} could not be loaded (not in the local Hugging Face "
                "cache, and the Hub cannot be reached): run once with a connection, or drop a rendered depth "
                "pass instead"))
        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._processor, self._model = processor, model.to(device).eval()

    def _from_hub(self, local_only: bool):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        processor = AutoImageProcessor.from_pretrained(self.model_id, token=self._token, local_files_only=local_only)
        model = AutoModelForDepthEstimation.from_pretrained(self.model_id, token=self._token,
                                                            local_files_only=local_only)
        return processor, model

    def _fail(self, message: str):
        self._failure = (message, time.monotonic())
        raise PipelineError(message) from None

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
