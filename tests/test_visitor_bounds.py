"""Issue 24: per-visitor bounds on memory, disk and time that hold whatever a client skips (heartbeats, cookies).

The handlers and the workspace with real files; the server-level refusals are in test_sharing_server.py.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import DEPTH_SYN, write_exr
from hostile import zip_of
from fluxdepth_ui.depth import DepthSettings
from fluxdepth_ui.errors import FluxDepthError
from fluxdepth_ui.ui import handlers as h
from fluxdepth_ui.ui.sharing import SCRATCH_PREFIX, Workspace, sweep_stale_scratch


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def test_previews_of_sessions_that_never_end_stay_within_the_cache_bound(tmp_path, bound):
    """40 page sessions without a heartbeat (a script calling the preview event) each keep their last preview:
    bounded in bytes over all sessions, least recently used first. Unbounded, this run keeps about 700 MB."""
    bound(cache_mb=64)
    studio = h.Studio(manager=None, outputs=tmp_path / "out", workspace=Workspace(root=tmp_path / "scratch"))
    z = np.linspace(2.0, 40.0, 1100 * 1100, dtype=np.float32).reshape(1100, 1100)
    path = write_exr(tmp_path / "big.exr", {"Z": z})
    before = rss_mb()
    for i in range(40):
        h.run_preview(studio, path, DepthSettings(long_side=256 + 16 * (i % 3)), session=f"visitor{i}")
    kept = list(studio.previews.keys())
    assert 0 < len(kept) <= 4 and kept[-1] == "visitor39"  # the newest stays, so Generate reuses it
    assert studio.previews.currsize <= 32 * 2**20
    assert sum(h.held_bytes(v) for v in studio.previews.values()) <= 32 * 2**20
    assert rss_mb() - before < 250
    # The newest session's map is the one its Generate would use, unchanged.
    assert h.recall_preview(studio, "visitor39", path, DepthSettings(long_side=256 + 16 * (39 % 3))) is not None


def test_a_preview_larger_than_the_whole_cache_is_served_but_not_kept(tmp_path, bound):
    bound(cache_mb=2)
    studio = h.Studio(manager=None, outputs=tmp_path / "out", workspace=Workspace(root=tmp_path / "scratch"))
    result = h.run_preview(studio, str(DEPTH_SYN), DepthSettings(long_side=256), session="one")
    assert result.control.pixels.shape[1] == 256 and len(studio.previews) == 0


def test_scratch_of_many_sessions_is_bounded_least_recently_used_first(tmp_path):
    workspace = Workspace(root=tmp_path / "scratch", max_sessions=8)
    for i in range(100):
        (workspace.folder(f"s{i}", "previews") / "control.png").write_bytes(b"x" * 1000)
    workspace.folder("s95")  # used again: kept over s92..s94
    names = sorted(p.name for p in (tmp_path / "scratch").iterdir())
    assert len(names) == 8 and "s95" in names and "s91" not in names


def test_a_session_keeps_only_its_latest_unpacked_upload(tmp_path):
    workspace = Workspace(root=tmp_path / "scratch")

    def make(n):
        def unpack(folder):
            (folder / "frame.0001.exr").write_bytes(b"x" * n)
            return str(folder)
        return unpack

    first = workspace.staged("a", ("zip1",), make(1000))
    second = workspace.staged("a", ("zip2",), make(2000))
    assert not os.path.exists(first) and os.path.exists(second)
    assert workspace.staged("a", ("zip2",), make(5)) == second  # the same upload is not unpacked twice


def test_a_refused_upload_leaves_no_scratch_files(tmp_path):
    """Issue 24: 1000 members starting with EXR magic bytes passed the zip checks, were refused as frames and stayed
    on disk until the session's heartbeat ended."""
    studio = h.Studio(manager=None, outputs=tmp_path / "out", workspace=Workspace(root=tmp_path / "scratch"))
    fake = b"\x76\x2f\x31\x01" + b"\0" * 20000
    upload = zip_of(tmp_path / "frames.zip", {f"shot.{i:04d}.exr": fake for i in range(1, 41)})
    with pytest.raises(FluxDepthError):
        h.gather_sequence(studio, "visitor", [upload], DepthSettings(), None)
    assert h.sequence_channels(studio, "visitor", [upload]) == [h.AUTO_CHANNEL]  # the app's rescue menu
    left = [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()]
    assert left == []


def test_a_scratch_folder_of_a_dead_server_is_removed_at_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{SCRATCH_PREFIX}{dead.pid}-abc123"
    (stale / "visitor").mkdir(parents=True)
    (stale / "visitor" / "big.bin").write_bytes(b"x" * 10000)
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def456"
    live.mkdir()
    assert sweep_stale_scratch(str(tmp_path)) == [stale.name]
    assert not stale.exists() and live.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_removes_the_whole_scratch_root(tmp_path):
    """How hosts stop a Space: SIGTERM, which skips atexit. Nothing of the server stays in the temp folder."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    proc = subprocess.Popen([sys.executable, "app.py", "--model", "tiny-random", "--port", str(port),
                             "--outputs", str(tmp_path / "outputs")], cwd=Path(__file__).resolve().parents[1],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        roots = list(temp.glob(f"{SCRATCH_PREFIX}*"))
        assert len(roots) == 1
        (roots[0] / "visitor").mkdir()
        (roots[0] / "visitor" / "frame.exr").write_bytes(b"x" * 100000)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM
        assert list(temp.glob(f"{SCRATCH_PREFIX}*")) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_cookieless_heartbeat_cannot_end_a_logged_in_session(tmp_path):
    """gradio runs the unload handler when any client closes /heartbeat/{id}, logged in or not."""
    from conftest import launch_app
    from fluxdepth_ui.ui.launch import parse_auth

    studio, demo = launch_app(tmp_path, "--auth", "artist:s3cret", auth=parse_auth("artist:s3cret"))
    try:
        unload = next(f for f in demo.fns.values() if any(t[1] == "unload" for t in f.targets))
        kept = studio.workspace.folder("victim", "previews")
        unload.fn(SimpleNamespace(username=None, session_hash="victim"))
        assert kept.exists()
        unload.fn(SimpleNamespace(username="artist", session_hash="victim"))  # the session's own end
        assert not kept.exists()
    finally:
        demo.close()


def test_api_previews_without_a_session_do_not_share_a_scratch_folder(tmp_path):
    """All /preview API calls lack a page session; each writes into a folder of its own, removed when it is
    done, so concurrent callers (or a heartbeat for "local") never remove each other's files."""
    workspace = Workspace(root=tmp_path / "scratch")
    with workspace.scratch() as one, workspace.scratch() as two:
        assert one != two and one.parent == two.parent and tmp_path / "scratch" in one.parents
        workspace.end(None)  # what a heartbeat for "local" triggers
        assert one.exists() and two.exists()
    assert not one.exists() and not two.exists()


def test_bad_values_are_refused_in_one_line_before_any_work(tmp_path):
    studio = h.Studio(manager=None, outputs=tmp_path / "out", workspace=Workspace(root=tmp_path / "scratch"))
    for seed in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(FluxDepthError, match="seed must be a whole number"):
            h.shot_from_form({"seed": seed})
    with pytest.raises(FluxDepthError, match="loras must be a list"):
        h.loras_from_form({"loras": 5})
    setup = h.SequenceSetup("", [], None, [], "")
    with pytest.raises(FluxDepthError, match="fps must be a number"):
        h.run_sequence(studio, "s", setup, h.shot_from_form({"prompt": "a hall"}), "bf16", float("nan"))


def test_two_results_with_one_seed_in_one_second_get_different_names(tmp_path):
    studio = h.Studio(manager=None, outputs=tmp_path / "out", workspace=Workspace(root=tmp_path / "scratch"))
    names = {studio.unique_stem("20261204-101500-seed7") for _ in range(3)}
    assert names == {"20261204-101500-seed7", "20261204-101500-seed7-2", "20261204-101500-seed7-3"}


def test_resume_removes_half_written_files_of_a_killed_writer(tmp_path):
    from fluxdepth_ui.atomic import remove_stale_parts

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "control").mkdir()
    stale = tmp_path / f".frame.0003.{dead.pid}-0123abcd.part.png"
    stale_control = tmp_path / "control" / f".frame.0003.{dead.pid}-89abcdef.part.png"
    mine = tmp_path / f".frame.0004.{os.getpid()}-0123abcd.part.png"
    for p in (stale, stale_control, mine):
        p.write_bytes(b"half")
    (tmp_path / "frame.0001.png").write_bytes(b"done")
    assert sorted(remove_stale_parts(str(tmp_path))) == sorted([stale.name, stale_control.name])
    assert mine.exists() and (tmp_path / "frame.0001.png").exists()


def test_file_and_visitor_text_is_shown_as_text_not_markup():
    """Channel names, file names and preset names shown in Markdown components: rendered by a CommonMark renderer
    (the page's is CommonMark too) they come out as the same text, with no element and no link."""
    import html

    from markdown_it import MarkdownIt

    raw = 'Z<img src=x onerror=alert(1)>![x](http://203.0.113.1/p.png) **bold** _a_ [l](javascript:x)'
    rendered = MarkdownIt("commonmark").render(h.md_text(raw))
    assert "<img" not in rendered and "<strong" not in rendered and "<a " not in rendered and "<em" not in rendered
    assert html.unescape(rendered.strip().removeprefix("<p>").removesuffix("</p>")) == raw
    assert "<img" in MarkdownIt("commonmark").render(raw)  # what it would have been
