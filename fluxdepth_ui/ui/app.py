"""The FluxDepth Studio Blocks app: depth preview panel beside the result, presets, API endpoints."""

from __future__ import annotations

import logging
import os
from typing import Any

import gradio as gr
from gradio import FileData

from ..depth import DEFAULT_CLIP, INVERT_CHOICES, MODES, DepthInputError
from ..pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..pipeline.variants import VARIANTS
from ..presets import PresetError, list_presets, save_preset
from . import handlers as h
from .examples import EXAMPLES, FOLDER as EXAMPLE_FOLDER, example_paths

log = logging.getLogger(__name__)

DEPTH_FILE_TYPES = [".exr", ".png", ".tif", ".tiff", ".pfm", ".npy", ".jpg", ".jpeg", ".pgm", ".pnm"]
# Each label carries the tier's measured memory and speed (docs/benchmarks.md).
VARIANT_HINTS = {name: variant.label for name, variant in VARIANTS.items()}
CSS = """
.fd-warning {background: #fff3cd; color: #664d03; padding: 6px 10px; border-radius: 6px;}
.fd-stats p {margin: 2px 0;}
"""


def _user_error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


def _errors():
    from ..pipeline import PipelineError

    return (DepthInputError, PipelineError, PresetError)


def _gpu(fn, steps_index: int):
    """On ZeroGPU Spaces, reserve the GPU for about as long as the steps need; elsewhere a no-op."""
    try:
        import spaces  # type: ignore
    except ImportError:
        return fn

    def duration(*args, **kwargs):
        steps = int(args[steps_index]) if len(args) > steps_index else DEFAULT_STEPS
        return int(20 + 1.0 * steps)

    return spaces.GPU(duration=duration)(fn)


def _steps_and_guidance() -> tuple[gr.Slider, gr.Slider]:
    """The same two sliders, with the model's defaults, on the single-image and the sequence tabs."""
    with gr.Row():
        return (gr.Slider(1, 60, value=DEFAULT_STEPS, step=1, label="Steps"),
                gr.Slider(0, 30, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance"))


def build_app(studio: h.Studio) -> gr.Blocks:
    manager = studio.manager
    model_label = manager.source.label
    tiny = manager.source.kind == "tiny"

    def generate_on_gpu(path, settings, prompt, variant, steps, guidance, seed, init_image, init_name, strength,
                        session, on_step, load_progress):
        return h.run_generate(studio, session, path, settings, prompt, variant, steps, guidance, seed, init_image,
                              init_name, strength, on_step, load_progress)

    generate_on_gpu = _gpu(generate_on_gpu, steps_index=4)

    with gr.Blocks(title="FluxDepth Studio", analytics_enabled=False) as demo:
        history = gr.State([])
        gr.Markdown(f"## FluxDepth Studio\nModel: `{model_label}` · the model loads on the first Generate.")
        if tiny:
            gr.Markdown("⚠ **tiny-random model: random weights, the results are noise.** Start with "
                        "`--model black-forest-labs/FLUX.1-Depth-dev` for real images.", elem_classes="fd-warning")

        presets = list_presets()
        with gr.Row():
            preset_menu = gr.Dropdown([p.name for p in presets], value=None, label="Preset", scale=3)
            preset_apply = gr.Button("Apply preset", scale=1)
            preset_name = gr.Textbox(label="Save current settings as", placeholder="My Karma interior", scale=3)
            preset_save = gr.Button("Save preset", scale=1)
        preset_status = gr.Markdown()

        with gr.Tabs():
            with gr.Tab("Single frame", elem_id="single-tab"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        depth_file = gr.File(label="Depth file (EXR, PNG, TIFF, PFM, NPY, JPEG)", file_types=DEPTH_FILE_TYPES,
                                             type="filepath", elem_id="depth-file")
                        gr.Examples(examples=[[p] for p in example_paths()], inputs=[depth_file], label="Example depth maps",
                                    example_labels=[EXAMPLES[os.path.basename(p)] for p in example_paths()])
                        with gr.Accordion("Depth from a photo (Depth Anything)", open=False):
                            photo = gr.Image(type="pil", label="Photo", sources=["upload", "clipboard"])
                            estimate_btn = gr.Button("Estimate depth")
                        with gr.Row():
                            channel = gr.Dropdown([h.AUTO_CHANNEL], value=h.AUTO_CHANNEL, label="Channel", elem_id="channel")
                            mode = gr.Dropdown(list(MODES), value="auto", label="Mode", elem_id="mode")
                            invert = gr.Radio(list(INVERT_CHOICES), value="auto", label="Invert", elem_id="invert")
                        with gr.Row():
                            clip_low = gr.Number(DEFAULT_CLIP[0], label="Far clip (percentile)", minimum=0, maximum=100)
                            clip_high = gr.Number(DEFAULT_CLIP[1], label="Near clip (percentile)", minimum=0, maximum=100)
                            near = gr.Number(None, label="Near distance (0 = from percentiles)", minimum=0)
                            far = gr.Number(None, label="Far distance (0 = from percentiles)", minimum=0)
                        long_side = gr.Slider(256, 2048, value=1024, step=16, label="Long side (px)", elem_id="long-side")
                        preview_img = gr.Image(label="Control map: what the model is fed (near = white)", type="filepath",
                                               format="png", interactive=False, height=360, elem_id="preview")
                        stats = gr.Markdown(elem_id="stats", elem_classes="fd-stats")
                        log_hist = gr.Checkbox(False, label="Log scale for raw values")
                        raw_plot = gr.BarPlot(x="value", y="pixels", color="range", title="Raw depth (valid pixels)",
                                              color_map={"used": "#4c78a8", "clipped": "#e45756"},
                                              height=180, elem_id="raw-hist")
                        control_plot = gr.BarPlot(x="level", y="pixels", title="Control map levels", height=180,
                                                  elem_id="control-hist")

                    with gr.Column(scale=1):
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                            placeholder="a brutalist concrete museum at dawn, wet pavement, 35mm photo")
                        variant = gr.Radio([(hint, v) for v, hint in VARIANT_HINTS.items()],
                                           value=manager.variant, label="Precision (switching reloads the model)")
                        steps, guidance = _steps_and_guidance()
                        with gr.Row():
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                            randomize = gr.Checkbox(True, label="Random seed")
                        with gr.Accordion("Start from an image (img2img)", open=False):
                            init_image = gr.Image(type="filepath", label="Init image", sources=["upload", "clipboard"])
                            strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength")
                        with gr.Row():
                            generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                            cancel_btn = gr.Button("Cancel", elem_id="cancel")
                        result_img = gr.Image(label="Result", type="filepath", format="png", interactive=False,
                                              elem_id="result")
                        status = gr.Markdown(elem_id="status")
                        compare = gr.ImageSlider(label="Control map ↔ result", type="filepath", format="png")
                        downloads = gr.File(label="Download: PNG (settings inside) + JSON", file_count="multiple",
                                            interactive=False)
                        gallery = gr.Gallery(label="This session (click to restore its settings)", columns=4, height=180,
                                             allow_preview=False, elem_id="gallery")


            with gr.Tab("Sequence", elem_id="sequence-tab"):
                gr.Markdown("Drop every frame of a camera move (or one zip). One normalization range and one seed "
                            "cover all frames, so the depth does not flicker; the first, middle and last control "
                            "maps are shown under that shared range. Precision is the one chosen on the Single frame "
                            "tab (one model is loaded at a time).")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        seq_files = gr.File(label="Frames (depth.0001.exr, ... or a zip)", file_count="multiple",
                                            file_types=DEPTH_FILE_TYPES + [".zip"], type="filepath",
                                            elem_id="seq-files")
                        with gr.Row():
                            seq_mode = gr.Dropdown(list(MODES), value="auto", label="Mode")
                            seq_invert = gr.Radio(list(INVERT_CHOICES), value="auto", label="Invert")
                            seq_long = gr.Slider(256, 2048, value=1024, step=16, label="Long side (px)")
                        seq_summary = gr.Markdown(elem_id="seq-summary")
                        seq_previews = gr.Gallery(label="First · middle · last control map (shared range)",
                                                  columns=3, height=200, allow_preview=True, elem_id="seq-previews")
                    with gr.Column(scale=1):
                        seq_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="seq-prompt")
                        seq_steps, seq_guidance = _steps_and_guidance()
                        with gr.Row():
                            seq_seed = gr.Number(0, label="Seed (one for the whole sequence)", precision=0, minimum=0)
                            seq_random = gr.Checkbox(True, label="Random seed")
                            seq_fps = gr.Number(24, label="Video fps", minimum=1, maximum=120)
                        with gr.Row():
                            seq_render = gr.Button("Render all frames", variant="primary", elem_id="seq-render")
                            seq_cancel = gr.Button("Cancel")
                        seq_status = gr.Markdown(elem_id="seq-status")
                        seq_gallery = gr.Gallery(label="Rendered frames", columns=6, height=220, elem_id="seq-gallery")
                        seq_video = gr.Video(label="Result video", elem_id="seq-video")
                        seq_downloads = gr.File(label="Downloads (videos, stats)", file_count="multiple",
                                                interactive=False)
                seq_setup = gr.State(None)

        depth_inputs = [depth_file, channel, mode, invert, clip_low, clip_high, near, far, long_side]

        # --- preview ---------------------------------------------------------------------------------------------
        def ui_preview(path, channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side, log_v, request: gr.Request):
            if not path:
                return None, None, None, "", gr.update(choices=[h.AUTO_CHANNEL], value=h.AUTO_CHANNEL)
            try:
                settings = h.depth_settings(channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side)
                result = h.run_preview(studio, path, settings, bool(log_v))
            except _errors() as exc:
                raise _user_error(exc) from None
            png = h.write_control_png(studio, request.session_hash, result)
            raw_df, control_df = h.histogram_frames(result)
            choices = h.channel_choices(result)
            value = channel_v if channel_v in choices else h.AUTO_CHANNEL
            raw_update = gr.update(value=raw_df, x=raw_df.columns[0], x_title=raw_df.columns[0])
            return png, raw_update, control_df, h.stats_markdown(result), gr.update(choices=choices, value=value)

        preview_outputs = [preview_img, raw_plot, control_plot, stats, channel]
        preview_kw = dict(fn=ui_preview, inputs=[*depth_inputs, log_hist], outputs=preview_outputs,
                          trigger_mode="always_last", show_progress="minimal", api_visibility="private",
                          concurrency_limit=4, concurrency_id="preview")
        depth_file.change(**preview_kw)
        for control in [channel, mode, invert, clip_low, clip_high, near, far, long_side, log_hist]:
            control.input(**preview_kw)

        def ui_estimate(photo_v, request: gr.Request):
            try:
                return h.estimate_photo_depth(studio, request.session_hash, photo_v), "off"
            except _errors() as exc:
                raise _user_error(exc) from None

        estimate_btn.click(ui_estimate, [photo], [depth_file, invert], api_visibility="private")

        # --- generate --------------------------------------------------------------------------------------------
        def ui_generate(path, channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side, prompt_v, variant_v, steps_v,
                     guidance_v, seed_v, random_v, init_v, strength_v, history_v, request: gr.Request,
                     progress=gr.Progress()):
            ui = dict(depth_file=path, channel=channel_v, mode=mode_v, invert=invert_v, clip_low=lo, clip_high=hi,
                      near=near_v, far=far_v, long_side=side, prompt=prompt_v, variant=variant_v, steps=steps_v,
                      guidance=guidance_v, strength=strength_v, init_image=init_v)
            try:
                settings = h.depth_settings(channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side)
                outcome = generate_on_gpu(
                    h.require_file(path), settings, prompt_v, variant_v, steps_v, guidance_v,
                    None if random_v else seed_v, init_v, os.path.basename(init_v) if init_v else None, strength_v,
                    request.session_hash,
                    lambda step, total: progress((step, total), desc="denoising"),
                    lambda fraction, message: progress(fraction, desc=message),
                )
            except _errors() as exc:
                raise _user_error(exc) from None
            ui["seed"] = outcome.metadata["seed"]
            history_v = [*history_v, h.history_entry(outcome, ui)]
            return (outcome.png, (outcome.control_png, outcome.png), [outcome.png, outcome.sidecar],
                    [(e["png"], e["caption"]) for e in history_v], history_v, outcome.message,
                    outcome.metadata["seed"])

        generate_btn.click(
            ui_generate,
            inputs=[*depth_inputs, prompt, variant, steps, guidance, seed, randomize, init_image, strength, history],
            outputs=[result_img, compare, downloads, gallery, history, status, seed],
            concurrency_limit=1, concurrency_id="gpu", api_visibility="private",
        )

        def ui_cancel(request: gr.Request):
            studio.cancel_event(request.session_hash).set()
            return "Cancelling after the current step…"

        cancel_btn.click(ui_cancel, None, status, queue=False, api_visibility="private")

        restore_targets = [depth_file, channel, mode, invert, clip_low, clip_high, near, far, long_side, prompt,
                           variant, steps, guidance, seed, randomize, strength]

        def restore(history_v, evt: gr.SelectData):
            s = history_v[evt.index]["settings"]
            return (s["depth_file"], s["channel"], s["mode"], s["invert"], s["clip_low"], s["clip_high"], s["near"],
                    s["far"], s["long_side"], s["prompt"], s["variant"], s["steps"], s["guidance"], s["seed"], False,
                    s["strength"])

        gallery.select(restore, [history], restore_targets, api_visibility="private")

        # --- presets ---------------------------------------------------------------------------------------------
        def apply_preset(name):
            preset = next((p for p in list_presets() if p.name == name), None)
            if preset is None:
                raise gr.Error("choose a preset first", print_exception=False)
            d, g = preset.depth, preset.generation
            clip = d.get("clip", DEFAULT_CLIP)
            return (d.get("mode", "auto"), d.get("invert", "auto"), clip[0], clip[1], d.get("near"), d.get("far"),
                    d.get("long_side", 1024), g.get("variant", manager.variant), g.get("steps", DEFAULT_STEPS),
                    g.get("guidance", DEFAULT_GUIDANCE), f"**{preset.name}**: {preset.description}")

        preset_apply.click(apply_preset, [preset_menu],
                           [mode, invert, clip_low, clip_high, near, far, long_side, variant, steps, guidance,
                            preset_status], api_visibility="private").then(**preview_kw)

        def store_preset(name, mode_v, invert_v, lo, hi, near_v, far_v, side, variant_v, steps_v, guidance_v):
            try:
                path = save_preset(
                    name, {"mode": mode_v, "invert": invert_v, "clip": [float(lo), float(hi)],
                           "near": near_v or None, "far": far_v or None, "long_side": int(side)},
                    {"variant": variant_v, "steps": int(steps_v), "guidance": float(guidance_v)},
                )
            except PresetError as exc:
                raise _user_error(exc) from None
            names = [p.name for p in list_presets()]
            return gr.update(choices=names, value=name.strip()), f"Saved to `{path}`"

        preset_save.click(store_preset, [preset_name, mode, invert, clip_low, clip_high, near, far, long_side,
                                         variant, steps, guidance], [preset_menu, preset_status],
                          api_visibility="private")

        # --- sequence --------------------------------------------------------------------------------------------
        def seq_settings(mode_v, invert_v, side):
            return h.depth_settings(None, mode_v, invert_v, DEFAULT_CLIP[0], DEFAULT_CLIP[1], None, None, side)

        def ui_seq_prepare(files, mode_v, invert_v, side, request: gr.Request):
            if not files:
                return None, [], ""
            try:
                setup = h.gather_sequence(studio, request.session_hash, files, seq_settings(mode_v, invert_v, side),
                                          None)
            except _errors() as exc:
                raise _user_error(exc) from None
            labels = ["first", "middle", "last"]
            return setup, [(p, labels[i]) for i, p in enumerate(setup.previews)], setup.summary

        for trigger in (seq_files.change, seq_mode.input, seq_invert.input, seq_long.release):
            trigger(ui_seq_prepare, [seq_files, seq_mode, seq_invert, seq_long],
                    [seq_setup, seq_previews, seq_summary], api_visibility="private", trigger_mode="always_last")

        def ui_seq_render(setup, mode_v, invert_v, side, prompt_v, variant_v, steps_v, guidance_v, fps_v, seed_v,
                          random_v, request: gr.Request, progress=gr.Progress()):
            if setup is None:
                raise gr.Error("add the sequence's frames first", print_exception=False)
            seed_fixed = None if random_v or seed_v is None else int(seed_v)
            setup = h.SequenceSetup(setup.folder, setup.frames,
                                    type(setup.stats)(**{**setup.stats.__dict__, "seed": seed_fixed}),
                                    setup.previews, setup.summary)
            try:
                report, video, control_video, seed_v = h.run_sequence(
                    studio, request.session_hash, setup, seq_settings(mode_v, invert_v, side), prompt_v, variant_v,
                    steps_v, guidance_v, float(fps_v or 24),
                    on_frame=lambda i, n, frame, status: progress((i, n), desc=f"frame {frame.number} {status}"),
                )
            except _errors() as exc:
                raise _user_error(exc) from None
            stats_file = os.path.join(setup.folder, "render", "sequence_stats.json")
            from ..sequence import save_stats

            save_stats(type(setup.stats)(**{**setup.stats.__dict__, "seed": seed_v}), stats_file)
            message = (f"Done: {len(report.rendered)} frames rendered, {len(report.skipped)} unchanged and kept · seed "
                       f"**{seed_v}** · {report.seconds:.1f} s")
            return ([(p, f"frame {os.path.basename(p).split('.')[1]}") for p in report.outputs], video,
                    [video, control_video, stats_file], message, seed_v)

        seq_render.click(ui_seq_render,
                         [seq_setup, seq_mode, seq_invert, seq_long, seq_prompt, variant, seq_steps, seq_guidance,
                          seq_fps, seq_seed, seq_random],
                         [seq_gallery, seq_video, seq_downloads, seq_status, seq_seed],
                         concurrency_limit=1, concurrency_id="gpu", api_visibility="private")
        seq_cancel.click(ui_cancel, None, seq_status, queue=False, api_visibility="private")

        # --- API -------------------------------------------------------------------------------------------------
        def api_preview(depth: FileData, channel: str = "auto", mode: str = "auto", invert: str = "auto",
                        clip_low: float = 0.5, clip_high: float = 99.5, near: float = 0.0, far: float = 0.0,
                        long_side: int = 1024, request: gr.Request = None) -> tuple[FileData, dict[str, Any]]:
            """Normalize a depth file the way the model needs it.

            Returns the control map as a 16-bit greyscale PNG (near = white, background 0) and its stats (channel,
            mode, inverted, width, height, valid_fraction, range, warnings, ...). near/far of 0 mean unset.
            """
            try:
                settings = h.depth_settings(channel, mode, invert, clip_low, clip_high, near, far, long_side)
                result = h.run_preview(studio, h.require_file(depth), settings)
            except _errors() as exc:
                raise _user_error(exc) from None
            png = h.write_control_png(studio, request.session_hash if request else None, result)
            return FileData(path=png), result.stats.to_dict()

        def api_generate(depth: FileData, prompt: str, seed: int = -1, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                         variant: str = "", channel: str = "auto", mode: str = "auto", invert: str = "auto",
                         clip_low: float = 0.5, clip_high: float = 99.5, near: float = 0.0, far: float = 0.0,
                         long_side: int = 1024, init_image: FileData | None = None, strength: float = 0.6,
                         request: gr.Request = None) -> tuple[FileData, dict[str, Any]]:
            """Generate an image from a depth file and a prompt.

            seed -1 draws one (it is reported); variant "" keeps the loaded tier (bf16, qint8, qint4 or fp8).
            Returns the PNG (settings in its text chunks) and the metadata record.
            """
            init_path = h.require_file(init_image) if init_image else None
            try:
                settings = h.depth_settings(channel, mode, invert, clip_low, clip_high, near, far, long_side)
                outcome = generate_on_gpu(
                    h.require_file(depth), settings, prompt, variant or manager.variant, steps, guidance,
                    None if seed is None or int(seed) < 0 else int(seed), init_path,
                    os.path.basename(init_path) if init_path else None, strength,
                    request.session_hash if request else None, None, None,
                )
            except _errors() as exc:
                raise _user_error(exc) from None
            return FileData(path=outcome.png), outcome.metadata

        gr.api(api_preview, api_name="preview", concurrency_limit=4, concurrency_id="preview")
        gr.api(api_generate, api_name="generate", concurrency_limit=1, concurrency_id="gpu")
    return demo


def allowed_paths(studio: h.Studio) -> list[str]:
    """Only the outputs folder and the bundled examples are served (plus gradio's own upload cache)."""
    return [str(studio.outputs.resolve()), str(EXAMPLE_FOLDER)]
