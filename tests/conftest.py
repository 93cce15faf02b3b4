"""Test-wide setup. The offline variables must be set before gradio, huggingface_hub or diffusers are imported."""

import os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "IMAGEIO_NO_INTERNET": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ[_key] = _value

import tempfile  # noqa: E402

# The suite runs the same for a user who has used the app: none of their FLUXDEPTH_* settings apply, and quantized
# weights, compile caches, measured step times, presets and every library's config or cache folder go under a folder
# of this test session, never the real ~/.config or ~/.cache (child processes inherit the same variables).
for _key in [k for k in os.environ if k.startswith("FLUXDEPTH_")]:
    del os.environ[_key]
_HOME = tempfile.mkdtemp(prefix="fluxdepth-test-home-")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_HOME, "config")
os.environ["XDG_CACHE_HOME"] = os.path.join(_HOME, "cache")
# The Hugging Face cache too, even where the user has set their own: loads look up (and read ahead) Hub models in it.
for _key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE"):
    os.environ.pop(_key, None)
os.environ["HF_HOME"] = os.path.join(_HOME, "cache", "huggingface")
os.environ["FLUXDEPTH_CACHE"] = os.path.join(_HOME, "cache", "fluxdepth")
os.environ["FLUXDEPTH_PRESETS"] = os.path.join(_HOME, "config", "fluxdepth", "presets")
# gradio's upload and result cache: not /tmp/gradio, which other gradio apps (or a second suite) share and clean.
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_HOME, "gradio")
# Ray starts its workers at niceness 15 (so a farm node's own work comes first). On a busy CI machine that starved
# the farm tests' workers: 9-16 s tests took 90-200 s beside two busy processes. The tests' clusters
# (and the CLI processes that join them) run their workers at normal priority.
os.environ["RAY_worker_niceness"] = "0"

import ipaddress  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "depth"
if not FIXTURES.is_dir():  # CI clones the repo with shared/ beside it; a checkout may carry shared/ inside
    FIXTURES = Path(__file__).resolve().parents[1] / "shared" / "fixtures" / "depth"

BEACHBALL = FIXTURES / "openexr_beachball_singlepart_0001.exr"
NOZ_EXR = FIXTURES / "openexr_v2_lowres_composited_noZ.exr"
DEPTH_SYN = FIXTURES / "open3d_depth_syn.png"
DEPTH_SYN_CAMERA = FIXTURES / "open3d_depth_syn_camera.json"
TUM = FIXTURES / "open3d_TUM_depth.png"


# --- no network but loopback -------------------------------------------------------------------------------------

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"test network guard: connection to {address!r} blocked (loopback only)")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"test network guard: connection to {address!r} blocked (loopback only)")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


def pytest_configure(config):
    if not FIXTURES.is_dir():
        raise pytest.UsageError(f"depth fixtures not found at {FIXTURES} (expected ../shared/fixtures/depth)")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)


# --- writers for generated test files ----------------------------------------------------------------------------


def write_exr(path, channels: dict, *, header: dict | None = None, parts: list | None = None):
    """Write a scanline EXR. `channels` maps names to 2-D float16/float32 arrays; `parts` = [(header, channels), ...]."""
    import OpenEXR

    path = str(path)
    if parts is not None:
        exr_parts = []
        for i, (h, ch) in enumerate(parts):
            h = {"type": OpenEXR.scanlineimage, "compression": OpenEXR.ZIP_COMPRESSION, "name": f"part{i}", **h}
            exr_parts.append(OpenEXR.Part(h, ch))
        OpenEXR.File(exr_parts).write(path)
        return path
    h = {"type": OpenEXR.scanlineimage, "compression": OpenEXR.ZIP_COMPRESSION, **(header or {})}
    OpenEXR.File(h, channels).write(path)
    return path


def ramp_depth(h=96, w=128, near=2.0, far=20.0, dtype=np.float32):
    """Depth growing left to right, near at x=0."""
    row = np.geomspace(near, far, w, dtype=np.float64)
    return np.tile(row, (h, 1)).astype(dtype)


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


def launch_app(tmp_path, *extra, auth=None, **launch_kw):
    """The app in this process on loopback with tiny-random, launched with the same options as `python app.py`
    (`extra`: its command-line flags). Returns (studio, demo); call demo.close()."""
    from fluxdepth_ui.ui.launch import build_parser, create, launch_options

    args = build_parser().parse_args(["--model", "tiny-random", "--outputs", str(tmp_path / "outputs"), *extra])
    studio, demo = create(args)
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size)
    port = launch_kw.pop("server_port", None)  # a restart on the same address keeps the browser's storage
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **{**launch_options(studio, auth), **launch_kw})
    return studio, demo


@pytest.fixture(autouse=True)
def _own_presets_folder(tmp_path_factory, monkeypatch):
    """Each test starts with no saved presets: one test's saved preset never shows in another's list."""
    monkeypatch.setenv("FLUXDEPTH_PRESETS", str(tmp_path_factory.mktemp("presets")))


@pytest.fixture
def bound():
    """Lowered limits for one test, restored after."""
    from fluxdepth_ui import limits

    def set_(**kw):
        limits.configure(limits.Limits(**kw))
    yield set_
    limits.configure(limits.Limits())
