"""The `fluxdepth` command: preview, generate, sequence. Thin: parsing and printing around the library calls."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from .defaults import DEFAULT_DEPTH_LORA_SCALE, DEFAULT_FPS, DEFAULT_VARIANT
from .depth import DepthSettings
from .errors import FluxDepthError, display_name


class UsageError(FluxDepthError):
    """A command line that cannot work: the message names the option and the fix."""


def check_output_file(path: str, option: str, suffixes: tuple[str, ...], create: bool = False) -> str:
    """Refuse a bad output path before any work is done (not after a whole generation)."""
    name = display_name(path)
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise UsageError(f"{option} {name} is a folder; give a file name such as {option} shot.png")
    ext = os.path.splitext(path)[1].lower()
    if ext not in suffixes:
        raise UsageError(f"{option} {name}: the file name must end in {' or '.join(suffixes)}")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise UsageError(f"{option} {name} is not a regular file (a device or a pipe); give a normal file name")
    return check_output_folder(os.path.dirname(os.path.abspath(path)), option, create)


def check_output_folder(folder: str, option: str, create: bool = False) -> str:
    if create:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"{option} {display_name(folder)} exists and is not a folder; pick another path")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{option}: cannot create the folder {display_name(folder)} ({exc.strerror})") from None
    if not os.path.isdir(folder):
        raise UsageError(f"output folder of {option} does not exist; create it or pick another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"output folder of {option} is not writable; pick another path")
    return folder


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one `error: ...` line (exit 2), without the usage dump."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UsageError(message)


def add_depth_arguments(p: argparse.ArgumentParser, metavar: str = "DEPTH",
                        help_text: str = "depth file: EXR, PNG, TIFF, PFM, NPY, JPEG, PGM") -> None:
    from .settings import add_shot_arguments

    g = p.add_argument_group("depth")
    g.add_argument("depth", metavar=metavar, help=help_text)
    add_shot_arguments(g, "depth")  # --channel, --mode, --clip, ... from the settings schema (settings.py)
    g.add_argument("--stats", metavar="STATS.json", help="use a sequence's normalization range (fluxdepth sequence)")


def shot_from_args(args: argparse.Namespace, seed: int | None = None):
    """The shot the options describe (the one codec of settings.py); `seed` replaces --seed when given."""
    from .settings import form_from_args, shot_from_form

    form = form_from_args(args, None if hasattr(args, "prompt") else "depth")
    if "loras" in form:
        form["loras"] = style_loras(args)
    if seed is not None:
        form["seed"] = seed
    return shot_from_form(form)


def depth_settings_from_args(args: argparse.Namespace) -> DepthSettings:
    settings = shot_from_args(args).depth
    if getattr(args, "stats", None) and args.command != "sequence":
        from .sequence import load_stats, settings_with_stats

        return settings_with_stats(settings, load_stats(args.stats))
    return settings


def cmd_preview(args: argparse.Namespace) -> int:
    from .depth import prepare_depth, write_preview_png
    from .depth.preview import stats_json

    check_output_file(args.out, "--out", (".png",))
    result = prepare_depth(args.depth, depth_settings_from_args(args), log_histogram=False)
    write_preview_png(result.control, args.out)
    payload = json.loads(stats_json(result.stats))
    payload["out"] = args.out
    print(json.dumps(payload))
    warn(result.stats.warnings)
    return 0


def warn(lines) -> None:
    """Ambiguities go to stderr as well as into the JSON: a farm log shows them (docs/depth.md)."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _renamed(old: str, new: str):
    """An option that moved: using the old name is exit 2 with the new name (style LoRAs took --lora)."""
    def refuse(value):
        raise UsageError(f"{old} is now {new} (style LoRAs use --lora PATH[:SCALE])")
    return refuse


def style_loras(args: argparse.Namespace) -> tuple:
    """The --lora options, each checked to name a .safetensors file before any model loads."""
    from .loras import lora_folder, resolve_lora
    from .settings import StyleLora

    loras = tuple(StyleLora.parse(text) for text in args.loras)
    for lora in loras:
        resolve_lora(lora.name, lora_folder(args.lora_dir), allow_paths=True)
    return loras


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    from .settings import add_shot_arguments

    g = p.add_argument_group("generation")
    add_shot_arguments(g, "generation")  # --prompt, --seed, --steps, ... from the settings schema (settings.py)
    add_pipeline_arguments(g)
    g.add_argument("--backend", choices=("local", "bfl"), default="local",
                   help="local: FLUX.1-Depth-dev on this machine (default); bfl: FLUX.1 Depth [pro] through BFL's "
                        "API (needs BFL_API_KEY; costs credits; docs/bfl.md)")
    g.add_argument("--lora-dir", default=os.environ.get("FLUXDEPTH_LORA_DIR"), metavar="DIR",
                   help="folder of style LoRAs that --lora names refer to (env FLUXDEPTH_LORA_DIR)")
    g.add_argument("--lora-scale", type=_renamed("--lora-scale", "--depth-lora-scale"), help=argparse.SUPPRESS)
    g.add_argument("--init-image", metavar="PATH", help="start from this image (img2img)")
    g.add_argument("--mask", metavar="PATH",
                   help="fix one region of --init-image: white in this image is regenerated with the same control "
                        "map, the rest kept (inpainting; --strength 0.9 or more repaints it fully; docs/inpaint.md)")
    g.add_argument("--also-save", metavar="FORMATS", default="",
                   help="also write these from the float decode: png16 (16-bit PNG, sRGB), exr (half float, linear "
                        "Rec.709); comma-separated")


def add_pipeline_arguments(g) -> None:
    """What `pipeline_spec` reads: the model, its tier and where it runs."""
    from .defaults import DEFAULT_MODEL, DEFAULT_VRAM_HEADROOM_GIB, PLACEMENTS, VARIANT_NAMES as VARIANTS

    g.add_argument("--variant", choices=list(VARIANTS), default=DEFAULT_VARIANT,
                   help=f"precision tier (default {DEFAULT_VARIANT})")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"Hub id, local diffusers folder, or tiny-random (default {DEFAULT_MODEL})")
    g.add_argument("--revision", help="Hub branch, tag or commit")
    g.add_argument("--depth-lora", help="the Depth LoRA to fuse into a FLUX.1-dev base model (a Hub id or folder)")
    g.add_argument("--depth-lora-scale", type=float, default=DEFAULT_DEPTH_LORA_SCALE,
                   help=f"Depth LoRA scale (default {DEFAULT_DEPTH_LORA_SCALE})")
    g.add_argument("--placement", choices=PLACEMENTS, default="auto", help="GPU placement (default auto)")
    g.add_argument("--compile", action="store_true",
                   help="compile the transformer (CUDA GPUs): the first image at each size compiles, later ones run "
                        "15-25%% faster; bf16 and fp8 save the compiled blocks in the cache for later runs and other "
                        "workers (docs/fast-tier.md); worth it for sequences. fp8 always compiles")
    g.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: best available)")
    g.add_argument("--vram-budget", metavar="GiB|auto|follow", default=os.environ.get("FLUXDEPTH_VRAM_BUDGET"),
                   help="never use more GPU memory than this (auto = free memory minus a margin when the model "
                        "loads; follow = the GPU's free memory less --vram-headroom, read again before every "
                        "image: the default, for fp8 and --compile only when asked); "
                        "what does not fit streams from pinned host memory (env FLUXDEPTH_VRAM_BUDGET; docs/vram.md)")
    g.add_argument("--vram-headroom", metavar="GiB", default=os.environ.get("FLUXDEPTH_VRAM_HEADROOM"),
                   help=f"GPU memory left free for other programs such as Houdini while following the card "
                        f"(default {DEFAULT_VRAM_HEADROOM_GIB:g}; env FLUXDEPTH_VRAM_HEADROOM)")


def load_init_image(path: str | None):
    if not path:
        return None
    from .depth.readers import read_rgb_image

    return read_rgb_image(path)


def _step_printer():
    if not sys.stderr.isatty():
        return None

    def show(step: int, total: int) -> None:
        print(f"\rstep {step}/{total}", end="" if step < total else "\n", file=sys.stderr, flush=True)

    return show


def _load_printer():
    """Loading the model takes a while: say what is loading and where, on stderr (a farm log shows it too)."""
    def show(fraction: float, message: str) -> None:
        print(f"{message}", file=sys.stderr, flush=True)

    return show


def pipeline_spec(args: argparse.Namespace):
    from .settings import PipelineSpec

    return PipelineSpec(model=args.model, variant=args.variant, placement=args.placement, compile=args.compile,
                        device=args.device, revision=args.revision, depth_lora=args.depth_lora,
                        depth_lora_scale=args.depth_lora_scale,
                        vram_budget=args.vram_budget, lora_dir=getattr(args, "lora_dir", None),
                        vram_headroom=args.vram_headroom)


def _manager(spec):
    from .pipeline import PipelineManager

    return PipelineManager.from_spec(spec, token=os.environ.get("HF_TOKEN"))


def _backend(args: argparse.Namespace, spec):
    """The local pipeline manager, or BFL's API (checked for a key before any work)."""
    if args.backend == "bfl":
        from .bfl import BflBackend

        backend = BflBackend()
        backend.check()
        return backend
    return _manager(spec)


def cmd_generate(args: argparse.Namespace) -> int:
    from .image_files import check_formats
    from .settings import ShotSettings
    from .shot import render_shot

    seed = args.seed
    if seed is None and args.stats:
        from .sequence import load_stats

        seed = load_stats(args.stats).seed  # a frame re-rendered under its sequence gets the sequence's seed
    settings = ShotSettings(depth_settings_from_args(args), shot_from_args(args, seed).generation)
    spec = pipeline_spec(args)
    check_output_file(args.out, "--out", (".png",))
    formats = check_formats(args.also_save)
    if args.mask and not args.init_image:
        raise UsageError("--mask marks a region of an image: give that image with --init-image too")
    if args.mask and args.backend != "local":
        raise UsageError("--mask (fixing one region) runs on the local model only; leave out --backend bfl")
    init = load_init_image(args.init_image)
    mask = load_init_image(args.mask)
    shot = render_shot(_backend(args, spec), args.depth, settings, args.out, init_image=init,
                       init_image_name=os.path.basename(args.init_image) if args.init_image else None,
                       on_step=_step_printer(), load_progress=_load_printer(), formats=formats, mask=mask,
                       mask_name=os.path.basename(args.mask) if args.mask else None)
    meta, stats = shot.metadata, shot.preview.stats
    print(json.dumps({
        "out": shot.png, "json": shot.sidecar, "control": shot.control_png, "also_saved": shot.extras,
        "seed": meta.seed,
        "seconds": meta.seconds, "variant": meta.variant, "model": meta.model, "width": meta.width,
        "height": meta.height, "steps": meta.steps, "guidance": meta.guidance,
        "depth_warnings": list(stats.warnings), "notes": list(meta.notes),
    }))
    warn(stats.warnings)
    return 0


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, disable=None, dynamic_ncols=True)


def cmd_sequence(args: argparse.Namespace) -> int:
    from .image_files import check_formats
    from .sequence import find_frames, parse_frame_range

    shot = shot_from_args(args)
    if args.init_image or args.mask:
        raise UsageError("--init-image and --mask are not supported for sequences; render frames with fluxdepth "
                         "generate")
    if args.backend != "local":
        raise UsageError("sequences render on the local model; --backend bfl is for single frames (fluxdepth "
                         "generate)")
    spec = pipeline_spec(args)
    formats = check_formats(args.also_save)
    wanted = parse_frame_range(args.frames)
    with contextlib.ExitStack() as scope:
        frames = find_frames(_unzipped(args.depth, scope))
        return _sequence_from_frames(args, spec, formats, shot.depth, wanted, frames, shot.generation)


def _unzipped(pattern: str, scope: contextlib.ExitStack) -> str:
    """A zip of frames (as the app takes them): its depth files in a temp folder for this command, else the
    pattern as given."""
    from .archive import extract_depth_members, is_zip

    if not (os.path.isfile(pattern) and is_zip(pattern)):
        return pattern
    import tempfile

    folder = scope.enter_context(tempfile.TemporaryDirectory(prefix="fluxdepth-zip-"))
    extract_depth_members(pattern, folder)
    return folder


def _sequence_from_frames(args, spec, formats, settings, wanted, frames, generation) -> int:
    from .sequence import (
        check_frames, compute_stats, load_stats, render_sequence, save_stats, settle_seed, stats_match, write_video,
    )

    check_frames(frames)  # the whole sequence: gaps and mixed sizes are reported before anything renders
    selected = check_frames(frames, wanted)
    if args.video:
        check_output_file(args.video, "--video", (".mp4", ".mov", ".mkv", ".gif"), create=True)
    check_output_folder(os.path.abspath(args.out), "--out", create=True)
    stats_path = args.stats or os.path.join(args.out, "sequence_stats.json")
    stats = load_stats(stats_path) if os.path.exists(stats_path) else None
    if stats is not None and not args.stats and not stats_match(stats, settings, args.depth):
        stats = None  # a leftover from other settings in this folder: compute afresh (frames re-render)
    if stats is None:
        with _progress_bar(len(frames), "range (pass 1)") as bar:
            stats = compute_stats(frames, settings, args.depth, seed=args.seed,
                                  progress=lambda i, n: bar.update(1))
    stats = settle_seed(stats, args.seed)
    save_stats(stats, stats_path)
    if args.stats_only:  # a farm's first task: the range and the seed every chunk of frames will share
        print(json.dumps({"stats": stats_path, "seed": stats.seed, "frames": [frames[0].number, frames[-1].number],
                          "range": stats.range.to_dict(), "depth_warnings": list(stats.warnings)}))
        warn(stats.warnings)
        return 0
    generation = generation.with_seed(stats.seed)
    manager = _manager(spec)  # loads nothing until a frame renders here (with --workers, on the workers)
    with _progress_bar(len(selected), "frames (pass 2)") as bar:
        def on_frame(i, n, frame, status):
            bar.set_postfix_str(f"{frame.number} {status}")
            bar.update(1)

        report = render_sequence(manager, selected, stats, settings, generation, args.out, formats=formats,
                                 load_progress=_load_printer(), on_frame=on_frame, workers=args.workers or 0,
                                 address=args.ray_address)
    source_key = manager.source.key
    videos = []
    failed = report.failed
    if args.video and not failed:
        videos.append(write_video(report.outputs, args.video, args.fps))
        root, ext = os.path.splitext(args.video)
        videos.append(write_video(report.controls, f"{root}_control{ext}", args.fps))
    print(json.dumps({
        "out": args.out, "stats": stats_path, "seed": stats.seed, "frames": [f.number for f in selected],
        "rendered": report.rendered, "skipped": report.skipped, "seconds": round(report.seconds, 3),
        "range": stats.range.to_dict(), "videos": videos, "variant": args.variant, "model": source_key,
        "depth_warnings": list(stats.warnings), "failed": {str(k): v for k, v in failed.items()},
        "workers": args.workers or 1,
    }))
    warn(stats.warnings)
    if failed:
        print(f"error: {report.failure_line()}; the others are done: run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080): multiples of 16 with a long side the studio renders."""
    from .depth.control import MAX_LONG_SIDE, MIN_LONG_SIDE, MULTIPLE
    from .settings import SettingsError

    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SettingsError(f"--size {text!r} is not WIDTHxHEIGHT; write it like 1920x1088") from None
    long_side = max(width, height)
    if width % MULTIPLE or height % MULTIPLE or min(width, height) < MULTIPLE or \
            not MIN_LONG_SIDE <= long_side <= MAX_LONG_SIDE:
        raise SettingsError(f"--size {text}: sides must be multiples of {MULTIPLE} with the long side in "
                            f"{MIN_LONG_SIDE}..{MAX_LONG_SIDE} (the sizes the studio renders); e.g. 1920x1088")
    return width, height


WARMUP_STEPS = 1  # the blocks compile (or load) at the first step; more steps would only spend time


def cmd_warmup(args: argparse.Namespace) -> int:
    """Make what a tier's first image would make, before a farm job or in an image build: its quantized weights
    and, compiled, the saved blocks for each size (docs/fast-tier.md). Later runs on this machine type load them."""
    import numpy as np

    from .depth import ControlImage
    from .settings import GenerationSettings

    sizes = [parse_size(size) for size in (args.size or ["1024x1024"])]
    manager = _manager(pipeline_spec(args))
    report = {}
    for width, height in sizes:
        control = ControlImage(np.full((height, width), 0.5, np.float32))
        before = len(manager.compiled_block_events())
        t0 = time.perf_counter()
        manager.generate(control, GenerationSettings("warm-up", seed=0, steps=WARMUP_STEPS),
                         load_progress=_load_printer())
        events = manager.compiled_block_events()[before:]
        report[f"{width}x{height}"] = {"seconds": round(time.perf_counter() - t0, 2),
                                       "blocks": {e.block: e.kind for e in events}}
    status = manager.status()
    print(json.dumps({"variant": args.variant, "model": manager.source.key, "compiled": status["compiled"],
                      "cache": manager.cache.root, "sizes": report, "notes": status["notes"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fluxdepth", description="FluxDepth Studio: depth passes -> FLUX.1-Depth-dev images")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("preview", help="write the normalized control map (16-bit PNG) and print its stats")
    add_depth_arguments(p)
    p.add_argument("--out", required=True, metavar="OUT.png", help="16-bit greyscale PNG to write")
    p.set_defaults(func=cmd_preview)

    g = sub.add_parser("generate", help="generate an image from a depth file and a prompt")
    add_depth_arguments(g)
    add_generation_arguments(g)
    g.add_argument("--out", required=True, metavar="OUT.png", help="PNG to write (OUT.json is written beside it)")
    g.set_defaults(func=cmd_generate)

    q = sub.add_parser("sequence", help="render a depth frame sequence with one normalization and one seed")
    add_depth_arguments(q, "PATTERN", "frames: depth.####.exr, depth.$F4.exr, depth.%%04d.exr, or a folder")
    add_generation_arguments(q)
    q.add_argument("--out", required=True, metavar="DIR", help="folder for frame PNGs, sidecars and control maps")
    q.add_argument("--frames", metavar="A-B", help="render only these frames (the range still covers all)")
    q.add_argument("--video", metavar="OUT.mp4", help="also write a video (mp4/mov/mkv/gif) and OUT_control.*")
    q.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"video frame rate (default {DEFAULT_FPS:g})")
    q.add_argument("--stats-only", action="store_true",
                   help="compute (or check) the stats file and stop: a farm's first task (docs/farm.md)")
    q.add_argument("--workers", type=int, metavar="N",
                   help="render frames on N Ray workers, one per GPU (or per CPU without GPUs); needs "
                        "pip install -e \".[farm]\" (docs/farm.md)")
    q.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster instead of starting one here")
    q.set_defaults(func=cmd_sequence)

    w = sub.add_parser("warmup", help="prepare a tier on this machine before a job: quantized weights and, compiled, "
                                      "the saved compiled blocks for each size (docs/fast-tier.md)")
    add_pipeline_arguments(w.add_argument_group("pipeline"))
    w.add_argument("--size", action="append", metavar="WxH",
                   help="an image size the job renders (repeat for more; default 1024x1024)")
    w.set_defaults(func=cmd_warmup)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # bare `fluxdepth`: what it does and its commands
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except FluxDepthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
