"""The studio's layout: components only, no events (app.py wires them). Each section is one function.

Stable elem_ids for tests and DCC scripts: `depth-file`, `preview`, `generate`, `result`.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import gradio as gr

from .. import limits
from ..defaults import DEFAULT_FPS, DEFAULT_INPAINT_STRENGTH, EXTRA_FORMATS, LORA_SLOTS
from ..depth.readers import DEPTH_SUFFIXES
from ..loras import available_loras
from ..presets import list_presets, packaged_folder
from ..settings import LORA_SCALE_RANGE, form_field, shot_fields
from .examples import EXAMPLE_SETTINGS, EXAMPLES, example_paths
from .handlers import AUTO_CHANNEL, MAX_BATCH, browser_secret

DEPTH_FILE_TYPES = list(DEPTH_SUFFIXES)
# What `auto` does for each kind of file, shown in the depth panel (docs/depth.md).
DEPTH_DOC = packaged_folder("docs", "docs") / "depth.md"

# The form: every setting of the schema (settings.shot_fields) by its name, plus what only the app has. Functions,
# not constants: a setting added to the dataclasses shows up here with no other edit (tests/test_shot_and_settings.py).
APP_ONLY_FIELDS = ("variant", "randomize", "batch", "init_image", "also_save",
                   *(name for slot in LORA_SLOTS for name in slot), "backend")
SEQUENCE_SKIPS = ("strength", "seed")  # img2img only; the sequence's one seed has its own box (seq_seed)


def shot_names(section: str | None = None) -> tuple[str, ...]:
    """The settings of the schema that the app shows as controls (style LoRAs have their slots instead)."""
    return tuple(f.name for f in shot_fields() if section in (None, f.section) and f.spec.kind is not tuple)


def depth_fields() -> tuple[str, ...]:
    return ("depth_file", *shot_names("depth"))


def generation_fields() -> tuple[str, ...]:
    return (*shot_names("generation"), *APP_ONLY_FIELDS)


def sequence_fields() -> tuple[str, ...]:
    """The Sequence tab's controls of the same settings, prefixed (seq_mode, seq_steps, ...)."""
    return tuple("seq_" + n for n in shot_names() if n not in SEQUENCE_SKIPS)


def remembered_fields() -> tuple[str, ...]:
    """What the browser remembers across reloads: every setting but the files and the channel of one file."""
    return tuple(n for n in depth_fields() + generation_fields()
                 if n not in ("depth_file", "init_image", "channel", "backend", *(s[0] for s in LORA_SLOTS)))


# Desktop-style: the whole loop (depth file, control map, prompt, Generate, result) fits one 1280x720 screen;
# everything else folds away into accordions beside it. (gradio takes the CSS at launch: launch.launch_options.)
CSS = """
.fd-head {margin: 0 !important; padding: 0 !important}
.fd-head p {margin: 2px 0 !important; font-size: 0.9em}
.fd-warning {background: #fff3cd; color: #664d03; padding: 2px 8px; border-radius: 6px}
.fd-stats p {margin: 2px 0; font-size: 0.85em}
#depth-file button.center {padding-top: 18px}
#gallery .caption-label {max-width: calc(100% - 8px); font-size: 0.75em}
#downloads .label-clear-button, #seq-downloads .label-clear-button {display: none}
#history-page {text-align: center; white-space: nowrap}
.fd-hidden {display: none !important}
"""


def build_layout(studio, delete_cache) -> tuple[gr.Blocks, SimpleNamespace]:
    """The Blocks and a namespace of its components (w.depth_file, w.generate_btn, ...)."""
    w = SimpleNamespace()
    with gr.Blocks(title="FluxDepth Studio", analytics_enabled=False, delete_cache=delete_cache,
                   fill_width=True) as demo:
        secret = browser_secret(studio.outputs)  # a restarted server still reads what browsers kept
        w.history = gr.State([])  # the entries the History gallery shows (their settings restore on a click)
        w.history_page = gr.State(0)
        # This browser's key: its results folder on a shared studio, so its history survives a reload (not secret
        # from its own user; 128 random bits from the server, handlers.new_owner_key).
        w.owner = gr.BrowserState("", storage_key="fluxdepth-studio-owner", secret=secret)
        # The artist's last settings, kept in this browser (not on the server) across reloads.
        w.remembered = gr.BrowserState({}, storage_key="fluxdepth-studio-settings", secret=secret)
        _header(studio)
        with gr.Tabs():
            with gr.Tab("Single frame", elem_id="single-tab"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=300):
                        _depth_panel(w, studio)
                    with gr.Column(scale=4, min_width=320):
                        _control_panel(w)
                    with gr.Column(scale=4, min_width=320):
                        _generation_panel(w, studio)
            with gr.Tab("Sequence", elem_id="sequence-tab"):
                _sequence_tab(w)
    return demo, w


def form_components(w: SimpleNamespace) -> list:
    return [getattr(w, name) for name in depth_fields() + generation_fields()]


def setting_control(name: str, **kw) -> gr.components.Component:
    """The control of one setting, made from its schema entry (settings.shot_fields): label, default, range and
    choices are typed there once; `kw` only places or styles it (elem_id, scale, info)."""
    f = form_field(name)
    spec = f.spec
    value = kw.pop("value", None if f.required else f.default)
    kw = {"label": f.label, **kw}
    if spec.choices is not None:
        kind = gr.Radio if spec.widget == "radio" else gr.Dropdown
        return kind(list(spec.choices), value=value, **kw)
    if spec.kind is bool:
        return gr.Checkbox(bool(value), **kw)
    if spec.kind is str:
        return gr.Textbox(value or "", max_lines=1, **kw)
    if spec.step is not None and spec.bounds is not None:
        low, high = spec.bounds
        # A low bound the setting refuses (strength 0) starts the slider one step above it.
        return gr.Slider(low + spec.step if spec.low_open else low, high, value=value, step=spec.step, **kw)
    # Typed numbers get no gradio minimum/maximum: gradio's own check would answer a typo with its error toast and
    # red badges over the panel; the settings refuse it in one line instead (docs/settings.md).
    return gr.Number(value, precision=0 if spec.kind is int else None, **kw)


def other_settings(w: SimpleNamespace, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Every setting of the schema the layout has not placed yet, each with its help line: a new setting appears in
    the app without a layout edit (in "More settings"); the layout may give it a better place later."""
    rest = [n for n in shot_names() if not hasattr(w, prefix + n) and n not in skip]
    if rest:
        with gr.Accordion("More settings", open=False, elem_id=f"{prefix}more-settings".replace("_", "-")):
            for name in rest:
                setattr(w, prefix + name, setting_control(name, info=form_field(name).spec.help))


def _header(studio) -> None:
    source = studio.manager.source
    if source.kind == "tiny":
        model = "<span class='fd-warning'>⚠ tiny-random: random weights, the results are noise</span>"
    else:
        model = f"model `{source.label}` (it loads on the first Generate)"
    text = f"**FluxDepth Studio** · {model}"
    gr.Markdown(text, elem_classes="fd-head")


def _depth_panel(w: SimpleNamespace, studio) -> None:
    """Left: the depth file and how it is read."""
    w.depth_file = gr.File(label="Depth file (EXR, PNG, TIFF, PFM, NPY, JPEG)", file_types=DEPTH_FILE_TYPES,
                           type="filepath", elem_id="depth-file", height=136)
    _depth_controls(w, "", elem_ids=True)
    with gr.Accordion("Examples", open=False):
        gr.Examples(examples=[[p, *EXAMPLE_SETTINGS[os.path.basename(p)]] for p in example_paths()],
                    inputs=[w.depth_file, w.mode, w.invert, w.near, w.far], label=None,
                    example_labels=[EXAMPLES[os.path.basename(p)] for p in example_paths()])
    with gr.Accordion("Depth from a photo (Depth Anything)", open=False):
        w.photo = gr.Image(type="pil", label="Photo", sources=["upload", "clipboard"], height=160)
        w.estimate_btn = gr.Button("Estimate depth", elem_id="estimate")
        w.estimate_status = gr.Markdown(elem_id="estimate-status")  # progress and the outcome, beside the button
    with gr.Accordion("Presets", open=False):
        _presets(w, studio.policy)
    if DEPTH_DOC.is_file():
        with gr.Accordion("How auto reads your file", open=False, elem_id="depth-doc"):
            gr.Markdown(DEPTH_DOC.read_text(encoding="utf-8"))


def _depth_controls(w: SimpleNamespace, prefix: str, elem_ids: bool = False) -> None:
    """How a depth file is read: the same controls on the Single frame and the Sequence tabs (w.<prefix>channel,
    w.<prefix>mode, ...; the names of DEPTH_FIELDS)."""
    def ids(name):
        return {"elem_id": name.replace("_", "-")} if elem_ids else {}

    def put(name, component):
        setattr(w, prefix + name, component)

    with gr.Row():
        # The channel menu lists the channels of the file at hand (handlers.channel_choices).
        put("channel", gr.Dropdown([AUTO_CHANNEL], value=AUTO_CHANNEL, label="Channel", allow_custom_value=True,
                                   **ids("channel")))
        put("mode", setting_control("mode", **ids("mode")))
    put("invert", setting_control("invert", **ids("invert")))
    with gr.Accordion("Range, size and edges", open=False):
        with gr.Row():
            put("clip_low", setting_control("clip_low"))
            put("clip_high", setting_control("clip_high"))
        with gr.Row():
            put("near", setting_control("near"))
            put("far", setting_control("far"))
        put("long_side", setting_control("long_side", **ids("long_side")))
        with gr.Row():
            put("edges", setting_control("edges", info="anti-aliased pixels between surfaces", **ids("edges")))
            put("polarity", setting_control("polarity", info="which end of a made image is near, for near/far",
                                            **ids("polarity")))


def _presets(w: SimpleNamespace, policy) -> None:
    w.preset_menu = gr.Dropdown([p.name for p in list_presets()], value=None, label="Preset")
    w.preset_apply = gr.Button("Apply preset", size="sm")
    # On a shared server visitors do not write into the host's preset folder.
    w.preset_name = gr.Textbox(label="Save current settings (and prompt) as", placeholder="My Karma interior",
                               visible=policy.save_presets)
    with gr.Row(visible=policy.save_presets):
        w.preset_overwrite = gr.Checkbox(False, label="Overwrite", info="replace a preset of this name")
        w.preset_save = gr.Button("Save preset", size="sm")
        w.preset_delete = gr.Button("Delete preset", size="sm", variant="stop")
    w.preset_status = gr.Markdown()


def _control_panel(w: SimpleNamespace) -> None:
    """Centre: the control map exactly as the model gets it, its stats and histograms."""
    w.preview_img = gr.Image(label="Control map: what the model is fed (near = white)", type="filepath",
                             format="png", interactive=False, height=340, elem_id="preview")
    w.stats = gr.Markdown(elem_id="stats", elem_classes="fd-stats")
    with gr.Accordion("Histograms", open=False):
        w.log_hist = gr.Checkbox(False, label="Log scale for raw values")
        w.raw_plot = gr.BarPlot(x="value", y="pixels", color="range", title="Raw depth (valid pixels)",
                                color_map={"used": "#4c78a8", "clipped": "#e45756"}, height=180,
                                elem_id="raw-hist")
        w.control_plot = gr.BarPlot(x="level", y="pixels", title="Control map levels", height=180,
                                    elem_id="control-hist")


def _generation_panel(w: SimpleNamespace, studio) -> None:
    """Right: prompt, Generate, the result; settings and history fold away."""
    tiers = studio.policy.tiers
    w.prompt = gr.Textbox(label=form_field("prompt").label, lines=2, elem_id="prompt",
                          max_length=limits.current().prompt_chars,
                          placeholder="a brutalist concrete museum at dawn, wet pavement, 35mm photo")
    with gr.Row():
        w.generate_btn = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
        w.queue_btn = gr.Button("Queue", elem_id="queue-add", scale=1, min_width=90)
        w.cancel_btn = gr.Button("Cancel", elem_id="cancel", scale=1, min_width=90)
    # Ctrl/Cmd+Shift+Enter clicks it: the same shot with a new seed (kept in the page, out of sight).
    w.new_seed_btn = gr.Button("Generate with a new seed", elem_id="generate-new-seed", elem_classes="fd-hidden")
    # The status line (seed, time, errors) right under the buttons: on the first screen even at 1280x633 (a laptop
    # browser with its bars), whatever the result's height.
    w.status = gr.Markdown(elem_id="status")
    # Shots waiting their turn (Queue): shown only while there are some (docs/queue.md).
    with gr.Group(visible=False) as w.queue_panel:
        w.queue_list = gr.Markdown(elem_id="queue-list")
        with gr.Row():
            w.queue_pick = gr.Dropdown([], label="Waiting shot", elem_id="queue-pick", scale=3)
            w.queue_remove = gr.Button("Remove", size="sm", elem_id="queue-remove", scale=1)
            w.queue_clear = gr.Button("Clear queue", size="sm", elem_id="queue-clear", scale=1)
    w.result_img = gr.Image(label="Result", type="filepath", format="png", interactive=False, height=340,
                            elem_id="result")
    with gr.Accordion("Generation settings", open=False, elem_id="generation-settings"):
        w.variant = gr.Radio(tier_choices(studio), value=studio.manager.variant,
                             label="Precision (switching reloads the model for everyone)",
                             info="only the tiers this machine can run, with the step time measured here",
                             interactive=len(tiers) > 1, elem_id="variant")
        # The host's GPU: set on a local studio only (docs/vram.md).
        budget = studio.manager.vram_budget
        w.vram_budget = gr.Textbox("" if budget is None else str(budget), label="VRAM budget (GiB, auto, follow, or empty)",
                                   info="never use more GPU memory than this; empty follows the card's free memory; what does not "
                                        "fit streams (Enter)",
                                   visible=not studio.policy.shared, elem_id="vram-budget", max_lines=1)
        w.vram_headroom = gr.Textbox(f"{studio.manager.vram_headroom:g}", label="VRAM headroom (GiB)",
                                     info="left free for Houdini and other programs while following the card; "
                                          "checked before every image (Enter)",
                                     visible=not studio.policy.shared, elem_id="vram-headroom", max_lines=1)
        # FLUX.1 Depth [pro] on BFL's API when the host offers it (--bfl; costs the host's credits, docs/bfl.md).
        w.backend = gr.Radio([("FLUX.1-Depth-dev on this machine", "local"),
                              ("FLUX.1 Depth [pro], BFL API (credits)", "bfl")], value="local", label="Backend",
                             visible=studio.bfl is not None, elem_id="backend")
        w.steps, w.guidance = _steps_and_guidance()
        with gr.Row():
            w.seed = setting_control("seed", value=0)
            w.randomize = gr.Checkbox(True, label="Random seed")
            w.batch = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Images",
                                info="one seed each; pick one in the gallery to continue")
        w.init_image = gr.Image(type="filepath", label="Start from an image (img2img)",
                                sources=["upload", "clipboard"], height=160)
        w.strength = setting_control("strength")
        w.also_save = _also_save(elem_id="also-save")
        with gr.Row():  # 2K plates (docs/plates.md)
            w.plate = setting_control("plate", elem_id="plate",
                                      info="for big long sides: about 1 MP first, then refined at full size")
            w.plate_strength = setting_control("plate_strength")
        # Style LoRAs: names from the host's LoRA folder only (loras.py); hidden when it has none.
        choices = [("none", "")] + [(n.rsplit(".", 1)[0], n) for n in available_loras(studio.manager.lora_dir)]
        for index, (name, scale) in enumerate(LORA_SLOTS, 1):
            with gr.Row(visible=len(choices) > 1):
                setattr(w, name, gr.Dropdown(choices, value="", label=f"Style LoRA {index}", scale=2,
                                             elem_id=f"lora-{index}"))
                setattr(w, scale, gr.Slider(LORA_SCALE_RANGE[0], LORA_SCALE_RANGE[1], value=1.0, step=0.05,
                                            label="Scale", scale=1))
        other_settings(w)
    _result_panels(w)


def _result_panels(w: SimpleNamespace) -> None:
    """Below the result: compare and download, fix a region, the history of results."""
    with gr.Accordion("Compare, download", open=False):
        w.compare = gr.ImageSlider(label="Control map ↔ result", type="filepath", format="png")
        w.downloads = gr.File(label="Download: PNG (settings inside), JSON, 16-bit PNG / EXR if chosen",
                              file_count="multiple", interactive=False, elem_id="downloads")
    # Fix one region of the result (inpainting, docs/inpaint.md): paint over it, regenerate only there with the same
    # control map and the prompt above.
    with gr.Accordion("Fix a region", open=False, elem_id="fix-panel"):
        w.fix_load = gr.Button("Fix a region of this result", size="sm", elem_id="fix-load")
        w.fix_editor = gr.ImageEditor(label="Paint over what to regenerate", type="numpy", sources=(),
                                      brush=gr.Brush(colors=["#ff3366"], color_mode="fixed"), layers=False,
                                      transforms=(), height=300, elem_id="fix-editor")
        with gr.Row():
            w.fix_strength = gr.Slider(0.05, 1.0, value=DEFAULT_INPAINT_STRENGTH, step=0.05,
                                       label="Strength in the region", info="0.9 or more repaints it fully",
                                       elem_id="fix-strength", scale=2)
            w.fix_btn = gr.Button("Regenerate region", variant="primary", elem_id="fix-run", scale=1)
    # History: the results on disk, newest first, across reloads and restarts (this browser's own on a shared
    # studio); clicking one restores its settings (handlers.list_history).
    with gr.Accordion("History", open=False, elem_id="history-panel"):
        w.gallery = gr.Gallery(label="Results, newest first (click to restore the settings)", columns=3,
                               height=200, allow_preview=False, elem_id="gallery")
        with gr.Row():
            w.history_newer = gr.Button("◀ Newer", size="sm", elem_id="history-newer", min_width=90)
            w.history_where = gr.Markdown("", elem_id="history-page", min_height=0)
            w.history_older = gr.Button("Older ▶", size="sm", elem_id="history-older", min_width=90)


def tier_choices(studio) -> list[tuple[str, str]]:
    """(label, tier) for the tiers visitors may use, labelled with this machine's own measured step time."""
    labels = studio.manager.tier_labels()
    return [(labels.get(t, t), t) for t in studio.policy.tiers]


def _sequence_tab(w: SimpleNamespace) -> None:
    gr.Markdown("Drop every frame of a camera move (or one zip). One normalization range and one seed cover all "
                "frames, so the depth does not flicker; the first, middle and last control maps are shown under "
                "that shared range. Precision and style LoRAs are the ones chosen on the Single frame tab (one model "
                "is loaded at a time).")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            w.seq_files = gr.File(label="Frames (depth.0001.exr, ... or a zip)", file_count="multiple",
                                  file_types=DEPTH_FILE_TYPES + [".zip"], type="filepath", elem_id="seq-files")
            _depth_controls(w, "seq_")
            w.seq_summary = gr.Markdown(elem_id="seq-summary")
            w.seq_previews = gr.Gallery(label="First · middle · last control map (shared range)", columns=3,
                                        height=200, allow_preview=True, object_fit="contain",
                                        elem_id="seq-previews")
        with gr.Column(scale=1):
            w.seq_prompt = gr.Textbox(label=form_field("prompt").label, lines=2, elem_id="seq-prompt")
            w.seq_steps, w.seq_guidance = _steps_and_guidance()
            with gr.Row():
                w.seq_seed = gr.Number(0, label="Seed (one for the whole sequence)", precision=0)
                w.seq_random = gr.Checkbox(True, label="Random seed")
                w.seq_fps = gr.Number(DEFAULT_FPS, label="Video fps")
            w.seq_also_save = _also_save()
            other_settings(w, "seq_", skip=SEQUENCE_SKIPS)
            with gr.Row():
                w.seq_render = gr.Button("Render all frames", variant="primary", elem_id="seq-render")
                w.seq_cancel = gr.Button("Cancel")
            w.seq_status = gr.Markdown(elem_id="seq-status")
            w.seq_gallery = gr.Gallery(label="Rendered frames", columns=6, height=220, elem_id="seq-gallery")
            w.seq_video = gr.Video(label="Result video", elem_id="seq-video")
            w.seq_downloads = gr.File(label="Downloads: everything in one zip (frames, sidecars, control maps, "
                                            "videos, stats), then the videos", file_count="multiple",
                                      interactive=False, elem_id="seq-downloads")
    w.seq_setup = gr.State(None)


def _also_save(**kw) -> gr.CheckboxGroup:
    return gr.CheckboxGroup([(label, name) for name, label in EXTRA_FORMATS.items()], value=[],
                            label="Also save (from the float decode, for grading)", **kw)


def _steps_and_guidance() -> tuple[gr.Slider, gr.Slider]:
    """The same two sliders on the single-image and the sequence tabs (ranges and defaults: settings.py)."""
    with gr.Row():
        return setting_control("steps"), setting_control("guidance")
