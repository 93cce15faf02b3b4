"""Camera-move sequences: one range for all frames, split runs identical to one run, resume, gaps, video."""

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from conftest import write_exr
from fluxdepth_ui.cli import main
from fluxdepth_ui.depth import DepthInputError, DepthSettings, NormalizeSettings, prepare_depth
from fluxdepth_ui.sequence import (
    check_frames, compute_stats, find_frames, load_stats, parse_frame_range, settle_seed,
)

OBJECT_Z = [5.0, 8.0, 12.0, 20.0]


def make_sequence(folder, name="shot.{:04d}.exr", start=1, sizes=None):
    """A fixed back wall at Z=50 and a near box that moves right and away, one EXR per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(OBJECT_Z):
        h, w = sizes[i] if sizes else (96, 128)
        d = np.full((h, w), 50.0, np.float32)
        d[30:60, 10 + 20 * i: 40 + 20 * i] = z
        write_exr(folder / name.format(start + i), {"Z": d})
    return folder


def run_cli(capsys, *args):
    rc = main(list(map(str, args)))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("pattern", ["shot.####.exr", "shot.$F4.exr", "shot.%04d.exr", ""])
def test_pattern_forms_find_the_frames(tmp_path, pattern):
    folder = make_sequence(tmp_path / "seq")
    (folder / "notes.txt").write_text("not a frame")
    frames = find_frames(str(folder / pattern) if pattern else str(folder))
    assert [f.number for f in frames] == [1, 2, 3, 4]
    assert all(f.path.endswith(f"shot.{f.number:04d}.exr") for f in frames)


def test_wall_keeps_one_grey_level_across_frames(tmp_path):
    folder = make_sequence(tmp_path / "seq")
    frames = find_frames(str(folder / "shot.####.exr"))
    stats = compute_stats(frames, DepthSettings(), "shot.####.exr")
    per_frame_wall, per_frame_obj, shared_wall, shared_obj = [], [], [], []
    for i, frame in enumerate(frames):
        alone = prepare_depth(frame.path, DepthSettings(normalize=NormalizeSettings(clip=(0, 100))))
        per_frame_wall.append(float(alone.control_map.values[5, 5]))
        per_frame_obj.append(float(alone.control_map.values[45, 20 + 20 * i]))
        shared = prepare_depth(frame.path, DepthSettings(fixed_range=stats.range))
        shared_wall.append(float(shared.control_map.values[5, 5]))
        shared_obj.append(float(shared.control_map.values[45, 20 + 20 * i]))
    # Alone, every frame stretches its own min..max: the wall is always the far end, the object always white.
    # That hides the move: the object looks equally near in every frame.
    assert set(per_frame_wall) == {0.0} and set(per_frame_obj) == {1.0}
    # Shared: the wall is one level in every frame and the object darkens as it moves away.
    assert len(set(shared_wall)) == 1
    assert shared_obj[0] == 1.0 and shared_obj == sorted(shared_obj, reverse=True)
    assert shared_obj[0] - shared_obj[-1] > 0.5


def test_split_runs_match_one_run_and_resume_skips(tmp_path, capsys):
    folder = make_sequence(tmp_path / "seq")
    pattern = folder / "shot.$F4.exr"
    common = ["--prompt", "a corridor", "--model", "tiny-random", "--steps", "2", "--long-side", "256"]
    rc, out, err = run_cli(capsys, "sequence", pattern, *common, "--out", tmp_path / "full", "--seed", "77")
    assert rc == 0, err
    full = json.loads(out)
    assert full["rendered"] == [1, 2, 3, 4] and full["seed"] == 77
    stats_file = tmp_path / "full" / "sequence_stats.json"
    assert load_stats(str(stats_file)).seed == 77

    # A farm: two machines, two frame ranges, the same stats file (range and seed come from it).
    for part in ("1-2", "3-4"):
        rc, out, err = run_cli(capsys, "sequence", pattern, *common, "--out", tmp_path / "split",
                               "--stats", stats_file, "--frames", part)
        assert rc == 0, err
    for n in range(1, 5):
        for name in (f"frame.{n:04d}.png", f"frame.{n:04d}.json", f"control/frame.{n:04d}.png"):
            assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "split" / name).read_bytes(), name
        meta = json.loads((tmp_path / "split" / f"frame.{n:04d}.json").read_text())
        assert meta["seed"] == 77 and meta["depth_file"].endswith(f"{n:04d}.exr")
        assert meta["depth_range"] == full["range"] and meta["shot_key"]

    # Resume: the same command again renders nothing; a changed prompt renders everything.
    before = os.stat(tmp_path / "full" / "frame.0002.png").st_mtime_ns
    rc, out, _ = run_cli(capsys, "sequence", pattern, *common, "--out", tmp_path / "full", "--seed", "77")
    again = json.loads(out)
    assert again["rendered"] == [] and again["skipped"] == [1, 2, 3, 4]
    assert os.stat(tmp_path / "full" / "frame.0002.png").st_mtime_ns == before
    rc, out, _ = run_cli(capsys, "sequence", pattern, "--prompt", "a cave", *common[2:], "--out", tmp_path / "full",
                         "--seed", "77")
    assert json.loads(out)["rendered"] == [1, 2, 3, 4]


def test_single_frame_rerender_with_sequence_stats(tmp_path, capsys):
    folder = make_sequence(tmp_path / "seq")
    common = ["--prompt", "a corridor", "--model", "tiny-random", "--steps", "2", "--long-side", "256"]
    run_cli(capsys, "sequence", folder / "shot.####.exr", *common, "--out", tmp_path / "full", "--seed", "5")
    stats = tmp_path / "full" / "sequence_stats.json"
    rc, out, err = run_cli(capsys, "generate", folder / "shot.0003.exr", *common, "--stats", stats,
                           "--out", tmp_path / "one.png")  # the seed comes from the stats file
    assert rc == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")),
                          np.asarray(Image.open(tmp_path / "full" / "frame.0003.png")))
    rc, out, err = run_cli(capsys, "preview", folder / "shot.0003.exr", "--stats", stats, "--long-side", "256",
                           "--out", tmp_path / "p.png")
    assert rc == 0 and json.loads(out)["range"] == load_stats(str(stats)).range.to_dict()
    control = np.asarray(Image.open(tmp_path / "full" / "control" / "frame.0003.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png")), control)


def test_gaps_and_mixed_resolutions_reported_before_rendering(tmp_path, capsys):
    folder = make_sequence(tmp_path / "gap")
    (folder / "shot.0003.exr").unlink()
    rc, _, err = run_cli(capsys, "sequence", folder / "shot.####.exr", "--prompt", "x", "--model", "tiny-random",
                         "--out", tmp_path / "o1")
    assert rc == 2 and err.strip() == "error: missing frames: 3 (1 of 4); render them or pick frames without " \
                                      "gaps (the CLI's --frames A-B)"
    assert not list((tmp_path / "o1").glob("frame.*.png"))
    mixed = make_sequence(tmp_path / "mixed", sizes=[(96, 128), (96, 128), (120, 160), (96, 128)])
    with pytest.raises(DepthInputError, match=r"mixed resolutions.*128x96.*160x120"):
        check_frames(find_frames(str(mixed)))
    assert parse_frame_range("41-80") == (41, 80)
    with pytest.raises(DepthInputError):
        parse_frame_range("80-41")


def test_video_of_results_and_control_maps(tmp_path, capsys):
    folder = make_sequence(tmp_path / "seq")
    rc, out, err = run_cli(capsys, "sequence", folder, "--prompt", "x", "--model", "tiny-random", "--steps", "1",
                           "--long-side", "256", "--out", tmp_path / "o", "--video", tmp_path / "o" / "move.mp4",
                           "--fps", "8")
    assert rc == 0, err
    videos = json.loads(out)["videos"]
    assert videos == [str(tmp_path / "o" / "move.mp4"), str(tmp_path / "o" / "move_control.mp4")]
    for path in videos:
        frames = iio.imread(path, plugin="FFMPEG")
        assert frames.shape[0] == 4 and frames.shape[1:3] == (192, 256)
    from fluxdepth_ui.sequence import write_video

    gif = write_video(sorted(map(str, (tmp_path / "o" / "control").glob("*.png"))), str(tmp_path / "c.gif"), 4)
    assert iio.imread(gif).shape[0] == 4


def test_shot_seed_asked_for_wins_then_the_stats_file_then_a_draw(tmp_path):
    frames = find_frames(str(make_sequence(tmp_path / "seq") / "shot.####.exr"))
    stored = compute_stats(frames, DepthSettings(), "shot.####.exr", seed=7)
    assert settle_seed(stored).seed == 7
    assert settle_seed(stored, 9).seed == 9 and settle_seed(stored, 9).range == stored.range
    drawn = settle_seed(compute_stats(frames, DepthSettings(), "shot.####.exr"))
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed <= 2**32 - 1


def test_a_zip_of_frames_renders_like_the_folder_and_resumes(tmp_path, capsys):
    """The app takes a zip of frames; so does `fluxdepth sequence` (it said "no frame number placeholder")."""
    import zipfile

    folder = make_sequence(tmp_path / "seq")
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"renders/{path.name}")
    common = ["--prompt", "a corridor", "--model", "tiny-random", "--steps", "1", "--long-side", "256", "--seed", "5"]
    rc, out, err = run_cli(capsys, "sequence", folder, *common, "--out", tmp_path / "from-folder")
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "sequence", archive, *common, "--out", tmp_path / "from-zip")
    assert rc == 0, err
    assert json.loads(out)["rendered"] == [1, 2, 3, 4]
    for n in range(1, 5):
        for name in (f"frame.{n:04d}.png", f"control/frame.{n:04d}.png"):
            assert (tmp_path / "from-folder" / name).read_bytes() == (tmp_path / "from-zip" / name).read_bytes()
    rc, out, err = run_cli(capsys, "sequence", archive, *common, "--out", tmp_path / "from-zip")
    assert rc == 0 and json.loads(out)["skipped"] == [1, 2, 3, 4]
