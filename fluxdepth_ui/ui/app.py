"""The FluxDepth Studio Blocks app: the layout (layout.py) wired to the handlers (handlers.py), plus the API.

Each group of events is one function below; the work itself is in handlers.py, which takes plain values and one
settings record, so it is tested without a browser (tests/test_handlers.py).
"""

from __future__ import annotations

import contextlib
import html
import inspect
import os
import queue
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import gradio as gr
from gradio import FileData

from ..defaults import DEFAULT_FPS, DEFAULT_STEPS
from ..errors import FluxDepthError, one_line
from ..image_files import check_formats
from ..loras import resolve_lora
from ..presets import delete_preset, list_presets, save_preset
from ..settings import form_field, form_from_sections, preset_sections, shot_fields
from . import handlers as h
from .examples import FOLDER as EXAMPLE_FOLDER, example_paths
from .layout import (
    LORA_SLOTS, build_layout, depth_fields, form_components, generation_fields, remembered_fields, sequence_fields,
    shot_names, tier_choices,
)
from .sharing import DAY, UploadGate, as_toast, user_facing

# Previews are cheap and must answer while generations wait: they bypass the queue (whose size bounds only the
# GPU work) and take one of these slots instead (docs/sharing.md).
PREVIEW_SLOTS = 4
PREVIEW_WAIT_S = 30.0
PREVIEW_OUTPUTS = ("preview_img", "raw_plot", "control_plot", "stats", "channel")
# Ctrl/Cmd+Enter generates, Ctrl/Cmd+Shift+Enter generates again with a new seed, Escape cancels the running image
# (as a DCC's render and stop keys).
GENERATE_SHORTCUT_JS = """() => {
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      const generate = document.querySelector("#generate");
      const button = event.shiftKey ? document.querySelector("#generate-new-seed") : generate;
      event.preventDefault();
      event.stopPropagation();  // a focused control (a checkbox) must not act on the Enter as well
      if (button && generate && !generate.disabled) { button.click(); }
    } else if (event.key === "Escape") {
      const generate = document.querySelector("#generate");
      const cancel = document.querySelector("#cancel");
      if (cancel && generate && generate.disabled) { event.preventDefault(); cancel.click(); }
    }
  }, true);  // capture: before the focused control sees the key
}"""


@dataclass
class Wiring:
    """What every event needs: the services, the components, the upload gate, the preview slots."""

    studio: h.Studio
    demo: gr.Blocks
    w: SimpleNamespace
    gate: UploadGate
    preview_slots: threading.BoundedSemaphore

    def serve(self, path: str) -> str:
        """Results are handed out as copies in gradio's cache: the outputs folder itself is never served."""
        from gradio.processing_utils import save_file_to_cache

        return save_file_to_cache(path, self.demo.GRADIO_CACHE)

    @contextlib.contextmanager
    def preview_slot(self):
        if not self.preview_slots.acquire(timeout=PREVIEW_WAIT_S):
            raise FluxDepthError("the server is busy with other previews; try again in a moment")
        try:
            yield
        finally:
            self.preview_slots.release()

    def history_page(self, owner, page):
        entries, page, pages = h.list_history(self.studio, owner, page)
        entries = [{**e, "png": self.serve(e["png"])} for e in entries]
        where = f"page {page + 1} of {pages}" if entries else "no results yet"
        return [(e["png"], e["caption"]) for e in entries], entries, page, where

    def components(self, *names: str) -> list:
        return [getattr(self.w, n) for n in names]

    def record(self, data: dict) -> dict:
        """gradio's dict of component -> value (inputs given as a set) as a settings record keyed by name."""
        names = {id(component): name for name, component in vars(self.w).items()}
        return {names[id(component)]: value for component, value in data.items()}

    def shot_form(self, data: dict) -> tuple[dict, Any]:
        """(the page's form as a shot, the page's history): its files resolved through the upload gate, so a shot
        only ever opens what this client uploaded."""
        form = self.record(data)
        history = form.pop("history")
        form["depth_file"] = self.gate.resolve(form["depth_file"])
        if form["init_image"]:
            form["init_image"] = self.gate.resolve(form["init_image"], "init image")
        return form, history


def session_of(request) -> str | None:
    """The browser session of a request; API clients have one, an MCP tool call has none (shared "local")."""
    return getattr(request, "session_hash", None) if request is not None else None


def _gpu(fn):
    """On ZeroGPU Spaces, reserve the GPU for about as long as the steps need; elsewhere a no-op."""
    try:
        import spaces  # type: ignore
    except ImportError:
        return fn

    def duration(studio, session, form, *rest, **kwargs):
        try:
            steps = min(100, int(float(form.get("steps", DEFAULT_STEPS))))
            images = min(h.MAX_BATCH, max(1, int(float(form.get("batch") or 1))))
        except (TypeError, ValueError):
            steps, images = DEFAULT_STEPS, 1
        return int(20 + 1.0 * steps * images)

    return spaces.GPU(duration=duration)(fn)


generate_on_gpu = _gpu(h.generate_batch_from_form)


def build_app(studio: h.Studio) -> gr.Blocks:
    policy = studio.policy
    # gradio's own cache (uploads, served results) ages out with the session folders.
    delete_cache = (3600, int(policy.keep_days * DAY)) if policy.keep_days else None
    demo, w = build_layout(studio, delete_cache)
    app = Wiring(studio, demo, w, UploadGate(demo, example_paths(), trust_cache=policy.mcp), threading.BoundedSemaphore(PREVIEW_SLOTS))
    with demo:
        preview_kw = wire_preview(app)
        wire_generate(app)
        wire_queue(app)
        wire_history(app)
        wire_fix(app)
        wire_presets(app, preview_kw)
        wire_sequence(app)
        wire_api(app)
        wire_memory(app)

        def end_session(request: gr.Request):
            # gradio runs this when any client closes /heartbeat/{id}, logged in or not: on a server with a login,
            # only a logged-in client ends a session (issue 24: a cookie-less loop broke logged-in previews).
            if demo.auth and not getattr(request, "username", None):
                return
            studio.end_session(request.session_hash)

        demo.unload(end_session)
        # Ctrl/Cmd+Enter generates from anywhere on the page (as in a DCC's render shortcut).
        demo.load(None, None, None, js=GENERATE_SHORTCUT_JS)
    return demo


def wire_preview(app: Wiring) -> dict:
    """Every depth control redraws the control map, its histograms and stats (outside the queue)."""
    studio, w = app.studio, app.w
    names = depth_fields() + ("log_hist",)

    def ui_preview(data: dict, request: gr.Request):
        form = app.record(data)
        try:
            h.depth_from_form(form)
        except FluxDepthError as exc:  # a typo in a box: say so, and keep the map and histograms last shown
            keep = gr.update()
            return keep, keep, keep, f"⚠ **{h.md_text(one_line(str(exc)))}**", keep
        try:
            return user_facing(preview_panel)(form, request.session_hash)
        except gr.Error as exc:  # outside the queue an error cannot be a toast: it shows where the artist looks
            return None, None, None, f"⚠ **{h.md_text(html.unescape(exc.message))}**", rescue_channels(form)

    def rescue_channels(form: dict):
        """When no depth channel is found by name, the Channel menu offers every channel of the file."""
        try:
            path = app.gate.resolve(form["depth_file"])
        except FluxDepthError:
            return gr.update()
        return gr.update(choices=h.file_channels(path))

    def preview_panel(form: dict, session: str):
        if not form["depth_file"]:
            return None, None, None, "", gr.update(choices=[h.AUTO_CHANNEL], value=h.AUTO_CHANNEL)
        settings = h.depth_from_form(form)
        source = app.gate.resolve(form["depth_file"])
        with app.preview_slot():
            result = h.run_preview(studio, source, settings, bool(form["log_hist"]), session=session)
            png = h.write_control_png(studio, session, result)
        raw_df, control_df = h.histogram_frames(result)
        choices = h.channel_choices(result)
        value = form["channel"] if form["channel"] in choices else h.AUTO_CHANNEL
        raw_update = gr.update(value=raw_df, x_title=raw_df.attrs["unit"])
        return png, raw_update, control_df, h.stats_markdown(result), gr.update(choices=choices, value=value)

    preview_kw = dict(fn=ui_preview, inputs=set(app.components(*names)),
                      outputs=app.components(*PREVIEW_OUTPUTS), trigger_mode="always_last",
                      show_progress="minimal", api_visibility="private", queue=False)
    w.depth_file.change(**preview_kw)
    for control in app.components(*names[1:]):
        control.input(**preview_kw)

    @as_toast(2, status=1)
    def ui_estimate(photo, request: gr.Request):
        made = h.estimate_photo_depth(studio, request.session_hash, photo)
        served = app.gate.register(app.serve(made))
        studio.remember_made(served, None, alias_of=made)
        return served, "Depth estimated: it is now the depth file (near = white)."

    w.estimate_btn.click(ui_estimate, [w.photo], [w.depth_file, w.estimate_status], api_visibility="private",
                         concurrency_limit=1, concurrency_id="gpu", show_progress_on=[w.estimate_status])
    return preview_kw


def wire_generate(app: Wiring) -> None:
    studio, w = app.studio, app.w
    names = depth_fields() + generation_fields()

    @as_toast(len(SHOWN_AFTER_IMAGE), status=SHOWN_AFTER_IMAGE.index("status"))
    def ui_generate(data: dict, request: gr.Request, progress=gr.Progress()):
        form, history = app.shot_form(data)
        yield from generate_and_show_live(app, form, history, request.session_hash, progress)

    # Generate is disabled while this session's job runs (a second click would queue a second image).
    def ui_arm(request: gr.Request):
        studio.arm_cancel(request.session_hash)
        return gr.update(interactive=False, value="Generating…")

    def ui_generate_new_seed(data: dict, request: gr.Request, progress=gr.Progress()):
        """Ctrl/Cmd+Shift+Enter: the same shot again with a newly drawn seed (the seed box then shows it); errors
        are ui_generate's one line."""
        yield from ui_generate({**data, w.randomize: True}, request, progress)

    for button, handler in ((w.generate_btn, ui_generate), (w.new_seed_btn, ui_generate_new_seed)):
        button.click(ui_arm, None, w.generate_btn, queue=False, api_visibility="private").then(
            handler, inputs={*form_components(w), w.history, w.owner},
            outputs=app.components(*SHOWN_AFTER_IMAGE),
            concurrency_limit=1, concurrency_id="gpu", api_visibility="private").then(
            lambda: gr.update(interactive=True, value="Generate"), None, w.generate_btn, queue=False,
            api_visibility="private")

    def ui_cancel(request: gr.Request):
        studio.cancel_event(request.session_hash).set()
        return "Cancelling after the current step…"

    w.cancel_btn.click(ui_cancel, None, w.status, queue=False, api_visibility="private")

    @as_toast(1)
    def ui_budget(value):
        return h.set_vram_budget(studio, value)

    # Serialized with generations: the reload never pulls the model from under a running image.
    w.vram_budget.submit(ui_budget, [w.vram_budget], [w.status], concurrency_limit=1, concurrency_id="gpu",
                         api_visibility="private")

    @as_toast(1)
    def ui_headroom(value):
        return h.set_vram_headroom(studio, value)

    w.vram_headroom.submit(ui_headroom, [w.vram_headroom], [w.status], concurrency_limit=1, concurrency_id="gpu",
                           api_visibility="private")
    w.seq_cancel.click(ui_cancel, None, w.seq_status, queue=False, api_visibility="private")

    restored = [n for n in names if n != "init_image"]

    def restore(history, evt: gr.SelectData):
        record = history[evt.index]["settings"]
        return tuple(False if n == "randomize" else record[n] if n in record else gr.update() for n in restored)

    w.gallery.select(restore, [w.history], app.components(*restored), api_visibility="private")



# What a page shows after a Generate or a Regenerate region (generate_and_show's values, in this order).
SHOWN_AFTER_IMAGE = ("result_img", "compare", "downloads", "gallery", "history", "status", "seed", "history_page",
                     "history_where")


# The live preview as sent to the page: the result slot is 340 px high, and over a share link a full-size PNG every
# few steps (1-2 MB each) would queue behind itself; a 512 px JPEG is tens of KB.
LIVE_PREVIEW_LONG_SIDE = 512


class LivePreviewFiles:
    """The live preview's images, written to gradio's cache as small JPEGs and removed once the image is done: a
    studio makes hundreds of images a day, and their previews must not pile up in the temporary folder."""

    def __init__(self, cache_dir: str):
        self.cache_dir = cache_dir
        self.paths: list[str] = []

    def add(self, image) -> str:
        from gradio.processing_utils import save_pil_to_cache

        small = image.convert("RGB")
        small.thumbnail((LIVE_PREVIEW_LONG_SIDE, LIVE_PREVIEW_LONG_SIDE))
        path = save_pil_to_cache(small, self.cache_dir, name="live-preview", format="jpeg")
        self.paths.append(path)
        return path

    def remove_all(self) -> None:
        for path in self.paths:
            with contextlib.suppress(OSError):
                os.remove(path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))  # gradio's folder per content hash, now empty
        self.paths.clear()


def generate_and_show_live(app: Wiring, form: dict, history, session, progress):
    """generate_and_show, with the live preview (docs/live-preview.md) shown in the result slot while the image
    forms: the image is made in a worker thread, and each preview it hands over is sent to the page as it comes."""
    if not app.studio.live_preview_every:
        yield generate_and_show(app, form, history, session, progress)
        return
    previews: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            outcome["shown"] = generate_and_show(app, form, history, session, progress,
                                                 on_preview=lambda *preview: previews.put(preview))
        except BaseException as exc:  # noqa: BLE001 - handed to the page's thread, raised there
            outcome["error"] = exc
        finally:
            previews.put(None)

    threading.Thread(target=work, name="generate", daemon=True).start()
    keep = gr.skip()
    status = SHOWN_AFTER_IMAGE.index("status")
    files = LivePreviewFiles(app.demo.GRADIO_CACHE)
    try:
        try:
            while (preview := previews.get()) is not None:
                step, total, image = preview
                updates = [files.add(image)] + [keep] * (len(SHOWN_AFTER_IMAGE) - 1)
                updates[status] = f"Step {step} of {total}: the image forming (live preview)"
                yield tuple(updates)
        except GeneratorExit:  # the page went away mid-image: stop the worker at its next step
            app.studio.cancel_event(session).set()
            raise
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["shown"]
    finally:
        files.remove_all()


def generate_and_show(app: Wiring, form: dict, history, session, progress, on_preview=None) -> tuple:
    """Run one Generate (or Regenerate region) of a page and what the page shows after it (SHOWN_AFTER_IMAGE)."""
    from ..pipeline.errors import GenerationCancelled

    try:
        outcomes = generate_on_gpu(app.studio, session, form,
                                   lambda step, total: progress((step, total), desc="denoising"),
                                   lambda fraction, message: progress(fraction, desc=message), on_preview)
    except GenerationCancelled as exc:  # the artist's own choice: a status line, not an error
        keep = gr.update()
        return keep, keep, keep, keep, history, f"Cancelled ({exc}).", keep, keep, keep
    files = []
    for outcome in outcomes:
        files += [app.serve(outcome.png), app.serve(outcome.sidecar),
                  *(app.serve(p) for p in outcome.extras.values())]
    first = outcomes[0]
    png, control = files[0], app.serve(first.control_png)
    message = first.message if len(outcomes) == 1 else (
        f"{len(outcomes)} images, seeds " + ", ".join(str(o.metadata["seed"]) for o in outcomes)
        + " · click one in History to continue from it")
    # Every image of a batch is in History (newest first) with its own seed.
    gallery, history, page, where = app.history_page(form.get("owner"), 0)
    return png, (control, png), files, gallery, history, message, first.metadata["seed"], page, where


QUEUE_SHOWN = ("queue_panel", "queue_list", "queue_pick")  # what a page shows of its queue (queue_view's values)


def queue_view(queue: h.ShotQueue) -> tuple:
    """The queue panel: shown while there are shots, one line each (prompts are a visitor's text: escaped)."""
    rows = queue.rows()
    lines = [f"**{place}** · {state}: {h.md_text(label)}" for place, label, state in rows]
    return gr.update(visible=bool(rows)), "  \n".join(lines), gr.update(choices=queue.choices(), value=None)


def wire_queue(app: Wiring) -> None:
    """Queue: the form as it is now joins this browser's queue; its shots render one after another (each with the
    live preview when on), the page lists them with their place, Cancel stops the one rendering and Remove takes
    a waiting one out (docs/queue.md)."""
    studio, w = app.studio, app.w
    status = len(QUEUE_SHOWN)

    @as_toast(len(QUEUE_SHOWN) + 1, status=status)
    def ui_queue_add(data: dict, request: gr.Request):
        form, _history = app.shot_form(data)
        queue = studio.queue_of(request.session_hash)
        queued = queue.add(form)
        place = len(queue.waiting) + (queue.running is not None)
        return (*queue_view(queue), f"Queued: {h.md_text(queued.label)} (place {place})")

    def ui_queue_run(history, request: gr.Request, progress=gr.Progress()):
        """Render this browser's waiting shots in turn (a second runner finds nothing left and returns)."""
        session = request.session_hash
        queue = studio.queue_of(session)
        keep = [gr.skip()] * len(SHOWN_AFTER_IMAGE)
        status_at = SHOWN_AFTER_IMAGE.index("status")
        while (shot := queue.start_next()) is not None:
            studio.arm_cancel(session)
            try:
                for values in user_facing(generate_and_show_live)(app, dict(shot.form), history, session, progress):
                    if isinstance(values[SHOWN_AFTER_IMAGE.index("history")], list):
                        history = values[SHOWN_AFTER_IMAGE.index("history")]
                    yield (*values, *queue_view(queue))
            except gr.Error as exc:  # this shot's one line; the next shot still renders
                failed = list(keep)
                failed[status_at] = f"⚠ {h.md_text(shot.label)}: {h.md_text(html.unescape(exc.message))}"
                yield (*failed, *queue_view(queue))
            finally:
                queue.done()
        yield (*keep, *queue_view(queue))

    # trigger_mode "multiple": a click while earlier shots render still queues (gradio's default ignores it).
    w.queue_btn.click(ui_queue_add, inputs={*form_components(w), w.history, w.owner},
                      outputs=app.components(*QUEUE_SHOWN, "status"), queue=False, api_visibility="private",
                      trigger_mode="multiple").then(
        ui_queue_run, [w.history], app.components(*SHOWN_AFTER_IMAGE, *QUEUE_SHOWN), concurrency_limit=1,
        concurrency_id="gpu", api_visibility="private", show_progress_on=[w.result_img])

    def ui_queue_remove(ident, request: gr.Request):
        queue = studio.queue_of(request.session_hash)
        if ident is None:
            return (*queue_view(queue), "Choose a waiting shot to remove.")
        removed = queue.remove(int(ident))
        return (*queue_view(queue), "Removed from the queue." if removed else "That shot has already started.")

    w.queue_remove.click(ui_queue_remove, [w.queue_pick], app.components(*QUEUE_SHOWN, "status"), queue=False,
                         api_visibility="private")

    def ui_queue_clear(request: gr.Request):
        queue = studio.queue_of(request.session_hash)
        count = queue.clear()
        return (*queue_view(queue), f"{count} waiting shot{'s' if count != 1 else ''} removed; the one rendering "
                                    "goes on (Cancel stops it).")

    w.queue_clear.click(ui_queue_clear, None, app.components(*QUEUE_SHOWN, "status"), queue=False,
                        api_visibility="private")


def wire_fix(app: Wiring) -> None:
    """Fix a region: the current result into the editor; Regenerate region runs the same shot on it with the
    painted mask (inpainting) and the form's settings, at the region's own strength."""
    studio, w = app.studio, app.w

    @as_toast(1)
    def ui_fix_load(result):
        if not result:
            raise FluxDepthError("no result yet: generate an image first")
        return {"background": result, "layers": [], "composite": result}

    w.fix_load.click(ui_fix_load, [w.result_img], [w.fix_editor], api_visibility="private")

    @as_toast(len(SHOWN_AFTER_IMAGE), status=SHOWN_AFTER_IMAGE.index("status"))
    def ui_fix(data: dict, request: gr.Request, progress=gr.Progress()):
        form = app.record(data)
        history, editor = form.pop("history"), form.pop("fix_editor")
        form["depth_file"] = app.gate.resolve(form["depth_file"])
        form["init_image"], form["mask"] = h.region_to_fix(studio, request.session_hash, editor)
        form.update(strength=form.pop("fix_strength"), batch=1, plate=False)
        yield from generate_and_show_live(app, form, history, request.session_hash, progress)

    def ui_arm_fix(request: gr.Request):
        studio.arm_cancel(request.session_hash)

    w.fix_btn.click(ui_arm_fix, None, None, queue=False, api_visibility="private").then(
        ui_fix, inputs={*form_components(w), w.history, w.owner, w.fix_editor, w.fix_strength},
        outputs=app.components(*SHOWN_AFTER_IMAGE), concurrency_limit=1, concurrency_id="gpu",
        api_visibility="private")


def wire_history(app: Wiring) -> None:
    """History: the results on disk, newest first, a page at a time; this browser's key made on its first visit."""
    w = app.w

    def ui_owner(owner):
        """This browser's key (made on its first visit) and the first page of its History."""
        owner = h.new_owner_key(owner)
        return (owner, *app.history_page(owner, 0))

    history_out = [w.gallery, w.history, w.history_page, w.history_where]
    app.demo.load(ui_owner, [w.owner], [w.owner, *history_out], api_visibility="private", show_progress="hidden")
    pages = [w.owner, w.history_page]
    w.history_newer.click(lambda owner, page: app.history_page(owner, page - 1), pages, history_out,
                          api_visibility="private")
    w.history_older.click(lambda owner, page: app.history_page(owner, page + 1), pages, history_out,
                          api_visibility="private")


def preset_lora_slots(loras, folder) -> list:
    """A preset's style LoRAs as the app's slot values (name, scale, name, scale): ones this studio's folder does
    not hold are left empty (the preset still applies without them, docs/loras.md)."""
    from ..loras import available_loras
    from ..settings import StyleLora

    have = set(available_loras(folder))
    values = []
    for item in list(loras or [])[:len(LORA_SLOTS)]:
        lora = StyleLora.from_value(item)
        values += [lora.name, lora.scale] if lora.name in have else ["", 1.0]
    while len(values) < 2 * len(LORA_SLOTS):
        values += ["", 1.0]
    return values


def wire_presets(app: Wiring, preview_kw: dict) -> None:
    studio, w, policy = app.studio, app.w, app.studio.policy
    lora_slots = tuple(name for slot in LORA_SLOTS for name in slot)
    # What a preset sets: every setting of the schema it keeps (settings.preset_sections), the tier, the LoRA slots.
    settings = tuple(f.name for f in shot_fields() if f.spec.preset and f.spec.kind is not tuple)
    targets = (*settings, "variant", *lora_slots)

    def menu(value=None):
        return gr.update(choices=[p.name for p in list_presets()], value=value)

    @as_toast(len(targets) + 1)
    def apply_preset(name):
        """The preset's own settings; the ones it does not name stay as they are."""
        preset = next((p for p in list_presets() if p.name == name), None)
        if preset is None:
            raise FluxDepthError("choose a preset first")
        generation = dict(preset.generation)
        tier = generation.pop("variant", None)
        form = form_from_sections({"depth": preset.depth, "generation": generation})
        values = [form[n] if n in form else gr.update() for n in settings]
        values.append(tier if tier in policy.tiers else gr.update())
        if "loras" in form:
            values += preset_lora_slots(form["loras"], studio.manager.lora_dir)
        else:
            values += [gr.update()] * len(lora_slots)
        return (*values, f"**{h.md_text(preset.name)}**: {h.md_text(preset.description)}")

    w.preset_apply.click(apply_preset, [w.preset_menu], [*app.components(*targets), w.preset_status],
                         api_visibility="private").then(**preview_kw)

    @as_toast(2)
    def store_preset(name, overwrite, *values):
        if not policy.save_presets:
            raise FluxDepthError("saving presets is off on this shared server")
        form = dict(zip(targets, values))
        sections = preset_sections(h.shot_from_form(form))
        save_preset(name, sections["depth"], {**sections["generation"], "variant": form["variant"]},
                    overwrite=bool(overwrite))
        return menu(name.strip()), f"Saved preset **{h.md_text(name.strip())}**"

    w.preset_save.click(store_preset, [w.preset_name, w.preset_overwrite, *app.components(*targets)],
                        [w.preset_menu, w.preset_status], api_visibility="private")

    @as_toast(2)
    def remove_preset(name):
        if not policy.save_presets:
            raise FluxDepthError("deleting presets is off on this shared server")
        delete_preset(name)
        return menu(), f"Deleted preset **{h.md_text(name)}**"

    w.preset_delete.click(remove_preset, [w.preset_menu], [w.preset_menu, w.preset_status], api_visibility="private")
    # The menu is read again on every page load: presets saved in another tab or session show up after a reload.
    app.demo.load(menu, None, w.preset_menu, api_visibility="private", show_progress="hidden")


SEQUENCE_LORA_SLOTS = tuple(name for slot in LORA_SLOTS for name in slot)


def sequence_shot(form: dict):
    """The sequence's shot: its own controls, the single frame's style LoRA slots, the sequence's one seed."""
    values = {name[len("seq_"):]: form[name] for name in sequence_fields() if name in form}
    values.update({name: form[name] for name in SEQUENCE_LORA_SLOTS if name in form})
    if "seq_seed" in form:
        values.update(seed=form["seq_seed"], randomize=bool(form.get("seq_random")))
    return h.shot_from_form(values)


def wire_sequence(app: Wiring) -> None:
    """The Sequence tab: the same settings as the single frame (prefixed seq_), one shared range, one seed, one zip.
    Changing the frames or a depth setting prepares the previews; Render all frames: `wire_sequence_render`."""
    studio, w = app.studio, app.w
    depth_names = tuple("seq_" + n for n in shot_names("depth"))

    def depth_of(form: dict):
        return sequence_shot(form).depth

    @as_toast(4, status=2)
    def ui_seq_prepare(data: dict, request: gr.Request):
        form = app.record(data)
        if not form["seq_files"]:
            return None, [], "", gr.update(choices=[h.AUTO_CHANNEL], value=h.AUTO_CHANNEL)
        settings = depth_of(form)
        uploads = [app.gate.resolve(f, "frame") for f in form["seq_files"]]
        try:
            setup = h.gather_sequence(studio, request.session_hash, uploads, settings, None)
        except FluxDepthError as exc:
            # As on the single frame: the error where the artist looks, and every channel of the first frame in
            # the Channel menu (the rescue when no depth channel is found by name).
            channels = h.sequence_channels(studio, request.session_hash, uploads)
            return None, [], f"⚠ **{h.md_text(one_line(str(exc)))}**", gr.update(choices=channels)
        labels = ["first", "middle", "last"]
        value = form["seq_channel"] if form["seq_channel"] in setup.channels else h.AUTO_CHANNEL
        return (setup, [(p, labels[i]) for i, p in enumerate(setup.previews)], setup.summary,
                gr.update(choices=list(setup.channels), value=value))

    inputs = {w.seq_files, *app.components(*depth_names)}
    outputs = [w.seq_setup, w.seq_previews, w.seq_summary, w.seq_channel]
    w.seq_files.change(ui_seq_prepare, inputs, outputs, api_visibility="private", trigger_mode="always_last")
    for name in depth_names:
        control = getattr(w, name)
        trigger = control.release if name == "seq_long_side" else control.input
        trigger(ui_seq_prepare, inputs, outputs, api_visibility="private", trigger_mode="always_last")
    wire_sequence_render(app)


def wire_sequence_render(app: Wiring) -> None:
    studio, w = app.studio, app.w

    @as_toast(5, status=3)
    def ui_seq_render(data: dict, request: gr.Request, progress=gr.Progress()):
        from dataclasses import replace

        form = app.record(data)
        setup = form["seq_setup"]
        if setup is None:
            raise FluxDepthError("add the sequence's frames first")
        shot = sequence_shot(form)
        setup = replace(setup, stats=replace(setup.stats, seed=shot.generation.seed))
        done = h.run_sequence(
            studio, request.session_hash, setup, shot, form["variant"],
            float(form["seq_fps"] or DEFAULT_FPS), formats=form["seq_also_save"],
            on_frame=lambda i, n, frame, status: progress((i, n), unit="frames",
                                                          desc=f"frame {frame.number} {status}"),
            load_progress=lambda fraction, message: progress(fraction, desc=message))
        report = done.report
        message = (f"Done: {len(report.rendered)} frames rendered, {len(report.skipped)} unchanged and kept · seed "
                   f"**{done.seed}** · {report.seconds:.1f} s · everything in one zip under Downloads")
        return ([(app.serve(p), f"frame {os.path.basename(p).split('.')[1]}") for p in report.outputs],
                app.serve(done.video), [app.serve(done.archive), app.serve(done.video),
                                        app.serve(done.control_video)], message, done.seed)

    # As Generate: the button is off while the frames render (a second click would queue the sequence again).
    def ui_arm_render(request: gr.Request):
        studio.arm_cancel(request.session_hash)
        return gr.update(interactive=False, value="Rendering…")

    w.seq_render.click(ui_arm_render, None, w.seq_render, queue=False, api_visibility="private").then(
        ui_seq_render,
        {w.seq_setup, *app.components(*sequence_fields()), w.variant, w.seq_fps, w.seq_seed, w.seq_random,
         w.seq_also_save, *app.components(*SEQUENCE_LORA_SLOTS)},
        [w.seq_gallery, w.seq_video, w.seq_downloads, w.seq_status, w.seq_seed],
        # The frames' progress shows on the gallery they fill, not over the Seed box (it is an output only to report
        # the seed drawn).
        concurrency_limit=1, concurrency_id="gpu", api_visibility="private", show_progress_on=[w.seq_gallery]).then(
        lambda: gr.update(interactive=True, value="Render all frames"), None, w.seq_render, queue=False,
        api_visibility="private")


def wire_memory(app: Wiring) -> None:
    """Settings survive a reload: each change is stored in the browser (gr.BrowserState) and restored on load."""
    w, tiers = app.w, app.studio.policy.tiers
    names = remembered_fields()
    controls = app.components(*names)

    def remember(data: dict) -> dict:
        return app.record(data)

    for control in controls:
        # Queued (a BrowserState is written back through the queue), never waiting on a generation.
        control.change(remember, inputs=set(controls), outputs=w.remembered, api_visibility="private",
                       trigger_mode="always_last", show_progress="hidden", concurrency_limit=None)

    def recall(saved: dict):
        saved = saved if isinstance(saved, dict) else {}
        values = []
        for name in names:
            value = saved.get(name)
            usable = value is not None and not (name == "variant" and value not in tiers)
            values.append(value if usable else gr.update())
        return tuple(values)

    # Page-load restores show no progress overlay: a flash of spinners over the controls on every visit.
    app.demo.load(recall, [w.remembered], controls, api_visibility="private", show_progress="hidden")
    # Tier labels carry the step times measured on this machine: re-read on each page load (after images ran).
    app.demo.load(lambda: gr.update(choices=tier_choices(app.studio)), None, w.variant, api_visibility="private",
                  show_progress="hidden")


# Positional callers of /preview and /generate rely on this order (the endpoints grew a parameter at a time);
# settings added to the schema later follow it, so no caller's arguments shift.
PREVIEW_API_ORDER = ("channel", "mode", "invert", "clip_low", "clip_high", "near", "far", "long_side", "edges",
                     "polarity")
GENERATE_API_ORDER = ("prompt", "seed", "steps", "guidance", "variant", "channel", "mode", "invert", "clip_low",
                      "clip_high", "near", "far", "long_side", "init_image", "strength", "edges", "polarity",
                      "also_save", "loras", "plate", "plate_strength", "backend", "vae_tiling", "mask")
# What /generate takes besides the shot's settings: (type, default, its line in the API docs).
GENERATE_API_EXTRAS = {
    "variant": (str, "", "precision tier: bf16, qint8, qint4 or fp8; \"\" keeps the loaded one."),
    "init_image": (FileData | None, None, "optional image to start from (img2img), sent as a file."),
    "mask": (FileData | None, None, "optional mask over init_image, sent as a file: white is regenerated with the "
                                    "same depth file, the rest kept (inpainting)."),
    "also_save": (list[str] | None, None, "extra files from the float decode: \"png16\" (16-bit PNG, sRGB), \"exr\" "
                                          "(half float, linear)."),
    "backend": (str, "local", "\"local\" (this studio's model) or \"bfl\" (FLUX.1 Depth [pro] on BFL's API, when the "
                              "host offers it)."),
}


def api_parameters(order: tuple[str, ...], section: str | None, extras: dict) -> list[inspect.Parameter]:
    """An endpoint's parameters after `depth`: the settings of the schema (settings.shot_fields) with their
    defaults, the form's value for "none" where a setting can be unset (-1 seed, 0 near, "auto" channel)."""
    names = [*order, *(f.name for f in shot_fields() if section in (None, f.section) and f.name not in order)]
    params = []
    for name in names:
        if name in extras:
            annotation, default, _ = extras[name]
        else:
            f = form_field(name)
            spec = f.spec
            if spec.kind is tuple:
                annotation, default = list[str] | None, None
            else:
                annotation = spec.kind
                default = spec.unset if spec.optional else f.default
            if f.required:
                default = inspect.Parameter.empty
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                        annotation=annotation))
    return params


def api_endpoint(name: str, summary: str, params: list[inspect.Parameter], extras: dict, returns, returned_docs,
                 run):
    """A gr.api function made from the schema: its signature, type hints and docstring (what the "Use via API"
    page and the MCP tool list show) come from the settings; `run(depth, values, request)` does the work."""
    depth = inspect.Parameter("depth", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=FileData)
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                annotation=gr.Request)
    signature = inspect.Signature([depth, *params, request], return_annotation=returns)

    def endpoint(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        return run(values.pop("depth"), values, values.pop("request"))

    def line(p):
        if p.name in extras:
            return extras[p.name][2]
        return f"{form_field(p.name).spec.help}."

    args = "\n".join(f"    {p.name}: {line(p)}" for p in params)
    endpoint.__name__ = endpoint.__qualname__ = name
    endpoint.__doc__ = (f"{summary}\n\nArgs:\n    depth: the depth pass as a file (handle_file): EXR (Mantra Pz, Karma "
                        f"depth), PNG, TIFF, PFM, NPY, JPEG.\n{args}\n\nReturns:\n"
                        + "\n".join(f"    {r}" for r in returned_docs))
    endpoint.__signature__ = signature
    endpoint.__annotations__ = {**{p.name: p.annotation for p in signature.parameters.values()}, "return": returns}
    return user_facing(endpoint)


def wire_api(app: Wiring) -> None:
    """`/preview` and `/generate`: the same handlers as the page, taking files sent with handle_file().

    The endpoints' docstrings are what the "Use via API" page and the MCP tool list show (gradio reads "Args:" and
    "Returns:"), so they are written for someone calling from a script or an assistant.
    """
    endpoints = ((preview_endpoint(app), ("control_map", "stats"), dict(api_name="preview", queue=False)),
                 (generate_endpoint(app), ("image", "metadata", "also_saved"),
                  dict(api_name="generate", concurrency_limit=1, concurrency_id="gpu")),
                 (generate_endpoint(app, inpaint=True), ("image", "metadata", "also_saved"),
                  dict(api_name="inpaint", concurrency_limit=1, concurrency_id="gpu")))
    for fn, returned, options in endpoints:
        gr.api(fn, **options)
        document_endpoint(app.demo, options["api_name"], fn, returned)


def document_endpoint(demo: gr.Blocks, api_name: str, fn, returned: tuple[str, ...]) -> None:
    """Give each parameter and return value of a gr.api endpoint its name and its line of the docstring, parsed
    by gradio's own docstring reader, on the "Use via API" page (gr.api itself labels them "1st", "2nd", ...)."""
    from gradio.utils import get_function_description

    _, parameters, returns = get_function_description(fn)
    block_fn = next(f for f in demo.fns.values() if f.api_name == api_name)
    names = [n for n in inspect.signature(fn).parameters if n != "request"]
    for name, component in zip(names, block_fn.inputs):
        component.label = name
        component._api_info = {**component._api_info, "additional_description": parameters.get(name, "")}
    for index, component in enumerate(block_fn.outputs):
        component.label = returned[index]
        component._api_info = {**component._api_info,
                               "description": returns[index] if index < len(returns) else ""}


def preview_endpoint(app: Wiring):
    studio = app.studio

    def run(depth, values: dict, request):
        settings = h.depth_from_form(values)
        source = app.gate.resolve(depth, record_only=True)
        # An API call's control map is written in a folder of its own and served as a copy: concurrent callers
        # (who all lack a page session) never prune or remove each other's files.
        with app.preview_slot(), studio.workspace.scratch() as folder:
            result = h.run_preview(studio, source, settings)
            png = app.serve(h.write_control_png(studio, None, result, folder=folder))
        return FileData(path=png), result.stats.to_dict()

    return api_endpoint(
        "fluxdepth_preview",
        "Normalize a depth file into the control map FLUX.1-Depth-dev is fed (near = white), without generating.",
        api_parameters(PREVIEW_API_ORDER, "depth", {}), {}, tuple[FileData, dict[str, Any]],
        ("the control map as a 16-bit greyscale PNG (near = white, background 0).",
         "its stats: channel, mode, inverted, width, height, valid_fraction, range, crop, edge_pixels, warnings."),
        run)


def generate_endpoint(app: Wiring, inpaint: bool = False):
    """`/generate`, or `/inpaint` (the same with init_image and mask required: fix one region of a result)."""
    studio = app.studio

    def run(depth, values: dict, request):
        if inpaint and not (values.get("init_image") and values.get("mask")):
            raise FluxDepthError("inpaint needs the image (init_image) and the mask (white = regenerate), each sent "
                                 "as a file")
        form = {**values, "batch": 1, "also_save": values["also_save"] or (), "loras": values["loras"] or ()}
        if form["variant"] and not isinstance(form["variant"], str):
            raise FluxDepthError("variant must be one of " + ", ".join(studio.policy.tiers))
        shot = h.shot_from_form(form)  # bad values are refused before the files are looked at
        check_formats(form["also_save"])
        for lora in shot.generation.loras:
            resolve_lora(lora.name, studio.manager.lora_dir, allow_paths=False)
        form["depth_file"] = app.gate.resolve(depth, record_only=True)
        init_image = form["init_image"]
        form["init_image"] = app.gate.resolve(init_image, "init image", record_only=True) if init_image else None
        form["mask"] = app.gate.resolve(form["mask"], "mask", record_only=True) if form.get("mask") else None
        studio.arm_cancel(session_of(request))
        outcome = generate_on_gpu(studio, session_of(request), form, None, None)[0]
        extras = [FileData(path=app.serve(p)) for p in outcome.extras.values()]
        return FileData(path=app.serve(outcome.png)), outcome.metadata, extras

    if inpaint:
        name, summary, record = (
            "fluxdepth_inpaint",
            "Fix one region of an image (init_image) where the mask is white, with FLUX.1-Depth-dev and the same "
            "depth file, keeping everything else; strength 0.9 or more repaints the region fully.",
            "the metadata record, with init_image and inpaint_mask.")
    else:
        name, summary, record = (
            "fluxdepth_generate",
            "Generate an image with FLUX.1-Depth-dev from a depth file and a prompt, keeping the render's layout.",
            "the metadata record: prompt, seed, steps, guidance, size, variant, model, depth channel/mode/range.")
    return api_endpoint(
        name, summary, api_parameters(GENERATE_API_ORDER, None, GENERATE_API_EXTRAS), GENERATE_API_EXTRAS,
        tuple[FileData, dict[str, Any], list[FileData]],
        ("the image as an 8-bit PNG with its settings in the text chunks.", record,
         "the also_save files (16-bit PNG, EXR), empty when none were asked for."),
        run)


def allowed_paths(studio: h.Studio) -> list[str]:
    """Only the bundled examples are served from disk; results are served as copies in gradio's cache."""
    return [str(EXAMPLE_FOLDER)]
