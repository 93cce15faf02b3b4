"""FLUX.1 Depth [pro] through BFL's API (bfl.py) against a local fake server that follows BFL's documented contract:
POST /v1/flux-pro-1.0-depth with x-key -> {id, polling_url}; GET polling_url -> Pending ... Ready with
result.sample; the sample is a short-lived URL. Failure statuses, 402, 429 with Retry-After and an expired sample
are played by the fake. Loopback only."""

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from conftest import DEPTH_SYN
from fluxdepth_ui.bfl import BflBackend, BflError, control_png_8bit
from fluxdepth_ui.cli import main
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.pipeline.errors import GenerationCancelled
from fluxdepth_ui.settings import GenerationSettings, SettingsError, ShotSettings
from fluxdepth_ui.shot import render_shot

KEY = "test-key-do-not-log"


class FakeBfl:
    """The fake server's state: what it received and how it should answer."""

    def __init__(self):
        self.requests = []
        self.mode = "ok"  # ok | error | content | request | 402 | 429 | 429-forever | expired | 401 | 422
        self.pending = 2  # polls answered Pending before Ready
        self.polls = 0
        self.rate_hits = 0


def make_handler(state: FakeBfl):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def reply(self, code, body=None, headers=None, raw=None):
            data = raw if raw is not None else json.dumps(body or {}).encode()
            self.send_response(code)
            self.send_header("content-type", "image/png" if raw is not None else "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            state.requests.append({"path": self.path, "key": self.headers.get("x-key"), "body": body})
            if self.headers.get("x-key") != KEY or state.mode == "401":
                return self.reply(403, {"detail": "Not authenticated"})
            if state.mode == "402":
                return self.reply(402, {"detail": "Insufficient credits"})
            if state.mode == "422":
                return self.reply(422, {"detail": [{"msg": "steps must be <= 50"}]})
            if state.mode.startswith("429") and (state.mode == "429-forever" or state.rate_hits < 1):
                state.rate_hits += 1
                return self.reply(429, {"detail": "rate limited"}, {"retry-after": "0"})
            host = f"http://127.0.0.1:{self.server.server_port}"
            return self.reply(200, {"id": "task-1", "polling_url": f"{host}/v1/get_result?id=task-1"})

        def do_GET(self):
            host = f"http://127.0.0.1:{self.server.server_port}"
            if self.path.startswith("/v1/get_result"):
                state.polls += 1
                if state.polls <= state.pending:
                    return self.reply(200, {"id": "task-1", "status": "Pending", "progress": 0.5})
                status = {"error": "Error", "content": "Content Moderated", "request": "Request Moderated",
                          "gone": "Task not found"}.get(state.mode, "Ready")
                result = {"sample": f"{host}/samples/task-1.png"} if status == "Ready" else None
                return self.reply(200, {"id": "task-1", "status": status, "result": result, "cost": 5,
                                        "details": "worker crashed" if status == "Error" else None})
            if self.path == "/samples/task-1.png":
                if state.mode == "expired":
                    return self.reply(403, {"detail": "Request has expired"})
                control = base64.b64decode(state.requests[-1]["body"]["preprocessed_image"])
                image = Image.open(io.BytesIO(control)).convert("RGB")  # "renders" the map it was sent
                out = io.BytesIO()
                Image.fromarray(255 - np.asarray(image)).save(out, format="PNG")
                return self.reply(200, raw=out.getvalue())
            return self.reply(404, {"detail": "not found"})

    return Handler


@pytest.fixture
def fake():
    state = FakeBfl()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()


@pytest.fixture(scope="module")
def depth():
    return prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))


def backend(fake, **kw):
    return BflBackend(key=KEY, base_url=fake.url, poll_start=0.01, poll_max=0.02, **kw)


def test_sends_our_control_map_and_saves_the_result_like_a_local_one(tmp_path, fake, depth):
    steps = []
    shot = render_shot(backend(fake), str(DEPTH_SYN), ShotSettings(DepthSettings(long_side=256),
                                                                     GenerationSettings("a hall", seed=4, steps=30,
                                                                                        guidance=15.0)),
                       str(tmp_path / "bfl.png"), on_step=lambda i, n: steps.append((i, n)))
    sent = fake.requests[-1]
    assert sent["path"] == "/v1/flux-pro-1.0-depth" and sent["key"] == KEY
    body = sent["body"]
    assert body["preprocessed_image"] == body["control_image"]  # our map, BFL's depth estimation bypassed
    assert base64.b64decode(body["preprocessed_image"]) == control_png_8bit(depth.control)
    assert {k: body[k] for k in ("prompt", "guidance", "steps", "seed", "output_format", "prompt_upsampling")} == \
        {"prompt": "a hall", "guidance": 15.0, "steps": 30, "seed": 4, "output_format": "png",
         "prompt_upsampling": False}
    sent_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["preprocessed_image"]))))
    assert sent_map.shape == (192, 256, 3)
    assert np.abs(sent_map[..., 0] / 255.0 - depth.control.pixels).max() <= 0.5 / 255 + 1e-6
    # Saved like a local result: PNG + sidecar, backend and task id recorded, never the key.
    meta = json.loads((tmp_path / "bfl.json").read_text())
    assert meta["model"] == "bfl:flux-pro-1.0-depth" and meta["variant"] == "bfl-pro"
    assert "BFL task task-1" in meta["notes"] and "BFL cost 5" in meta["notes"]
    assert KEY not in (tmp_path / "bfl.json").read_text() and KEY.encode() not in (tmp_path / "bfl.png").read_bytes()
    assert Image.open(shot.png).size == (256, 192)
    assert np.array_equal(np.asarray(shot.image), 255 - sent_map)  # the fake's "render" came back whole
    assert steps[-1] == (30, 30) and fake.polls == 3


@pytest.mark.parametrize("mode, fragment", [
    ("error", "BFL task task-1 failed (worker crashed); generate again"),
    ("content", "BFL's moderation stopped the result (task task-1); change the prompt"),
    ("request", "BFL's moderation stopped the request (task task-1)"),
    ("gone", "BFL no longer knows task task-1"),
    ("402", "the BFL account has no credits left"),
    ("401", "BFL refused the API key; check BFL_API_KEY"),
    ("422", "BFL refused the request (steps must be <= 50)"),
    ("429-forever", "BFL's rate limit was hit 4 times in a row"),
    ("expired", "expired before it could be downloaded"),
])
def test_failures_are_one_line_and_never_show_the_key(fake, depth, mode, fragment):
    fake.mode = mode
    with pytest.raises(BflError) as err:
        backend(fake).generate(depth.control, GenerationSettings("a hall", seed=1, steps=20, guidance=15.0))
    message = str(err.value)
    assert fragment in message and "\n" not in message and KEY not in message


def test_rate_limit_is_retried_after_the_servers_delay(fake, depth):
    fake.mode = "429"
    result = backend(fake).generate(depth.control, GenerationSettings("a hall", seed=1, steps=20, guidance=15.0))
    assert fake.rate_hits == 1 and len(fake.requests) == 2 and result.image.size == (256, 192)


def test_cancel_and_timeout_while_polling(fake, depth):
    fake.pending = 10**6
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelled, match="may still be billed"):
        backend(fake).generate(depth.control, GenerationSettings("a hall", seed=1, steps=20, guidance=15.0),
                               cancel=cancel)
    with pytest.raises(BflError, match="did not finish in 0 s"):
        backend(fake, max_wait=0.05).generate(depth.control,
                                              GenerationSettings("a hall", seed=1, steps=20, guidance=15.0))


def test_settings_bfl_cannot_take_are_refused_before_anything_is_sent(fake, depth):
    for settings, fragment in [(GenerationSettings("x", steps=10), "steps 10 is outside what BFL accepts"),
                               (GenerationSettings("x", guidance=0.5, steps=20), "guidance 0.5 is outside"),
                               (GenerationSettings("x", steps=20, loras=["a.safetensors"]), "local model only"),
                               (GenerationSettings("x", steps=20, plate=True), "plate runs on the local model")]:
        with pytest.raises(SettingsError, match=fragment):
            backend(fake).generate(depth.control, settings)
    with pytest.raises(BflError, match="no BFL API key: set BFL_API_KEY"):
        BflBackend(key="", base_url=fake.url).generate(depth.control, GenerationSettings("x", steps=20))
    assert fake.requests == []


def test_cli_backend_bfl(tmp_path, fake, monkeypatch, capsys):
    monkeypatch.setenv("BFL_API_KEY", KEY)
    monkeypatch.setenv("FLUXDEPTH_BFL_URL", fake.url)
    fake.pending = 0
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "a hall", "--backend", "bfl", "--steps", "20",
               "--guidance", "15", "--seed", "2", "--long-side", "256", "--out", str(tmp_path / "a.png")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["model"] == "bfl:flux-pro-1.0-depth" and KEY not in out + err
    monkeypatch.setenv("BFL_API_KEY", "")
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "a hall", "--backend", "bfl", "--steps", "20",
               "--out", str(tmp_path / "b.png")])
    assert rc == 2 and capsys.readouterr().err.startswith("error: no BFL API key: set BFL_API_KEY")


def test_the_app_offers_bfl_only_when_the_host_does(tmp_path, fake, monkeypatch):
    from fluxdepth_ui.pipeline import ModelSource, PipelineManager
    from fluxdepth_ui.ui import handlers as h
    from fluxdepth_ui.ui.sharing import make_policy

    fake.pending = 0
    manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path / "cache"))
    form = dict(depth_file=str(DEPTH_SYN), channel="auto", mode="auto", invert="auto", clip_low=0.5,
                clip_high=99.5, near=None, far=None, long_side=256, edges="snap", prompt="a hall", variant="bf16",
                steps=20, guidance=15.0, seed=7, randomize=False, init_image=None, strength=0.6, backend="bfl")
    policy = make_policy(True, "bf16", ["bf16"], None, None)
    plain = h.Studio(manager=manager, outputs=tmp_path / "o1", policy=policy)
    with pytest.raises(Exception, match="renders on its own model only"):
        h.generate_from_form(plain, "s", form)
    offered = h.Studio(manager=manager, outputs=tmp_path / "o2", policy=policy, bfl=backend(fake))
    outcome = h.generate_from_form(offered, "s", form)
    assert outcome.metadata["model"] == "bfl:flux-pro-1.0-depth" and manager._pipe is None  # no local load
    assert "BFL task task-1" in outcome.message
    with pytest.raises(SettingsError, match="steps 4 is outside what BFL accepts"):
        h.generate_from_form(offered, "s", {**form, "steps": 4})
