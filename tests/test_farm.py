"""Sequences on Ray (2 local CPU workers, tiny-random): byte-identical to one process, resume after the driver is
killed, a worker killed mid-frame retried, a frame that fails twice reported while the rest finish."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import write_exr
from fluxdepth_ui.cli import main

COMMON = ["--prompt", "a hall", "--model", "tiny-random", "--steps", "1", "--seed", "4", "--long-side", "256"]


def make_frames(folder, count=6):
    """A back wall and a box that moves right and away, one EXR per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        d = np.full((96, 128), 50.0, np.float32)
        d[30:60, 10 + 12 * i: 40 + 12 * i] = 5.0 + 2 * i
        write_exr(folder / f"shot.{i + 1:04d}.exr", {"Z": d})
    return folder / "shot.####.exr"


def files(folder):
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                   and not p.name.endswith(".died-once"))
    return {n: (folder / n).read_bytes() for n in names}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray cluster for the module (2 CPUs): the in-process runs find it initialized and keep it, the
    CLI processes join it with --ray-address, so no test pays for starting Ray again."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    pattern = make_frames(root / "frames")
    assert main(["sequence", str(pattern), *COMMON, "--out", str(root / "out")]) == 0
    return pattern, files(root / "out")


def test_two_workers_write_the_same_bytes_as_one_process(single, tmp_path, capsys):
    pattern, expected = single
    capsys.readouterr()
    assert main(["sequence", str(pattern), *COMMON, "--workers", "2", "--out", str(tmp_path / "out")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rendered"] == [1, 2, 3, 4, 5, 6] and info["workers"] == 2 and info["failed"] == {}
    assert files(tmp_path / "out") == expected


def test_a_worker_killed_mid_frame_is_retried_elsewhere(single, tmp_path):
    from fluxdepth_ui.depth import DepthSettings
    from fluxdepth_ui.pipeline import PipelineManager
    from fluxdepth_ui.sequence import compute_stats, find_frames, render_sequence, settle_seed
    from fluxdepth_ui.settings import GenerationSettings, PipelineSpec

    pattern, expected = single
    frames = find_frames(str(pattern))
    depth = DepthSettings(long_side=256)
    stats = settle_seed(compute_stats(frames, depth, str(pattern), seed=4), 4)
    out = tmp_path / "out"
    seen = []
    report = render_sequence(PipelineManager.from_spec(PipelineSpec(model="tiny-random")), frames, stats, depth,
                             GenerationSettings("a hall", seed=4, steps=1), str(out), workers=2,
                             worker_options={"fail_once_on": 3},
                             on_frame=lambda i, n, frame, status: seen.append((i, n, status)))
    # What the retry guarantees, whichever worker takes which frame: frame 3 is tried again once (its worker died
    # mid-frame), every frame is rendered once in the end, nothing failed, progress counted each frame once.
    assert report.retried == [3] and report.rendered == [1, 2, 3, 4, 5, 6] and not report.failed
    assert sorted(i for i, _, _ in seen) == [1, 2, 3, 4, 5, 6] and {s for _, _, s in seen} == {"rendered"}
    got = files(out)
    assert {n: got[n] for n in got if not n.endswith("stats.json")} == \
        {n: expected[n] for n in expected if not n.endswith("stats.json")}


def test_a_frame_that_fails_twice_is_reported_and_the_rest_finish(single, tmp_path, capsys, cluster):
    pattern, expected = single
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in pattern.parent.glob("*.exr"):
        (frames / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    stats = out / "sequence_stats.json"
    assert main(["sequence", str(frames / "shot.####.exr"), *COMMON, "--out", str(out), "--stats", str(stats),
                 "--stats-only"]) == 0
    capsys.readouterr()
    # Frame 4 goes bad after the range was computed (a half-copied file on a farm share): it cannot be rendered.
    bad = frames / "shot.0004.exr"
    bad.write_bytes(bad.read_bytes()[:600])
    run = subprocess.run([sys.executable, "-m", "fluxdepth_ui.cli", "sequence", str(frames / "shot.####.exr"),
                          *COMMON, "--out", str(out), "--stats", str(stats), "--workers", "2", "--frames", "3-6",
                          "--ray-address", cluster],
                         capture_output=True, text=True, timeout=300)
    info = json.loads(run.stdout)
    assert run.returncode == 1 and list(info["failed"]) == ["4"] and info["rendered"] == [3, 5, 6]
    assert "error: frame(s) 4 failed twice" in run.stderr and "Traceback" not in run.stderr
    assert "corrupt or truncated" in info["failed"]["4"]


def test_resume_after_the_driver_is_killed(single, tmp_path, cluster):
    pattern, expected = single
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fluxdepth_ui.cli", "sequence", str(pattern), *COMMON, "--workers", "2",
               "--out", str(out), "--ray-address", cluster]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("frame.*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver: Ray ends the workers of its job
    proc.wait()
    done = len(list(out.glob("frame.*.json")))
    assert done >= 2
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    info = json.loads(again.stdout)
    assert len(info["skipped"]) >= min(done, 6) - 1 and sorted(info["skipped"] + info["rendered"]) == [1, 2, 3, 4, 5, 6]
    assert files(out) == expected


TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "examples", "deadline", "template.yaml")
# The openjd CLI installed beside this interpreter (the test extra), whether or not its venv is on PATH.
OPENJD = os.path.join(os.path.dirname(sys.executable), "openjd")


def test_openjd_bundle_checks_and_renders_two_chunks_like_one_process(tmp_path):
    """The Deadline Cloud job bundle: `openjd check` passes, and `openjd run` (Stats, then 2 Render chunks) writes
    the frames a single `fluxdepth sequence` run writes, byte for byte."""
    check = subprocess.run([OPENJD, "check", TEMPLATE], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "passes validation" in check.stdout, check.stdout + check.stderr
    pattern = make_frames(tmp_path / "frames", count=5)
    params = {"DepthPattern": str(pattern), "OutputDir": str(tmp_path / "farm"), "Prompt": "a hall",
              "FirstFrame": 1, "LastFrame": 5, "ChunkSize": 3, "Seed": 4, "Steps": 1, "LongSide": 256,
              "Variant": "bf16", "Model": "tiny-random", "VramBudget": "auto",
              "FluxdepthCommand": f"{sys.executable} -m fluxdepth_ui.cli"}
    run = subprocess.run([OPENJD, "run", TEMPLATE, "--step", "Render", "--run-dependencies",
                          "--job-param", json.dumps(params)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # Two Render tasks, one per chunk, each printing the CLI's JSON line with its frames.
    assert '"frames": [1, 2, 3]' in run.stdout and '"frames": [4, 5]' in run.stdout, run.stdout[-3000:]
    assert main(["sequence", str(pattern), *COMMON, "--guidance", "10", "--out", str(tmp_path / "one")]) == 0
    assert files(tmp_path / "farm") == files(tmp_path / "one")


def test_houdini_pdg_commands_render_like_one_process(tmp_path):
    """examples/houdini/fluxdepth_pdg.py: the stats item then the chunk items, run as a scheduler would run them."""
    import shlex

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "houdini"))
    import fluxdepth_pdg

    assert fluxdepth_pdg.chunk_ranges(1001, 1010, 4) == [(1001, 1004), (1005, 1008), (1009, 1010)]
    pattern = make_frames(tmp_path / "frames", count=4)
    stats, chunks = fluxdepth_pdg.commands(str(pattern), 1, 4, str(tmp_path / "pdg"), "a hall", chunk=2, seed=4,
                                           fluxdepth=f"{sys.executable} -m fluxdepth_ui.cli",
                                           extra=["--model", "tiny-random", "--steps", "1", "--long-side", "256"])
    assert len(chunks) == 2
    for line in [stats, *chunks]:
        done = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert main(["sequence", str(pattern), *COMMON, "--out", str(tmp_path / "one")]) == 0
    assert files(tmp_path / "pdg") == files(tmp_path / "one")


def test_a_signal_during_a_long_frame_stops_the_driver_and_frees_its_workers(single, tmp_path):
    """The driver waits for frames in one-second slices, so a Python signal handler runs while a frame still renders
    (pytest-timeout's SIGALRM, a server's SIGTERM; here SIGUSR1: one blocking ray.wait held such a handler off until
    the frame ended, 600 s; Ray answers Ctrl-C itself), and its workers are ended on the way out: the cluster's CPUs (a farm's GPUs)
    are free for the next job at once, not when the last handle is let go."""
    import threading

    import ray

    from fluxdepth_ui.depth import DepthSettings
    from fluxdepth_ui.pipeline import PipelineManager
    from fluxdepth_ui.sequence import compute_stats, find_frames, render_sequence, settle_seed
    from fluxdepth_ui.settings import GenerationSettings, PipelineSpec

    class Stop(Exception):
        pass

    def stop(signum, frame):
        raise Stop

    pattern, _ = single
    frames = find_frames(str(pattern))[:2]
    depth = DepthSettings(long_side=256)
    stats = settle_seed(compute_stats(frames, depth, str(pattern), seed=4), 4)
    sent = []

    def signal_after_the_first(i, n, frame, status):  # frame 2 runs on the other worker: it takes 10 minutes
        sent.append(time.monotonic())
        threading.Timer(1.0, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)).start()

    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        with pytest.raises(Exception) as raised:
            render_sequence(PipelineManager.from_spec(PipelineSpec(model="tiny-random")), frames, stats, depth,
                            GenerationSettings("a hall", seed=4, steps=1), str(tmp_path / "out"), workers=2,
                            worker_options={"stall_on": 2}, on_frame=signal_after_the_first)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    # Ray's wait runs the handler inside its own call and then reports a SystemError chained to what it raised.
    assert isinstance(raised.value, Stop) or isinstance(raised.value.__context__, Stop), repr(raised.value)
    assert time.monotonic() - sent[0] < 120  # not when frame 2 ends (600 s)
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.2)
    assert not (tmp_path / "out" / "frame.0002.png").exists()
