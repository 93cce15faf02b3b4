"""FLUX.1 Depth [pro] through Black Forest Labs' API, as a backend of the shot service (docs/bfl.md).

It sends our control map, never the artist's file: the request's `preprocessed_image` bypasses BFL's own depth
estimation (which would otherwise estimate the depth of a depth map), so the render's normalized map is exactly what
the model sees, as on the local path. The flow is BFL's documented one: POST the task (header `x-key`), poll its
`polling_url` with backoff until "Ready", download `result.sample` at once (it expires in about ten minutes).
The key comes from BFL_API_KEY and never goes into metadata, logs or messages.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .depth import ControlImage, DepthStats
from .errors import FluxDepthError
from .settings import GenerationSettings, SettingsError

BFL_URL_ENV = "FLUXDEPTH_BFL_URL"
DEFAULT_BFL_URL = "https://api.bfl.ai"  # BFL's regional endpoints: https://api.eu.bfl.ai, https://api.us.bfl.ai
ENDPOINT = "/v1/flux-pro-1.0-depth"
MODEL = "bfl:flux-pro-1.0-depth"
GUIDANCE_RANGE, STEPS_RANGE = (1.0, 100.0), (15, 50)
SAFETY_TOLERANCE = 2  # BFL's default: 0 strictest, 6 most permissive
MAX_WAIT_S = 600.0
MAX_RATE_RETRIES = 3


class BflError(FluxDepthError):
    """A one-line message about the BFL call: what happened and what to do."""


@dataclass(frozen=True)
class BflResult:
    image: Image.Image
    metadata: object  # pipeline.GenerationMetadata
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1], from the downloaded PNG


class BflBackend:
    """Generates through BFL's API; the same `generate` call as PipelineManager, so render_shot takes either."""

    variant = "bfl-pro"

    def __init__(self, key: str | None = None, base_url: str | None = None, timeout: float = 30.0,
                 max_wait: float = MAX_WAIT_S, poll_start: float = 0.5, poll_max: float = 5.0, client=None):
        import httpx

        self._key = key if key is not None else os.environ.get("BFL_API_KEY", "")
        self.base_url = (base_url or os.environ.get(BFL_URL_ENV) or DEFAULT_BFL_URL).rstrip("/")
        self.max_wait, self.poll_start, self.poll_max = max_wait, poll_start, poll_max
        self._http = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self.source = _Source()

    def check(self) -> None:
        if not self._key:
            raise BflError("no BFL API key: set BFL_API_KEY (from your BFL dashboard) to use --backend bfl")

    def lora_digests(self, loras) -> tuple:
        if loras:
            raise SettingsError("style LoRAs run on the local model only; drop --lora or use --backend local")
        return ()

    def generate(self, control: ControlImage, settings: GenerationSettings, *, init_image=None,
                 init_image_name=None, depth: DepthStats | None = None, on_step=None, cancel=None,
                 load_progress=None) -> BflResult:
        from .outputs import GenerationMetadata

        self.check()
        check_settings(settings, init_image)
        seed = settings.settled().seed
        t0 = time.perf_counter()
        control_png = base64.b64encode(control_png_8bit(control)).decode("ascii")
        body = {
            "prompt": settings.prompt,
            "control_image": control_png,
            "preprocessed_image": control_png,  # our map as is: no depth estimation of a depth map
            "guidance": float(settings.guidance),
            "steps": int(settings.steps),
            "seed": int(seed),
            "output_format": "png",
            "safety_tolerance": SAFETY_TOLERANCE,
            "prompt_upsampling": False,
        }
        if load_progress is not None:
            load_progress(0.0, "sending the control map to BFL (FLUX.1 Depth [pro])")
        task = self._request("POST", self.base_url + ENDPOINT, json=body)
        task_id, polling_url = str(task.get("id", "")), task.get("polling_url")
        if not task_id or not polling_url:
            raise BflError("BFL answered without a task id; try again, or check FLUXDEPTH_BFL_URL")
        result = self._wait(task_id, polling_url, cancel, on_step, int(settings.steps))
        sample = (result.get("result") or {}).get("sample")
        if not sample:
            raise BflError(f"BFL task {task_id} is ready but has no image; generate again")
        image = self._download(sample, task_id)
        if image.size != (control.width, control.height):
            image = image.resize((control.width, control.height), Image.Resampling.LANCZOS)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        notes = [f"BFL task {task_id}"]
        cost = result.get("cost", (result.get("result") or {}).get("cost"))
        if cost is not None:
            notes.append(f"BFL cost {cost}")
        meta = GenerationMetadata(
            prompt=settings.prompt, seed=int(seed), steps=int(settings.steps), guidance=float(settings.guidance),
            width=control.width, height=control.height, variant=self.variant, model=MODEL, revision="api",
            depth_file=depth.file if depth else None, depth_channel=depth.channel if depth else None,
            depth_mode=depth.mode if depth else None, depth_inverted=depth.inverted if depth else None,
            depth_range=depth.range if depth else None, device="BFL API", seconds=round(time.perf_counter() - t0, 3),
            notes=tuple(notes),
        )
        return BflResult(image.convert("RGB"), meta, pixels)

    # --- HTTP ------------------------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, **kw) -> dict:
        import httpx

        for attempt in range(MAX_RATE_RETRIES + 1):
            try:
                r = self._http.request(method, url, headers={"x-key": self._key, "accept": "application/json"}, **kw)
            except httpx.TimeoutException:
                raise BflError("BFL did not answer in time; check the connection and try again") from None
            except httpx.HTTPError as exc:
                raise BflError(f"cannot reach BFL ({type(exc).__name__}); check the connection and "
                               f"{BFL_URL_ENV}") from None
            if r.status_code == 429 and attempt < MAX_RATE_RETRIES:
                time.sleep(_retry_after(r))
                continue
            _raise_for_status(r)
            try:
                return r.json()
            except ValueError:
                raise BflError(f"BFL answered with something that is not JSON (HTTP {r.status_code}); try "
                               "again later") from None
        raise AssertionError("unreachable")

    def _wait(self, task_id: str, polling_url: str, cancel: threading.Event | None, on_step, steps: int) -> dict:
        delay, deadline = self.poll_start, time.monotonic() + self.max_wait
        while True:
            if cancel is not None and cancel.is_set():
                from .pipeline.errors import GenerationCancelled

                raise GenerationCancelled(f"cancelled while BFL task {task_id} was running (it may still be billed)")
            result = self._request("GET", polling_url)
            status = result.get("status")
            if status == "Ready":
                if on_step is not None:
                    on_step(steps, steps)
                return result
            if status in ("Pending", "Queued", "Processing", "Running"):
                progress = result.get("progress")
                if on_step is not None and isinstance(progress, (int, float)):
                    on_step(min(steps - 1, int(progress * steps)), steps)
            elif status in ("Content Moderated", "Request Moderated"):
                what = "the result" if status == "Content Moderated" else "the request"
                raise BflError(f"BFL's moderation stopped {what} (task {task_id}); change the prompt (this studio "
                               f"sends BFL's default safety tolerance, {SAFETY_TOLERANCE})")
            elif status == "Task not found":
                raise BflError(f"BFL no longer knows task {task_id}; generate again")
            else:
                detail = _short(result.get("details") or result.get("error") or status)
                raise BflError(f"BFL task {task_id} failed ({detail}); generate again")
            if time.monotonic() + delay > deadline:
                raise BflError(f"BFL task {task_id} did not finish in {self.max_wait:.0f} s; try again later")
            time.sleep(delay)
            delay = min(self.poll_max, delay * 1.5)

    def _download(self, url: str, task_id: str) -> Image.Image:
        import httpx

        try:
            r = self._http.get(url)  # a signed URL: no key sent with it
        except httpx.HTTPError as exc:
            raise BflError(f"cannot download BFL's result ({type(exc).__name__}); generate again") from None
        if r.status_code in (403, 404, 410):
            raise BflError(f"BFL's result for task {task_id} expired before it could be downloaded (samples last "
                           "about ten minutes); generate again")
        if r.status_code != 200:
            raise BflError(f"downloading BFL's result failed (HTTP {r.status_code}); generate again")
        if len(r.content) > 64 * 2**20:
            raise BflError("BFL's result is larger than 64 MB; generate again")
        try:
            image = Image.open(io.BytesIO(r.content))
            image.load()
        except Exception:  # noqa: BLE001 - any decoder failure is this one message
            raise BflError("BFL's result is not an image this studio can read; generate again") from None
        return image


class _Source:
    """What render_shot asks of a backend's model: a key for shot keys."""

    key = MODEL
    public_key = MODEL
    kind = "api"
    short_name = "FLUX.1 Depth [pro] (BFL API)"


def check_settings(settings: GenerationSettings, init_image=None) -> None:
    """The API's own bounds, in one line each, before anything is sent (and paid for)."""
    if init_image is not None:
        raise SettingsError("FLUX.1 Depth [pro] on BFL takes no start image; drop the init image or use the local "
                            "model")
    if settings.loras:
        raise SettingsError("style LoRAs run on the local model only; drop them or use the local model")
    if settings.plate:
        raise SettingsError("the two-pass plate runs on the local model only; BFL renders the size in one pass")
    if not GUIDANCE_RANGE[0] <= settings.guidance <= GUIDANCE_RANGE[1]:
        raise SettingsError(f"guidance {settings.guidance:g} is outside what BFL accepts; use "
                            f"{GUIDANCE_RANGE[0]:g}..{GUIDANCE_RANGE[1]:g} (15 is BFL's default)")
    if not STEPS_RANGE[0] <= settings.steps <= STEPS_RANGE[1]:
        raise SettingsError(f"steps {settings.steps} is outside what BFL accepts; use "
                            f"{STEPS_RANGE[0]}..{STEPS_RANGE[1]}")


def control_png_8bit(control: ControlImage) -> bytes:
    """The control map as the 8-bit RGB PNG BFL's API takes (what its own depth preprocessing would produce). Not
    16-bit: an image library that turns 16-bit grey into RGB clips it to white (PIL does), a silently wrong map."""
    levels = np.clip(np.round(np.asarray(control.pixels, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(levels[..., None], 3, axis=2), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _retry_after(response) -> float:
    try:
        return min(60.0, max(0.0, float(response.headers.get("retry-after", "5"))))
    except ValueError:
        return 5.0


def _short(value) -> str:
    text = str(value).replace("\n", " ").strip()
    return text[:120] if text else "no details"


def _raise_for_status(r) -> None:
    code = r.status_code
    if code < 400:
        return
    if code in (401, 403):
        raise BflError("BFL refused the API key; check BFL_API_KEY (a key from your BFL dashboard)")
    if code == 402:
        raise BflError("the BFL account has no credits left; add credits in the BFL dashboard, or use the local "
                       "model")
    if code == 429:
        raise BflError(f"BFL's rate limit was hit {MAX_RATE_RETRIES + 1} times in a row; wait "
                       f"{_retry_after(r):.0f} s and try again")
    if code == 422:
        try:
            detail = r.json().get("detail")
            detail = detail[0].get("msg") if isinstance(detail, list) and detail else detail
        except (ValueError, AttributeError):
            detail = None
        raise BflError(f"BFL refused the request ({_short(detail or 'invalid values')}); check the settings")
    raise BflError(f"BFL answered HTTP {code}; try again later")
