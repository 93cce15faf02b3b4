"""Hostile and broken inputs below the server: readers, zips, CLI contract, atomic files, resume, OOM, guards."""

import gc
import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BEACHBALL, DEPTH_SYN, write_exr
from hostile import exr_with_data_window, png16, png_claiming
from fluxdepth_ui import limits
from fluxdepth_ui.cli import main
from fluxdepth_ui.depth import DepthInputError, load_depth
from fluxdepth_ui.errors import FluxDepthError, display_name


def run_cli(capsys, *argv, timeout=60):
    """The CLI in a thread, so a hang fails the test instead of blocking the suite."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("rc", main(list(argv))), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"fluxdepth {' '.join(argv)} hung"
    err = capsys.readouterr().err.strip().splitlines()
    return box["rc"], err


def assert_cli_refused(capsys, fragment, *argv):
    rc, err = run_cli(capsys, *argv)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    return err[0]


# --- special files, sizes -----------------------------------------------------------------------------------------

def test_fifo_and_devices_are_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "x.exr"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(DepthInputError, match="not a regular file"):
        load_depth(str(fifo))
    assert time.perf_counter() - t0 < 1
    assert_cli_refused(capsys, "not a regular file", "preview", str(fifo), "--out", str(tmp_path / "o.png"))
    assert_cli_refused(capsys, "not a regular file", "preview", "/dev/zero", "--out", str(tmp_path / "o.png"))
    assert_cli_refused(capsys, "is a folder", "preview", str(tmp_path), "--out", str(tmp_path / "o.png"))


def test_data_window_bomb_refused_from_the_header(tmp_path):
    path = exr_with_data_window(tmp_path / "bomb.exr", 30000, 30000)
    t0 = time.perf_counter()
    with pytest.raises(DepthInputError, match="data window of part 0.*megapixel limit"):
        load_depth(path)
    assert time.perf_counter() - t0 < 1


def test_all_parts_and_channels_count_toward_the_decoded_limit(tmp_path, bound):
    z = np.full((512, 512), 4.0, np.float32)
    path = write_exr(tmp_path / "aovs.exr", {f"aov{i}.R": z for i in range(8)} | {"Z": z})
    bound(decoded_mb=8)  # 9 channels x 1 MB as float32 = 9 MB
    with pytest.raises(DepthInputError, match="would decode to 9 MB.*8 MB limit"):
        load_depth(path)
    bound(decoded_mb=16)
    assert load_depth(path).channel == "Z"


def test_many_page_tiff_reads_its_first_page_without_walking_the_others(tmp_path, bound):
    """Issue 24: a TIFF of thousands of tiny pages held a preview slot for minutes (the page list is parsed in time
    that grows with the square of the page count). Only the first page is ever read."""
    import tifffile

    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for i in range(6000):
            tif.write(np.full((64, 64), 100 + i, np.uint16), contiguous=False)
    bound(decoded_mb=1)
    t0 = time.perf_counter()
    depth = load_depth(str(path))
    assert time.perf_counter() - t0 < 5  # the bound; walking all 6000 pages takes seconds more
    assert (depth.width, depth.height) == (64, 64) and np.all(depth.values == 100)


def test_tiff_volume_counts_toward_the_decoded_limit(tmp_path, bound):
    import tifffile

    path = tmp_path / "planes.tif"
    tifffile.imwrite(path, np.ones((40, 256, 256), np.float32), planarconfig="separate", photometric="minisblack")  # one page, 10 MB
    bound(decoded_mb=4)
    with pytest.raises(DepthInputError, match="would decode to 10 MB"):
        load_depth(str(path))


def deep_exr(path, h, w, samples_per_pixel):
    import OpenEXR

    one = np.linspace(5, 50, samples_per_pixel, dtype=np.float32)
    pixels = np.empty((h, w), dtype=object)
    for y in range(h):
        for x in range(w):
            pixels[y, x] = one
    OpenEXR.File({"type": OpenEXR.deepscanline, "compression": OpenEXR.ZIPS_COMPRESSION}, {"Z": pixels}).write(
        str(path))
    return str(path)


def test_deep_sample_bomb_is_refused_within_the_memory_and_time_bounds(tmp_path, bound):
    """Issue 24: a deep EXR's header does not say how many samples it holds (400x400 x 2000 samples, 8 MB on disk,
    took 2.5 GB under a 64 MB limit). The decode runs in a child capped near the limit."""
    import resource

    path = deep_exr(tmp_path / "bomb.exr", 80, 80, 4000)  # 102 MB of samples, about 1 MB on disk
    assert os.path.getsize(path) < 3 * 2**20
    bound(decoded_mb=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(DepthInputError, match=r"^bomb\.exr.*deep samples.*1 MB"):
        load_depth(path)
    assert time.perf_counter() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # not decoded in this process
    bound(decoded_mb=2048)
    assert load_depth(path).values.min() == pytest.approx(5.0)  # the same file under a roomy limit reads


def test_deep_samples_count_toward_the_decoded_limit(tmp_path, bound):
    path = deep_exr(tmp_path / "many.exr", 64, 64, 300)  # 4.7 MB of samples: decodes under the cap, then counted
    bound(decoded_mb=2)
    with pytest.raises(DepthInputError, match="5 MB of deep samples in one channel, above the 2 MB limit"):
        load_depth(path)
    bound(decoded_mb=8)
    assert load_depth(path).values.max() == pytest.approx(5.0)


def test_png_header_bomb_and_pillow_limit_untouched(tmp_path):
    path = png_claiming(tmp_path / "bomb.png", 12000, 12000)
    with pytest.raises(DepthInputError, match="megapixel limit"):
        load_depth(path)
    load_depth(str(DEPTH_SYN))
    assert Image.MAX_IMAGE_PIXELS is not None  # the process keeps Pillow's own bomb guard


def test_init_image_checks(tmp_path, capsys):
    text = tmp_path / "plate.png"
    text.write_text("not an image")
    big = png_claiming(tmp_path / "big.png", 9000, 9000)
    common = ["generate", str(DEPTH_SYN), "--prompt", "x", "--model", "tiny-random", "--out", str(tmp_path / "o.png")]
    assert_cli_refused(capsys, "cannot be read as an image", *common, "--init-image", str(text))
    assert_cli_refused(capsys, "megapixel limit", *common, "--init-image", big)
    assert not (tmp_path / "o.png").exists()


def test_messages_name_files_without_folders_or_control_characters(tmp_path):
    odd = tmp_path / "bad\nname.exr"
    odd.write_bytes(BEACHBALL.read_bytes()[:3000])
    with pytest.raises(DepthInputError) as err:
        load_depth(str(odd))
    text = str(err.value)
    assert "\n" not in text and str(tmp_path) not in text and "bad?name.exr" in text
    assert display_name("/srv/a/" + "x" * 300).endswith("...") and len(display_name("/" + "y" * 300)) == 80
    assert str(FluxDepthError("line one\nline two\tend")) == "line one line two end"


# --- CLI contract ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("out, fragment", [
    ("{tmp}", "is a folder"), ("{tmp}/noext", "must end in .png"), ("{tmp}/o.jpg", "must end in .png"),
    ("/dev/full", "must end in .png"), ("{tmp}/missing/o.png", "does not exist"),
])
def test_preview_out_checked_before_work(tmp_path, capsys, out, fragment):
    assert_cli_refused(capsys, fragment, "preview", str(DEPTH_SYN), "--out", out.format(tmp=tmp_path))


def test_generate_out_folder_refused_before_generating(tmp_path, capsys):
    t0 = time.perf_counter()
    assert_cli_refused(capsys, "is a folder", "generate", str(DEPTH_SYN), "--prompt", "x", "--model", "tiny-random",
                       "--out", str(tmp_path))
    assert time.perf_counter() - t0 < 5  # no model was loaded
    os.mkfifo(tmp_path / "pipe.png")
    assert_cli_refused(capsys, "not a regular file", "generate", str(DEPTH_SYN), "--prompt", "x", "--model",
                       "tiny-random", "--out", str(tmp_path / "pipe.png"))


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2, 3]", "not a FluxDepth sequence stats file"), ("{\"format\": 1, \"range\": []}", "not a FluxDepth"),
    ("{\"format\": 1, \"range\": {\"mode\": 3}}", "damaged"), ("{broken", "cannot be read"),
])
def test_bad_stats_files(tmp_path, capsys, content, fragment):
    stats = tmp_path / "stats.json"
    stats.write_text(content)
    assert_cli_refused(capsys, fragment, "preview", str(DEPTH_SYN), "--stats", str(stats), "--out",
                       str(tmp_path / "o.png"))


def test_sequence_video_and_out_checked_before_work(tmp_path, capsys):
    frames = tmp_path / "f"
    frames.mkdir()
    for i in (1, 2):
        png16(frames / f"d.{i:04d}.png")
    common = ["sequence", str(frames / "d.####.png"), "--prompt", "x", "--model", "tiny-random"]
    assert_cli_refused(capsys, "must end in", *common, "--out", str(tmp_path / "o"), "--video", str(tmp_path / "v.txt"))
    (tmp_path / "file").write_text("x")
    assert_cli_refused(capsys, "not a folder", *common, "--out", str(tmp_path / "file"))


# --- atomic files, resume -------------------------------------------------------------------------------------------

def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    from fluxdepth_ui.atomic import atomic_path, write_text

    target = tmp_path / "a.json"
    write_text(str(target), "old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_resume_rerenders_broken_frames_and_video_works(tmp_path, capsys):
    frames = tmp_path / "f"
    frames.mkdir()
    for i in (1, 2, 3):
        png16(frames / f"d.{i:04d}.png")
    out = tmp_path / "out"
    cmd = ["sequence", str(frames / "d.####.png"), "--prompt", "x", "--model", "tiny-random", "--steps", "1",
           "--long-side", "256", "--seed", "4", "--out", str(out)]
    rc, _ = run_cli(capsys, *cmd, timeout=300)
    assert rc == 0
    good = np.asarray(Image.open(out / "frame.0002.png"))
    (out / "frame.0001.png").write_bytes((out / "frame.0001.png").read_bytes()[:100])  # truncated
    (out / "control" / "frame.0002.png").write_bytes(b"")  # empty
    rc, _ = run_cli(capsys, *cmd, "--video", str(tmp_path / "v.gif"), timeout=300)
    assert rc == 0
    import json

    assert Image.open(out / "frame.0001.png").size == (256, 192)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "frame.0002.png")), good)  # re-rendered, same pixels
    assert (tmp_path / "v.gif").stat().st_size > 0
    sidecar = json.loads((out / "frame.0001.json").read_text())
    assert sidecar["depth_file"] == "d.0001.png" and str(tmp_path) not in json.dumps(sidecar)
    stats = json.loads((out / "sequence_stats.json").read_text())
    assert "/" not in stats["pattern"]


# --- OOM ------------------------------------------------------------------------------------------------------------

def test_oom_frees_the_failed_steps_tensors_before_reporting(tmp_path):
    import torch

    from fluxdepth_ui.depth import DepthSettings, prepare_depth
    from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, OutOfMemoryError, PipelineManager

    manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path))
    manager.load()
    held = []

    def allocate_then_fail(*args, **kwargs):
        activations = torch.empty(64, 1024, 1024)  # 256 MB that the failed step was holding
        held.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    manager._pipe.transformer.forward = allocate_then_fail
    depth = prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))
    try:
        manager.generate(depth.control, GenerationSettings("x", seed=1, steps=1))
    except OutOfMemoryError as exc:
        assert "try qint8 or qint4" in str(exc)
        assert exc.__context__ is None and exc.__cause__ is None  # nothing keeps the failed call's frames alive
        assert held and held[0]() is None, "the failed step's tensor is still alive while the error is handled"
    else:
        pytest.fail("no OutOfMemoryError")


def test_oom_while_loading_is_one_line_advice(tmp_path):
    import torch

    from fluxdepth_ui.pipeline import ModelSource, OutOfMemoryError, PipelineManager

    def loader(variant, progress):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")

    manager = PipelineManager(ModelSource("tiny-random"), loader=loader, cache_root=str(tmp_path))
    with pytest.raises(OutOfMemoryError, match="out of memory while loading.*qint4"):
        manager.load()
    assert not manager.loaded
    gc.collect()


# --- guards ---------------------------------------------------------------------------------------------------------

def test_login_throttle_grows_and_resets():
    from fluxdepth_ui.ui.sharing import LoginThrottle

    now = [0.0]
    throttle = LoginThrottle(free=3, most=8.0, clock=lambda: now[0])
    for _ in range(3):
        throttle.record("a", ok=False)
    assert throttle.wait_s("a") == 0
    waits = []
    for _ in range(5):
        throttle.record("a", ok=False)
        waits.append(throttle.wait_s("a"))
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0] and throttle.wait_s("b") == 0
    now[0] += 8.0
    throttle.record("a", ok=True)
    assert throttle.wait_s("a") == 0


def test_retention_sweeps_only_old_session_folders(tmp_path):
    from fluxdepth_ui.ui.sharing import DAY, sweep_outputs

    old, new = tmp_path / "old-session", tmp_path / "new-session"
    for folder in (old, new):
        folder.mkdir()
        (folder / "a.png").write_bytes(b"x")
    past = time.time() - 9 * DAY
    os.utime(old / "a.png", (past, past))
    os.utime(old, (past, past))
    assert sweep_outputs(tmp_path, None) == []
    assert sweep_outputs(tmp_path, 7) == ["old-session"]
    assert not old.exists() and new.exists()


def test_policy_and_limits_from_flags_and_env():
    from fluxdepth_ui.ui.sharing import make_policy

    local = make_policy(False, "bf16", ["bf16", "qint8", "qint4"], None, None)
    assert local.tiers == ("bf16", "qint8", "qint4") and local.keep_days is None and local.save_presets
    shared = make_policy(True, "qint8", ["bf16", "qint8", "qint4"], None, None)
    assert shared.tiers == ("qint8",) and shared.keep_days == 7.0 and not shared.save_presets
    assert make_policy(True, "qint8", ["bf16", "qint8"], "all", 0).tiers == ("bf16", "qint8")
    with pytest.raises(FluxDepthError, match="cannot run"):
        make_policy(False, "bf16", ["bf16"], "bf16,fp8", None)
    env = limits.from_env(environ={"FLUXDEPTH_MAX_FRAMES": "12"})
    assert env.frames == 12 and env.megapixels == limits.Limits().megapixels
    with pytest.raises(FluxDepthError, match="FLUXDEPTH_MAX_FRAMES"):
        limits.from_env(environ={"FLUXDEPTH_MAX_FRAMES": "many"})
    with pytest.raises(FluxDepthError, match="--max-frames"):
        limits.Limits(frames=0)


def test_unexpected_errors_show_only_an_id(caplog):
    import gradio as gr

    from fluxdepth_ui.ui.sharing import user_facing

    @user_facing
    def broken():
        raise KeyError("/srv/secret/outputs/abc/x.png")

    @user_facing
    def refused():
        raise DepthInputError("no depth channel in x.exr\nsecond line")

    with pytest.raises(gr.Error) as err:
        broken()
    assert err.value.message.startswith("internal error (id ") and "/srv" not in err.value.message
    ident = err.value.message.split("id ")[1].split(")")[0]
    assert any(ident in r.getMessage() for r in caplog.records)
    with pytest.raises(gr.Error) as err:
        refused()
    assert err.value.message == "no depth channel in x.exr second line"


def test_a_streaming_handler_shows_what_it_sent_then_one_line_on_failure(caplog):
    """The live preview streams (a generator handler): values already sent stay sent; a failure after them is one
    line in the status, not a traceback or a server path, as for any handler."""
    from fluxdepth_ui.ui.sharing import as_toast

    @as_toast(3, status=2)
    def streams(fail):
        yield "preview 1", None, "step 1"
        if fail == "depth":
            raise DepthInputError("no depth channel in x.exr")
        if fail == "bug":
            raise KeyError("/srv/secret/x.png")
        yield "final", "files", "done"

    assert [v[2] for v in streams(None)] == ["step 1", "done"]
    sent = list(streams("depth"))
    assert sent[0][0] == "preview 1" and sent[1][2] == "⚠ no depth channel in x.exr"
    sent = list(streams("bug"))
    assert sent[1][2].startswith("⚠ internal error") and "/srv" not in sent[1][2]


def test_preset_names_are_bounded(tmp_path):
    from fluxdepth_ui.presets import PresetError, save_preset

    with pytest.raises(PresetError, match="at most 80"):
        save_preset("n" * 300, {}, {}, folder=tmp_path)
    assert save_preset("ok", {}, {}, folder=tmp_path).exists()


def test_atomic_files_get_ordinary_permissions(tmp_path):
    from fluxdepth_ui.atomic import write_text

    old = os.umask(0o022)
    try:
        write_text(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
