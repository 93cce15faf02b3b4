"""The FluxDepth Studio Blocks app: depth preview panel beside the result, presets, API endpoints."""

from __future__ import annotations

import os
import threading
from typing import Any

import gradio as gr
from gradio import FileData

from .. import limits
from ..depth import DEFAULT_CLIP, INVERT_CHOICES, MODES
from ..defaults import DEFAULT_STRENGTH
from ..depth.readers import DEPTH_SUFFIXES
from ..depth.control import DEFAULT_LONG_SIDE, MAX_LONG_SIDE, MIN_LONG_SIDE
from ..depth.normalize import DEFAULT_EDGES, EDGE_CHOICES
from ..errors import FluxDepthError
from ..pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..pipeline.variants import VARIANTS
from ..presets import list_presets, packaged_folder, save_preset
from . import handlers as h
from .examples import EXAMPLES, FOLDER as EXAMPLE_FOLDER, example_paths
from .sharing import DAY, UploadGate, user_facing


DEPTH_FILE_TYPES = list(DEPTH_SUFFIXES)
# Each label carries the tier's measured memory and speed (docs/benchmarks.md).
VARIANT_HINTS = {name: variant.label for name, variant in VARIANTS.items()}


# What `auto` does for each kind of file, shown in the depth panel (docs/depth.md).
DEPTH_DOC = packaged_folder("docs", "docs") / "depth.md"
# Previews are cheap and must answer while generations wait: they bypass the queue (whose size bounds only the
# GPU work) and take one of these slots instead (docs/sharing.md).
PREVIEW_SLOTS = 4
PREVIEW_WAIT_S = 30.0


def _seed_value(seed, randomize: bool = False) -> int | None:
    """The UI's and the API's seed: None (draw one) for random or negative; a clear error for non-numbers."""
    if randomize or seed is None or seed == "":
        return None
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise FluxDepthError(f"seed must be a whole number, not {str(seed)[:20]!r}") from None
    if value != value or value != int(value):
        raise FluxDepthError("seed must be a whole number (or -1 for a random one)")
    return None if value < 0 else int(value)


def _gpu(fn, steps_index: int):
    """On ZeroGPU Spaces, reserve the GPU for about as long as the steps need; elsewhere a no-op."""
    try:
        import spaces  # type: ignore
    except ImportError:
        return fn

    def duration(*args, **kwargs):
        try:
            steps = min(100, int(float(args[steps_index])))
        except (IndexError, TypeError, ValueError):
            steps = DEFAULT_STEPS
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

    policy = studio.policy
    # gradio's own cache (uploads, served results) ages out with the session folders.
    delete_cache = (3600, int(policy.keep_days * DAY)) if policy.keep_days else None
    preview_slots = threading.BoundedSemaphore(PREVIEW_SLOTS)

    with gr.Blocks(title="FluxDepth Studio", analytics_enabled=False, delete_cache=delete_cache) as demo:
        gate = UploadGate(demo, example_paths())
        history = gr.State([])
        gr.Markdown(f"## FluxDepth Studio\nModel: `{model_label}` · the model loads on the first Generate.")
        if tiny:
            gr.Markdown("⚠ **tiny-random model: random weights, the results are noise.** Start with "
                        "`--model black-forest-labs/FLUX.1-Depth-dev` for real images.", elem_classes="fd-warning")

        presets = list_presets()
        with gr.Row():
            preset_menu = gr.Dropdown([p.name for p in presets], value=None, label="Preset", scale=3)
            preset_apply = gr.Button("Apply preset", scale=1)
            # On a shared server visitors do not write into the host's preset folder.
            preset_name = gr.Textbox(label="Save current settings as", placeholder="My Karma interior", scale=3,
                                     visible=policy.save_presets)
            preset_save = gr.Button("Save preset", scale=1, visible=policy.save_presets)
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
                        with gr.Row():
                            long_side = gr.Slider(MIN_LONG_SIDE, MAX_LONG_SIDE, value=DEFAULT_LONG_SIDE, step=16,
                                                  label="Long side (px)",
                                                  elem_id="long-side", scale=3)
                            edges = gr.Dropdown(list(EDGE_CHOICES), value=DEFAULT_EDGES, label="Edges", elem_id="edges",
                                                info="anti-aliased pixels between surfaces", scale=1)
                        preview_img = gr.Image(label="Control map: what the model is fed (near = white)", type="filepath",
                                               format="png", interactive=False, height=360, elem_id="preview")
                        stats = gr.Markdown(elem_id="stats", elem_classes="fd-stats")
                        if DEPTH_DOC.is_file():
                            with gr.Accordion("How auto reads your file", open=False, elem_id="depth-doc"):
                                gr.Markdown(DEPTH_DOC.read_text(encoding="utf-8"))
                        log_hist = gr.Checkbox(False, label="Log scale for raw values")
                        raw_plot = gr.BarPlot(x="value", y="pixels", color="range", title="Raw depth (valid pixels)",
                                              color_map={"used": "#4c78a8", "clipped": "#e45756"},
                                              height=180, elem_id="raw-hist")
                        control_plot = gr.BarPlot(x="level", y="pixels", title="Control map levels", height=180,
                                                  elem_id="control-hist")

                    with gr.Column(scale=1):
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt", max_length=limits.current().prompt_chars,
                                            placeholder="a brutalist concrete museum at dawn, wet pavement, 35mm photo")
                        variant = gr.Radio([(VARIANT_HINTS[v], v) for v in policy.tiers], value=manager.variant,
                                           label="Precision (switching reloads the model for everyone)",
                                           interactive=len(policy.tiers) > 1)
                        steps, guidance = _steps_and_guidance()
                        with gr.Row():
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                            randomize = gr.Checkbox(True, label="Random seed")
                        with gr.Accordion("Start from an image (img2img)", open=False):
                            init_image = gr.Image(type="filepath", label="Init image", sources=["upload", "clipboard"])
                            strength = gr.Slider(0.05, 1.0, value=DEFAULT_STRENGTH, step=0.05, label="Strength")
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
                            seq_long = gr.Slider(MIN_LONG_SIDE, MAX_LONG_SIDE, value=DEFAULT_LONG_SIDE, step=16,
                                                 label="Long side (px)")
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

        depth_inputs = [depth_file, channel, mode, invert, clip_low, clip_high, near, far, long_side, edges]

        def serve(path: str) -> str:
            """Results are handed out as copies in gradio's cache: the outputs folder itself is never served."""
            from gradio.processing_utils import save_file_to_cache

            return save_file_to_cache(path, demo.GRADIO_CACHE)

        def preview_slot():
            if not preview_slots.acquire(timeout=PREVIEW_WAIT_S):
                raise FluxDepthError("the server is busy with other previews; try again in a moment")
            return preview_slots

        # --- preview ---------------------------------------------------------------------------------------------
        def ui_preview(path, channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side, edges_v, log_v,
                       request: gr.Request):
            """Outside gradio's queue an error cannot be a toast; it shows in the stats panel instead, where the
            artist looks, and the controls stay free."""
            try:
                return user_facing(preview_panel)(path, channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side,
                                                  edges_v, log_v, request.session_hash)
            except gr.Error as exc:
                return None, None, None, f"⚠ **{exc.message}**", gr.update()

        def preview_panel(path, channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side, edges_v, log_v, session):
            if not path:
                return None, None, None, "", gr.update(choices=[h.AUTO_CHANNEL], value=h.AUTO_CHANNEL)
            settings = h.depth_settings(channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side, edges=edges_v)
            source = gate.resolve(path)
            slot = preview_slot()
            try:
                result = h.run_preview(studio, source, settings, bool(log_v), session=session)
                png = h.write_control_png(studio, session, result)
            finally:
                slot.release()
            raw_df, control_df = h.histogram_frames(result)
            choices = h.channel_choices(result)
            value = channel_v if channel_v in choices else h.AUTO_CHANNEL
            raw_update = gr.update(value=raw_df, x=raw_df.columns[0], x_title=raw_df.columns[0])
            return png, raw_update, control_df, h.stats_markdown(result), gr.update(choices=choices, value=value)

        preview_outputs = [preview_img, raw_plot, control_plot, stats, channel]
        preview_kw = dict(fn=ui_preview, inputs=[*depth_inputs, log_hist], outputs=preview_outputs,
                          trigger_mode="always_last", show_progress="minimal", api_visibility="private", queue=False)
        depth_file.change(**preview_kw)
        for control in [channel, mode, invert, clip_low, clip_high, near, far, long_side, edges, log_hist]:
            control.input(**preview_kw)

        @user_facing
        def ui_estimate(photo_v, request: gr.Request):
            depth = h.estimate_photo_depth(studio, request.session_hash, photo_v)
            return gate.register(serve(depth)), "off"

        estimate_btn.click(ui_estimate, [photo], [depth_file, invert], api_visibility="private",
                           concurrency_limit=1, concurrency_id="gpu")

        # --- generate --------------------------------------------------------------------------------------------
        @user_facing
        def ui_generate(path, channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side, edges_v, prompt_v, variant_v,
                        steps_v, guidance_v, seed_v, random_v, init_v, strength_v, history_v, request: gr.Request,
                        progress=gr.Progress()):
            ui = dict(depth_file=path, channel=channel_v, mode=mode_v, invert=invert_v, clip_low=lo, clip_high=hi,
                      near=near_v, far=far_v, long_side=side, edges=edges_v, prompt=prompt_v, variant=variant_v,
                      steps=steps_v, guidance=guidance_v, strength=strength_v, init_image=init_v)
            settings = h.depth_settings(channel_v, mode_v, invert_v, lo, hi, near_v, far_v, side, edges=edges_v)
            source = gate.resolve(path)
            init_path = gate.resolve(init_v, "init image") if init_v else None
            outcome = generate_on_gpu(
                source, settings, prompt_v, variant_v, steps_v, guidance_v, _seed_value(seed_v, bool(random_v)),
                init_path, os.path.basename(init_path) if init_path else None, strength_v,
                request.session_hash,
                lambda step, total: progress((step, total), desc="denoising"),
                lambda fraction, message: progress(fraction, desc=message),
            )
            ui["seed"] = outcome.metadata["seed"]
            png, control = serve(outcome.png), serve(outcome.control_png)
            history_v = [*history_v, {**h.history_entry(outcome, ui), "png": png}]
            return (png, (control, png), [png, serve(outcome.sidecar)],
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

        restore_targets = [depth_file, channel, mode, invert, clip_low, clip_high, near, far, long_side, edges,
                           prompt, variant, steps, guidance, seed, randomize, strength]

        def restore(history_v, evt: gr.SelectData):
            s = history_v[evt.index]["settings"]
            return (s["depth_file"], s["channel"], s["mode"], s["invert"], s["clip_low"], s["clip_high"], s["near"],
                    s["far"], s["long_side"], s["edges"], s["prompt"], s["variant"], s["steps"], s["guidance"],
                    s["seed"], False, s["strength"])

        gallery.select(restore, [history], restore_targets, api_visibility="private")

        # --- presets ---------------------------------------------------------------------------------------------
        @user_facing
        def apply_preset(name):
            preset = next((p for p in list_presets() if p.name == name), None)
            if preset is None:
                raise FluxDepthError("choose a preset first")
            d, g = preset.depth, preset.generation
            clip = d.get("clip", DEFAULT_CLIP)
            tier = g.get("variant", manager.variant)
            return (d.get("mode", "auto"), d.get("invert", "auto"), clip[0], clip[1], d.get("near"), d.get("far"),
                    d.get("long_side", DEFAULT_LONG_SIDE), tier if tier in policy.tiers else manager.variant,
                    g.get("steps", DEFAULT_STEPS), g.get("guidance", DEFAULT_GUIDANCE),
                    f"**{preset.name}**: {preset.description}")

        preset_apply.click(apply_preset, [preset_menu],
                           [mode, invert, clip_low, clip_high, near, far, long_side, variant, steps, guidance,
                            preset_status], api_visibility="private").then(**preview_kw)

        @user_facing
        def store_preset(name, mode_v, invert_v, lo, hi, near_v, far_v, side, variant_v, steps_v, guidance_v):
            if not policy.save_presets:
                raise FluxDepthError("saving presets is off on this shared server")
            settings = h.depth_settings(None, mode_v, invert_v, lo, hi, near_v, far_v, side)
            n = settings.normalize
            save_preset(name, {"mode": n.mode, "invert": n.invert, "clip": list(n.clip), "near": n.near,
                               "far": n.far, "long_side": settings.long_side},
                        {"variant": variant_v, "steps": int(steps_v), "guidance": float(guidance_v)})
            names = [p.name for p in list_presets()]
            return gr.update(choices=names, value=name.strip()), f"Saved preset **{name.strip()}**"

        preset_save.click(store_preset, [preset_name, mode, invert, clip_low, clip_high, near, far, long_side,
                                         variant, steps, guidance], [preset_menu, preset_status],
                          api_visibility="private")

        # --- sequence --------------------------------------------------------------------------------------------
        def seq_settings(mode_v, invert_v, side):
            return h.depth_settings(None, mode_v, invert_v, DEFAULT_CLIP[0], DEFAULT_CLIP[1], None, None, side)

        @user_facing
        def ui_seq_prepare(files, mode_v, invert_v, side, request: gr.Request):
            if not files:
                return None, [], ""
            uploads = [gate.resolve(f, "frame") for f in files]
            setup = h.gather_sequence(studio, request.session_hash, uploads, seq_settings(mode_v, invert_v, side),
                                      None)
            labels = ["first", "middle", "last"]
            return setup, [(p, labels[i]) for i, p in enumerate(setup.previews)], setup.summary

        for trigger in (seq_files.change, seq_mode.input, seq_invert.input, seq_long.release):
            trigger(ui_seq_prepare, [seq_files, seq_mode, seq_invert, seq_long],
                    [seq_setup, seq_previews, seq_summary], api_visibility="private", trigger_mode="always_last")

        @user_facing
        def ui_seq_render(setup, mode_v, invert_v, side, prompt_v, variant_v, steps_v, guidance_v, fps_v, seed_v,
                          random_v, request: gr.Request, progress=gr.Progress()):
            from dataclasses import replace

            if setup is None:
                raise FluxDepthError("add the sequence's frames first")
            setup = h.SequenceSetup(setup.folder, setup.frames,
                                    replace(setup.stats, seed=_seed_value(seed_v, bool(random_v))),
                                    setup.previews, setup.summary)
            report, video, control_video, seed_v, stats_file = h.run_sequence(
                studio, request.session_hash, setup, seq_settings(mode_v, invert_v, side), prompt_v, variant_v,
                steps_v, guidance_v, float(fps_v or 24),
                on_frame=lambda i, n, frame, status: progress((i, n), desc=f"frame {frame.number} {status}"),
            )
            message = (f"Done: {len(report.rendered)} frames rendered, {len(report.skipped)} unchanged and kept · seed "
                       f"**{seed_v}** · {report.seconds:.1f} s")
            return ([(serve(p), f"frame {os.path.basename(p).split('.')[1]}") for p in report.outputs], serve(video),
                    [serve(video), serve(control_video), serve(stats_file)], message, seed_v)

        seq_render.click(ui_seq_render,
                         [seq_setup, seq_mode, seq_invert, seq_long, seq_prompt, variant, seq_steps, seq_guidance,
                          seq_fps, seq_seed, seq_random],
                         [seq_gallery, seq_video, seq_downloads, seq_status, seq_seed],
                         concurrency_limit=1, concurrency_id="gpu", api_visibility="private")
        seq_cancel.click(ui_cancel, None, seq_status, queue=False, api_visibility="private")

        # --- API -------------------------------------------------------------------------------------------------
        @user_facing
        def api_preview(depth: FileData, channel: str = "auto", mode: str = "auto", invert: str = "auto",
                        clip_low: float = DEFAULT_CLIP[0], clip_high: float = DEFAULT_CLIP[1], near: float = 0.0,
                        far: float = 0.0, long_side: int = DEFAULT_LONG_SIDE, edges: str = DEFAULT_EDGES,
                        polarity: str = "auto",
                        request: gr.Request = None) -> tuple[FileData, dict[str, Any]]:
            """Normalize a depth file the way the model needs it.

            Returns the control map as a 16-bit greyscale PNG (near = white, background 0) and its stats (channel,
            mode, inverted, width, height, valid_fraction, range, crop, edge_pixels, warnings, ...). near/far of 0
            mean unset; edges: snap, near, far or off; polarity (made images with near/far): auto, near-white or
            near-black.
            """
            settings = h.depth_settings(channel, mode, invert, clip_low, clip_high, near, far, long_side, edges=edges,
                                        polarity=polarity)
            source = gate.resolve(depth, record_only=True)
            slot = preview_slot()
            try:
                result = h.run_preview(studio, source, settings)
                png = h.write_control_png(studio, request.session_hash if request else None, result)
            finally:
                slot.release()
            return FileData(path=serve(png)), result.stats.to_dict()

        @user_facing
        def api_generate(depth: FileData, prompt: str, seed: int = -1, steps: int = DEFAULT_STEPS,
                         guidance: float = DEFAULT_GUIDANCE, variant: str = "", channel: str = "auto",
                         mode: str = "auto", invert: str = "auto", clip_low: float = DEFAULT_CLIP[0],
                         clip_high: float = DEFAULT_CLIP[1], near: float = 0.0, far: float = 0.0,
                         long_side: int = DEFAULT_LONG_SIDE, init_image: FileData | None = None,
                         strength: float = DEFAULT_STRENGTH, edges: str = DEFAULT_EDGES,
                         polarity: str = "auto", request: gr.Request = None) -> tuple[FileData, dict[str, Any]]:
            """Generate an image from a depth file and a prompt.

            seed -1 draws one (it is reported); variant "" keeps the loaded tier (bf16, qint8, qint4 or fp8).
            Returns the PNG (settings in its text chunks) and the metadata record.
            """
            settings = h.depth_settings(channel, mode, invert, clip_low, clip_high, near, far, long_side, edges=edges,
                                        polarity=polarity)
            source = gate.resolve(depth, record_only=True)
            init_path = gate.resolve(init_image, "init image", record_only=True) if init_image else None
            if not isinstance(prompt, str):
                raise FluxDepthError("prompt must be text")
            if variant and not isinstance(variant, str):
                raise FluxDepthError("variant must be one of " + ", ".join(policy.tiers))
            outcome = generate_on_gpu(
                source, settings, prompt, variant or manager.variant, steps, guidance, _seed_value(seed), init_path,
                os.path.basename(init_path) if init_path else None, strength,
                request.session_hash if request else None, None, None,
            )
            return FileData(path=serve(outcome.png)), outcome.metadata

        gr.api(api_preview, api_name="preview", queue=False)
        gr.api(api_generate, api_name="generate", concurrency_limit=1, concurrency_id="gpu")

        def end_session(request: gr.Request):
            studio.end_session(request.session_hash)

        demo.unload(end_session)
    return demo


def allowed_paths(studio: h.Studio) -> list[str]:
    """Only the bundled examples are served from disk; results are served as copies in gradio's cache."""
    return [str(EXAMPLE_FOLDER)]
