"""The Gradio app in-process on loopback with tiny-random: API endpoints, sessions, auth, uploads, presets."""

import json
import os

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import BEACHBALL, DEPTH_SYN, NOZ_EXR, launch_app
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.image_files import linear_to_srgb, read_extra
from fluxdepth_ui.pipeline import read_metadata
from fluxdepth_ui.ui.launch import parse_auth


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    studio, demo = launch_app(tmp_path_factory.mktemp("app"))
    yield studio, demo
    demo.close()


def test_preview_endpoint_16bit_png_values(app):
    _, demo = app
    client = Client(demo.local_url, verbose=False)
    png, stats = client.predict(handle_file(str(DEPTH_SYN)), long_side=512, api_name="/preview")
    expected = prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=512))
    got = np.array(Image.open(png))
    assert got.dtype == np.uint16 and got.shape == (384, 512)
    np.testing.assert_array_equal(got, expected.control.to_uint16())
    assert stats["channel"] == "Y" and stats["mode"] == "disparity" and stats["sample_type"] == "uint16"


def test_preview_endpoint_exr_options_and_errors(app):
    _, demo = app
    client = Client(demo.local_url, verbose=False)
    png, stats = client.predict(handle_file(str(BEACHBALL)), mode="linear", invert="on", api_name="/preview")
    expected = prepare_depth(str(BEACHBALL), DepthSettings(
        normalize=DepthSettings().normalize.__class__(mode="linear", invert="on")))
    np.testing.assert_array_equal(np.array(Image.open(png)), expected.control.to_uint16())
    assert stats["mode"] == "linear" and stats["inverted"] is True and stats["width"] == 1024
    with pytest.raises(Exception, match="no depth channel"):
        client.predict(handle_file(str(NOZ_EXR)), api_name="/preview")


def test_generate_endpoint_returns_png_with_metadata(app):
    studio, demo = app
    client = Client(demo.local_url, verbose=False)
    png, meta, extras = client.predict(handle_file(str(BEACHBALL)), "a beach ball", seed=4, steps=2,
                                       long_side=256, also_save=["exr", "png16"], api_name="/generate")
    saved = read_metadata(png)
    # The float copies come back too, decoding to the same picture as the PNG.
    assert sorted(os.path.splitext(e)[1] for e in extras) == [".exr", ".png"]
    eight = np.asarray(Image.open(png), dtype=np.float32) / 255.0
    for extra in extras:
        decoded = read_extra(extra)
        if extra.endswith(".exr"):
            decoded = linear_to_srgb(decoded)
        assert decoded.shape == eight.shape and np.abs(decoded - eight).max() < 2.5 / 255
    assert saved is not None and saved.seed == 4 and saved.steps == 2 and saved.prompt == "a beach ball"
    assert meta["seed"] == 4 and meta["depth_channel"] == "Z" and meta["model"] == "tiny-random-seed0"
    assert Image.open(png).size == (256, 192)
    # The result and its sidecar live in the session's own folder under --outputs.
    sidecars = list(studio.outputs.glob("*/*-seed4.json"))
    assert len(sidecars) == 1 and json.loads(sidecars[0].read_text())["seed"] == 4


def test_sessions_do_not_share_results(app):
    studio, demo = app
    a, b = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
    a.predict(handle_file(str(DEPTH_SYN)), "session a", seed=101, steps=1, long_side=256, api_name="/generate")
    b.predict(handle_file(str(DEPTH_SYN)), "session b", seed=202, steps=1, long_side=256, api_name="/generate")
    folder_a = {p.parent for p in studio.outputs.glob("*/*-seed101.png")}
    folder_b = {p.parent for p in studio.outputs.glob("*/*-seed202.png")}
    assert len(folder_a) == 1 and len(folder_b) == 1 and folder_a != folder_b
    assert not list(next(iter(folder_a)).glob("*-seed202.png"))


def test_only_outputs_and_uploads_are_served(app):
    import urllib.error
    import urllib.request

    _, demo = app
    for path in ("/etc/passwd", str(DEPTH_SYN), __file__):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(demo.local_url.rstrip("/") + "/gradio_api/file=" + path)
        assert err.value.code == 403


def test_auth_rejects_wrong_password(tmp_path):
    studio, demo = launch_app(tmp_path, "--auth", "artist:s3cret", auth=parse_auth("artist:s3cret"))
    try:
        with pytest.raises(Exception):
            Client(demo.local_url, auth=("artist", "wrong"), verbose=False)
        ok = Client(demo.local_url, auth=("artist", "s3cret"), verbose=False)
        png, _ = ok.predict(handle_file(str(DEPTH_SYN)), long_side=256, api_name="/preview")
        assert Image.open(png).size == (256, 192)
    finally:
        demo.close()


def test_upload_size_is_capped(tmp_path):
    studio, demo = launch_app(tmp_path, max_file_size="100kb")
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(Exception, match="(?i)size|large|413"):
            client.predict(handle_file(str(BEACHBALL)), api_name="/preview")  # 2.3 MB
        png, _ = client.predict(handle_file(str(DEPTH_SYN)), long_side=256, api_name="/preview")  # 32 KB
        assert Image.open(png).size == (256, 192)
    finally:
        demo.close()


def test_bad_start_options_exit_2(capsys):
    from fluxdepth_ui.ui.launch import main

    for argv in (["--auth", "nopassword"], ["--model", "not a model"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


def test_houdini_send_script_against_the_running_app(app, tmp_path):
    """examples/houdini/fluxdepth_send.py outside Houdini: $F4 expansion, /generate per frame, results saved."""
    import importlib.util

    import numpy as np

    from conftest import write_exr

    _, demo = app
    spec = importlib.util.spec_from_file_location("fluxdepth_send", "examples/houdini/fluxdepth_send.py")
    send_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(send_mod)
    for f in (3, 4):
        d = np.full((96, 128), 40.0, np.float32)
        d[20:70, 10 * f: 10 * f + 40] = 6.0
        write_exr(tmp_path / f"shot.depth.{f:04d}.exr", {"Z": d})
    rc = send_mod.main(["--depth", str(tmp_path / "shot.depth.$F4.exr"), "--frames", "3-4", "--prompt", "a hall",
                        "--out", str(tmp_path / "flux" / "shot.$F4.png"), "--url", demo.local_url, "--seed", "9",
                        "--steps", "1", "--long-side", "256"])
    assert rc == 0
    for f in (3, 4):
        meta = read_metadata(str(tmp_path / "flux" / f"shot.{f:04d}.png"))
        assert meta.seed == 9 and meta.depth_file == f"shot.depth.{f:04d}.exr"
    with pytest.raises(SystemExit, match="does not exist"):
        send_mod.main(["--depth", str(tmp_path / "nope.$F4.exr"), "--frames", "1", "--prompt", "x",
                       "--out", str(tmp_path / "x.png"), "--url", demo.local_url])


def test_api_page_documents_every_parameter_and_typed_returns(app):
    import httpx

    _, demo = app
    info = httpx.get(demo.local_url + "gradio_api/info").json()["named_endpoints"]
    for name, returns in (("/preview", ["control_map", "stats"]), ("/generate", ["image", "metadata", "also_saved"])):
        endpoint = info[name]
        assert endpoint["description"] and not endpoint["description"].startswith("Args")
        for parameter in endpoint["parameters"]:
            assert parameter["label"] == parameter["parameter_name"]
            assert parameter["python_type"]["description"], f"{name} {parameter['parameter_name']} undocumented"
        assert [r["label"] for r in endpoint["returns"]] == returns
        assert all(r["python_type"]["description"] for r in endpoint["returns"])
    types = [r["python_type"]["type"] for r in info["/generate"]["returns"]]
    assert types == ["filepath", "dict(str, Any)", "list[filepath]"]


def test_python_app_py_names_its_own_flags_not_gradios(tmp_path):
    """Issue 28: `python app.py` printed gradio's "set share=True in launch()", which no artist can act on; it now
    prints its address and the --share flag, and serves the page."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.join(os.path.dirname(__file__), "..")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    proc = subprocess.Popen([sys.executable, os.path.join(root, "app.py"), "--model", "tiny-random", "--port",
                             str(port), "--outputs", str(tmp_path / "out")], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 180
        while not any("FluxDepth Studio on" in line for line in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        lines.append(proc.stdout.readline())
        printed = "".join(lines)
        assert f"http://127.0.0.1:{port}/" in printed and "start with --share" in printed
        assert "share=True" not in printed and "launch()" not in printed
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as page:
            assert page.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_the_launcher_warms_the_model_up_once_it_serves(tmp_path, monkeypatch, capsys):
    """Issue 26: once the page serves, the manager warms up in the background (files read ahead, imports), so the
    first Generate finds that done; on ZeroGPU the model loads at start-up instead."""
    import gradio as gr

    from fluxdepth_ui.pipeline import PipelineManager
    from fluxdepth_ui.ui.launch import main

    events = []

    def fake_launch(self, *args, **kwargs):
        events.append("serving")
        self.local_url, self.share_url = "http://127.0.0.1:7860/", None

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: events.append("blocking"))
    monkeypatch.setattr(PipelineManager, "warm_up", lambda self: events.append("warm-up"))
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    from fluxdepth_ui.ui import sharing

    for name in ("sweep_stale_scratch", "remove_scratch_on_signals", "start_retention"):  # process-wide: not here
        monkeypatch.setattr(sharing, name, lambda *a, **k: None)
    main(["--model", "tiny-random", "--outputs", str(tmp_path / "out")])
    assert events == ["serving", "warm-up", "blocking"]
    assert "FluxDepth Studio on http://127.0.0.1:7860/" in capsys.readouterr().err
