"""The app's handlers without a browser or a server: one settings record in, files and messages out."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BEACHBALL, DEPTH_SYN
from fluxdepth_ui.depth import DepthInputError, DepthMap, DepthSettings
from fluxdepth_ui.errors import FluxDepthError
from fluxdepth_ui.pipeline import ModelSource, PipelineManager, read_metadata
from fluxdepth_ui.ui import handlers as h
from fluxdepth_ui.ui.sharing import make_policy


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("handlers")
    manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(root / "cache"))
    policy = make_policy(False, "bf16", ["bf16", "qint8", "qint4"], None, None)
    return h.Studio(manager=manager, outputs=root / "outputs", policy=policy)


def form(**kw):
    record = dict(depth_file=str(DEPTH_SYN), channel="auto", mode="auto", invert="auto", clip_low=0.5,
                  clip_high=99.5, near=None, far=None, long_side=256, edges="snap", prompt="a hall", variant="bf16",
                  steps=1, guidance=10.0, seed=7, randomize=False, init_image=None, strength=0.6)
    record.update(kw)
    return record


def test_generate_from_a_settings_record(studio):
    outcome = h.generate_from_form(studio, "s1", form())
    assert outcome.metadata["seed"] == 7 and "seed **7**" in outcome.message
    assert Image.open(outcome.png).size == (256, 192) and read_metadata(outcome.png).prompt == "a hall"
    assert Image.open(outcome.control_png).mode.startswith("I;16")  # the same 16-bit control PNG as the CLI
    entry = next(e for e in h.list_history(studio, None)[0] if e["png"] == outcome.png)  # in History
    assert entry["settings"]["long_side"] == 256 and entry["caption"].startswith("seed 7")
    drawn = [h.generate_from_form(studio, "s1", form(randomize=True, seed=7)).metadata["seed"] for _ in range(2)]
    assert drawn[0] != drawn[1]  # "Random seed" draws a new one each time (2**-32 odds of a repeat)


@pytest.mark.parametrize("field, value, fragment", [
    ("long_side", "big", "long side must be a number"), ("clip_low", float("nan"), "far clip must be a number"),
    ("mode", "nope", "unknown mode"), ("steps", 0, "steps 0 is out of range"), ("seed", "x", "seed must be"),
    ("variant", "fp8", "offers only"),
])
def test_bad_records_are_one_line_refusals(studio, field, value, fragment):
    with pytest.raises(FluxDepthError, match=fragment) as err:
        h.generate_from_form(studio, "s2", form(**{field: value}))
    assert "\n" not in str(err.value)


def test_generate_feeds_the_exact_map_the_preview_showed(studio, monkeypatch):
    settings = h.depth_from_form(form(long_side=512))
    shown = h.run_preview(studio, str(BEACHBALL), settings, session="s3")
    calls = []
    real = h.prepare_loaded
    monkeypatch.setattr(h, "prepare_loaded", lambda *a, **k: calls.append(1) or real(*a, **k))
    seen = []
    real_generate = studio.manager.generate
    monkeypatch.setattr(studio.manager, "generate",
                        lambda control, *a, **k: seen.append(control) or real_generate(control, *a, **k))
    h.generate_from_form(studio, "s3", form(depth_file=str(BEACHBALL), long_side=512))
    assert calls == [] and seen[0] is shown.control  # no second normalization


def test_photo_depth_keeps_its_polarity(studio, tmp_path):
    class Estimator:
        def estimate(self, photo):
            values = np.tile(np.linspace(0.0, 5.0, 128, dtype=np.float32), (96, 1))
            return DepthMap(values=values, kind="image", channel="estimated", channels=("estimated",),
                            source_format="photo", sample_type="float32", name="photo", near_is_bright=True)

    studio.estimator = Estimator()
    path = h.estimate_photo_depth(studio, "s4", Image.new("RGB", (128, 96)))
    preview = h.run_preview(studio, path, h.depth_from_form(form(long_side=256)))
    assert preview.depth.near_is_bright and not preview.control_map.inverted
    assert preview.control_map.values[:, -1].min() == pytest.approx(1.0)  # the bright end stays near
    with pytest.raises(DepthInputError, match="add a photo"):
        h.estimate_photo_depth(studio, "s4", None)


def test_a_batch_gives_one_image_per_seed(studio, monkeypatch):
    calls = []
    real = h.prepare_loaded
    monkeypatch.setattr(h, "prepare_loaded", lambda *a, **k: calls.append(1) or real(*a, **k))
    fixed = h.generate_batch_from_form(studio, "s5", form(batch=3, seed=40))
    assert len(calls) == 1  # the depth map is normalized once for the whole batch
    assert [o.metadata["seed"] for o in fixed] == [40, 41, 42]  # reproducible from the first seed
    assert len({o.png for o in fixed}) == 3 and all(Image.open(o.png).size == (256, 192) for o in fixed)
    drawn = h.generate_batch_from_form(studio, "s5", form(batch=2, randomize=True))
    assert len({o.metadata["seed"] for o in drawn}) == 2
    with pytest.raises(FluxDepthError, match="images 9 is out of range"):
        h.generate_batch_from_form(studio, "s5", form(batch=9))


def test_seed_values():
    """One seed rule for the form and the API: empty, -1 or "Random seed" leave it to the draw."""
    def seed(value, randomize=False):
        return h.shot_from_form({"seed": value, "randomize": randomize}).generation.seed

    assert seed(None) is None and seed(-1) is None and seed("") is None and seed("12") == 12 and seed(12.0) == 12
    assert seed(5, randomize=True) is None
    for bad, fragment in ((1.5, "whole number"), (-5, "out of range"), ("x", "must be a number")):
        with pytest.raises(FluxDepthError, match=fragment):
            seed(bad)


def test_no_ui_function_is_longer_than_80_lines():
    import ast

    long = []
    for path in (Path(__file__).resolve().parents[1] / "fluxdepth_ui" / "ui").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_tier_labels_show_what_this_machine_measured(tmp_path):
    from fluxdepth_ui.ui.layout import tier_choices

    manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path / "cache"))
    studio = h.Studio(manager=manager, outputs=tmp_path / "outputs",
                      policy=make_policy(False, "bf16", manager.runnable_variants(), None, None))
    # A CPU runs no fp8: it is not offered at all; nothing has been measured yet.
    assert [t for _, t in tier_choices(studio)] == ["bf16", "qint8", "qint4"]
    assert all(label.endswith("not measured here yet") for label, _ in tier_choices(studio))
    messages = []
    outcome = h.generate_from_form(studio, "t", form(steps=2), load_progress=lambda f, m: messages.append(m))
    # The load is announced with the model, tier, placement and device, then where it went and why.
    assert messages[0] == "loading model tiny-random (bf16, placement auto on cpu)"
    assert any(m.startswith("placing bf16 on cpu: cpu (no GPU found") for m in messages)
    labels = dict((t, label) for label, t in tier_choices(studio))
    per_step = outcome.metadata["seconds"] / 2
    assert labels["bf16"].startswith("bf16 · best quality") and "s/step at 256×192 here (1 image)" in labels["bf16"]
    assert abs(float(labels["bf16"].split("· ")[-1].split(" s/step")[0]) - per_step) <= 0.006
    assert labels["qint8"].endswith("not measured here yet")  # per tier, never borrowed from another
    # Another model on the same machine has its own figures.
    other = PipelineManager(ModelSource("tiny-random", seed=1), cache_root=str(tmp_path / "cache"))
    assert other.tier_labels()["bf16"].endswith("not measured here yet")


def test_sequence_takes_the_single_frame_depth_controls_and_zips_everything(studio, tmp_path):
    import zipfile

    from conftest import write_exr
    from fluxdepth_ui.depth import prepare_depth
    from test_sequence import make_sequence

    # Frames whose depth sits in a channel no name search finds: the Channel menu is the rescue, as on one frame.
    src = make_sequence(tmp_path / "src")
    frames = []
    for path in sorted(src.glob("*.exr")):
        z = prepare_depth(str(path)).depth.values
        frames.append(write_exr(tmp_path / path.name, {"dist": z}))
    with pytest.raises(DepthInputError, match="no depth channel"):
        h.gather_sequence(studio, "q", frames, DepthSettings(long_side=256), None)
    assert "dist" in h.sequence_channels(studio, "q", frames)
    # The same fields as the single frame (channel, clip, near/far, edges, long side) make the sequence's settings.
    record = form(channel="dist", near=4.0, far=60.0, long_side=256, edges="near")
    shot = h.shot_from_form({**record, "prompt": "a hall", "steps": 1})
    setup = h.gather_sequence(studio, "q", frames, shot.depth, None)
    assert setup.stats.range.low == pytest.approx(1 / 60) and setup.stats.range.high == pytest.approx(1 / 4)
    assert "dist" in setup.channels and len(setup.previews) == 3
    done = h.run_sequence(studio, "q", setup, shot, "bf16", 24.0, formats=["exr"])
    assert done.report.rendered == [1, 2, 3, 4]
    with zipfile.ZipFile(done.archive) as archive:
        names = {name.split("/", 1)[1] for name in archive.namelist() if not name.endswith("/")}
    assert {f"frame.000{i}{ext}" for i in range(1, 5) for ext in (".png", ".json", ".exr")} <= names
    assert {f"control/frame.000{i}.png" for i in range(1, 5)} <= names
    assert {"sequence.mp4", "sequence_control.mp4", "sequence_stats.json"} <= names


def test_vram_budget_box(tmp_path):
    manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path / "cache"))
    local = h.Studio(manager=manager, outputs=tmp_path / "o", policy=make_policy(False, "bf16", ["bf16"], None, None))
    manager.load()
    assert h.set_vram_budget(local, "12") == "VRAM budget: **12 GiB** · the model reloads with it on the next Generate"
    assert manager.vram_budget == 12.0 and not manager.loaded
    assert h.set_vram_budget(local, "12") == "VRAM budget: **12 GiB**"  # unchanged: nothing reloads
    assert h.set_vram_budget(local, "") == "VRAM budget: **none** · the model reloads with it on the next Generate"
    with pytest.raises(FluxDepthError, match="is not a size"):
        h.set_vram_budget(local, "lots")
    shared = h.Studio(manager=manager, outputs=tmp_path / "o", policy=make_policy(True, "bf16", ["bf16"], None, None))
    with pytest.raises(FluxDepthError, match="host's setting"):
        h.set_vram_budget(shared, "8")
    assert manager.vram_budget is None


def test_quantized_layers_hold_parameters_not_buffers():
    """diffusers' group offloading puts back a group's parameters only: int8/int4 weights held as buffers stayed on
    the GPU when a budget streamed the transformer (docs/benchmarks.md, "VRAM budget")."""
    import torch

    from fluxdepth_ui.pipeline.dense import DenseInt4Linear, DenseInt8Linear

    for layer in (DenseInt8Linear(64, 32, True), DenseInt4Linear(64, 32, True, group_size=32)):
        assert not list(layer.buffers())
        names = {n for n, p in layer.named_parameters()}
        assert names >= {"scale", "bias"} and not any(p.requires_grad for p in layer.parameters())
        assert any(p.dtype in (torch.int8, torch.uint8) for p in layer.parameters())


def test_sequence_tab_on_ray_writes_what_it_writes_here(tmp_path):
    """With a Ray address (here: 2 local workers) the Sequence tab's frames come from the farm path, byte-identical
    to rendering them in the app's own process."""
    from test_farm import files, make_frames

    pattern = make_frames(tmp_path / "frames", count=3)
    frames = sorted(str(p) for p in pattern.parent.glob("*.exr"))
    outcomes = []
    for name, farm in (("here", None), ("ray", {"address": None, "workers": 2})):
        manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path / "cache"))
        studio = h.Studio(manager=manager, outputs=tmp_path / name, farm=farm,
                          policy=make_policy(False, "bf16", ["bf16"], None, None))
        shot = h.shot_from_form({"prompt": "a hall", "steps": 1, "long_side": 256})
        setup = h.gather_sequence(studio, "s", frames, shot.depth, 6)
        done = h.run_sequence(studio, "s", setup, shot, "bf16", 24.0)
        assert done.report.rendered == [1, 2, 3]
        folder = Path(done.report.outputs[0]).parent
        outcomes.append({k: v for k, v in files(folder).items() if k.startswith(("frame.", "control/"))})
    assert outcomes[0] == outcomes[1] and len(outcomes[0]) == 9


# --- History (issue 28): results on disk, newest first, restoring their settings ----------------------------------


def history_studio(tmp_path, shared=False):
    return h.Studio(PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path / "cache")),
                    tmp_path / "outputs", policy=make_policy(shared, "bf16", ["bf16"], None, None))


def small(prompt, seed, **depth):
    from fluxdepth_ui.settings import GenerationSettings, ShotSettings

    return ShotSettings(DepthSettings(long_side=256, **depth), GenerationSettings(prompt, seed=seed, steps=2))


def test_history_lists_results_newest_first_under_readable_names_and_restores_their_settings(tmp_path):
    from fluxdepth_ui.depth import NormalizeSettings

    studio = history_studio(tmp_path)
    h.run_generate(studio, "s1", str(DEPTH_SYN), small("A lighthouse on a cliff, at dusk", 7))
    second = h.run_generate(studio, "s2", str(DEPTH_SYN),
                            small("a statue", 8, normalize=NormalizeSettings(mode="linear", edges="far")))
    assert re.fullmatch(r"\d{8}-\d{6}-a-statue-seed8\.png", os.path.basename(second.png))
    entries, page, pages = h.list_history(studio, None, 0)
    # A local studio: every result in its outputs folder, whichever window made it; the newest first.
    assert [e["caption"] for e in entries] == ["seed 8 · a statue", "seed 7 · A lighthouse on a cliff, at dusk"]
    assert (page, pages) == (0, 1) and entries[0]["png"] == second.png
    assert re.fullmatch(r"\d{8}-\d{6}-a-lighthouse-on-a-cliff-seed7\.png", os.path.basename(entries[1]["png"]))
    restored = entries[0]["settings"]
    assert restored["mode"] == "linear" and restored["edges"] == "far" and restored["seed"] == 8
    assert restored["steps"] == 2 and restored["long_side"] == 256 and restored["randomize"] is False
    assert "depth_file" not in restored  # what the sidecar cannot say stays as it is in the form
    # The record is the app's own: made into a shot again, it is the shot that made the image.
    again = h.shot_from_form({**restored, "depth_file": str(DEPTH_SYN)})
    assert again == small("a statue", 8, normalize=NormalizeSettings(mode="linear", edges="far"))


def test_a_shared_studio_shows_each_browser_its_own_history_across_a_restart(tmp_path):
    studio = history_studio(tmp_path, shared=True)
    mine, theirs = h.new_owner_key(), h.new_owner_key()
    assert mine != theirs and h.new_owner_key(mine) == mine and h.new_owner_key("short") != "short"
    form = {"depth_file": str(DEPTH_SYN), "prompt": "a hall", "seed": 3, "steps": 2, "long_side": 256,
            "owner": mine}
    h.generate_from_form(studio, "tab-1", form)
    assert [e["caption"] for e in h.list_history(studio, mine, 0)[0]] == ["seed 3 · a hall"]
    assert h.list_history(studio, theirs, 0)[0] == []
    assert h.list_history(studio, None, 0)[0] == [] and h.list_history(studio, "../outputs", 0)[0] == []
    restarted = history_studio(tmp_path, shared=True)  # a new server process over the same outputs folder
    assert [e["caption"] for e in h.list_history(restarted, mine, 0)[0]] == ["seed 3 · a hall"]


def test_history_pages_twelve_at_a_time_and_skips_files_that_are_not_results(tmp_path):
    import shutil

    studio = history_studio(tmp_path)
    made = h.run_generate(studio, "s", str(DEPTH_SYN), small("a hall", 1))
    folder = os.path.dirname(made.png)
    for i in range(2, 15):  # 13 more results, each a second newer than the last
        stem = os.path.join(folder, f"copy-{i:02d}")
        shutil.copy(made.png, stem + ".png")
        shutil.copy(made.sidecar, stem + ".json")
        os.utime(stem + ".json", (1e9 + i, 2e9 + i))
    os.utime(made.sidecar, (1e9, 1e9))
    (tmp_path / "outputs" / "s" / "notes.json").write_text('{"not": "a result"}')
    first, page, pages = h.list_history(studio, None, 0)
    assert (len(first), page, pages) == (12, 0, 2)
    assert os.path.basename(first[0]["png"]) == "copy-14.png"
    last, page, _ = h.list_history(studio, None, 5)  # past the end: the last page
    assert page == 1 and [os.path.basename(e["png"]) for e in last] == ["copy-02.png", os.path.basename(made.png)]


def test_the_queue_checks_each_shot_when_queued_and_keeps_its_order(studio):
    """Issue 28's queue: a shot is checked when Queue is clicked (a typo is refused then, not when its turn comes),
    waits in order, is listed with its place, can be removed while waiting, and at most MAX_QUEUED wait."""
    queue = studio.queue_of("q1")
    assert studio.queue_of("q2") is not queue  # each browser its own
    first = queue.add(form(prompt="a red barn", seed=3))
    second = queue.add(form(prompt="a glass pavilion", randomize=True))
    with pytest.raises(FluxDepthError, match="steps"):
        queue.add(form(steps=0))
    assert [q.label for q in queue.waiting] == ["a red barn · seed 3", "a glass pavilion · random seed"]
    assert queue.rows() == [["1", first.label, "next"], ["2", second.label, "waiting"]]
    assert queue.start_next() is first and queue.start_next() is None  # one at a time
    assert queue.rows()[0] == ["▶", first.label, "rendering"]
    assert queue.choices() == [(f"1. {second.label}", second.ident)]
    assert not queue.remove(first.ident)  # rendering: Cancel stops it, Remove does not
    assert queue.remove(second.ident) and queue.waiting == []
    queue.done()
    for i in range(h.MAX_QUEUED):
        queue.add(form(seed=i))
    with pytest.raises(FluxDepthError, match=f"{h.MAX_QUEUED} shots are already waiting"):
        queue.add(form())
    assert queue.clear() == h.MAX_QUEUED and queue.rows() == []
    studio.end_session("q1")
    assert studio.queue_of("q1") is not queue
