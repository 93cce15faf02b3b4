"""`python app.py`: start options (each also an environment variable, for Spaces) and the server.

The page is served before any model loads; the model loads on the first Generate.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
import sys
from pathlib import Path

from .. import limits
from ..defaults import DEFAULT_LIVE_PREVIEW_EVERY, DEFAULT_VARIANT, DEFAULT_VRAM_HEADROOM_GIB, VARIANT_NAMES

# Before gradio or huggingface_hub are imported: no analytics, no version check, no hub telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _env(name: str, default=None):
    return os.environ.get(f"FLUXDEPTH_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    on_space = bool(os.environ.get("SPACE_ID"))
    p = argparse.ArgumentParser(prog="python app.py", description="FluxDepth Studio")
    p.add_argument("--model", default=_env("MODEL"),
                   help="Hub id, local diffusers folder or tiny-random (env FLUXDEPTH_MODEL; default "
                        "black-forest-labs/FLUX.1-Depth-dev)")
    p.add_argument("--variant", default=_env("VARIANT", DEFAULT_VARIANT), choices=list(VARIANT_NAMES),
                   help="precision tier (env FLUXDEPTH_VARIANT)")
    p.add_argument("--compile", action="store_true", default=_env("COMPILE", "") in ("1", "true", "True"),
                   help="torch.compile the transformer on CUDA GPUs (env FLUXDEPTH_COMPILE=1): the first image at "
                        "each size compiles once and is saved for later starts, later images run 15-25%% faster; "
                        "on ZeroGPU it compiles at start-up; fp8 always compiles")
    p.add_argument("--placement", default=_env("PLACEMENT", "gpu" if on_space else "auto"),
                   choices=["auto", "gpu", "model_offload", "sequential_offload"], help="env FLUXDEPTH_PLACEMENT")
    p.add_argument("--device", default=_env("DEVICE"), help="cuda, cuda:N, mps or cpu (env FLUXDEPTH_DEVICE)")
    p.add_argument("--vram-budget", default=_env("VRAM_BUDGET"), metavar="GiB|auto|follow",
                   help="never use more GPU memory than this; auto = free memory minus a margin at load; follow (the "
                        "default; for fp8 and --compile only when asked) = free memory less --vram-headroom, read "
                        "before every image (env FLUXDEPTH_VRAM_BUDGET; docs/vram.md)")
    p.add_argument("--vram-headroom", default=_env("VRAM_HEADROOM"), metavar="GiB",
                   help="GPU memory left free for other programs such as Houdini while following the card "
                        f"(env FLUXDEPTH_VRAM_HEADROOM; default {DEFAULT_VRAM_HEADROOM_GIB:g}; docs/vram.md)")
    p.add_argument("--live-preview", default=_env("LIVE_PREVIEW"), metavar="N|off",
                   help="show the image forming every N denoising steps, decoded by FLUX's tiny autoencoder (TAEF1, "
                        f"fetched and cached like the model; offline and absent, the step bar only). Default every "
                        f"{DEFAULT_LIVE_PREVIEW_EVERY} steps; off for none (env FLUXDEPTH_LIVE_PREVIEW; "
                        "docs/live-preview.md, with its cost)")
    p.add_argument("--host", default=_env("HOST", "0.0.0.0" if on_space else "127.0.0.1"),
                   help="env FLUXDEPTH_HOST (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=int(_env("PORT", "7860")), help="env FLUXDEPTH_PORT")
    p.add_argument("--share", action="store_true", default=_env("SHARE", "") in ("1", "true", "True"),
                   help="temporary public link through Gradio's share servers (env FLUXDEPTH_SHARE=1)")
    p.add_argument("--auth", default=_env("AUTH"), metavar="USER:PASS",
                   help="require this login (env FLUXDEPTH_AUTH); strongly advised with --share")
    p.add_argument("--outputs", default=_env("OUTPUTS", "outputs"), help="results folder (env FLUXDEPTH_OUTPUTS)")
    p.add_argument("--queue-size", type=int, default=int(_env("QUEUE_SIZE", "20")),
                   help="waiting generations before new ones are refused; previews never wait in it "
                        "(env FLUXDEPTH_QUEUE_SIZE)")
    p.add_argument("--allow-tiers", default=_env("ALLOW_TIERS"), metavar="all|T1,T2",
                   help="tiers visitors may switch to (env FLUXDEPTH_ALLOW_TIERS; default: every tier this machine "
                        "runs when local, only the launch tier with --share or on a Space)")
    p.add_argument("--keep-days", type=float, default=_env("KEEP_DAYS"), metavar="N",
                   help="remove session folders and uploads older than N days, at start and hourly (env "
                        "FLUXDEPTH_KEEP_DAYS; default 7 with --share or on a Space, keep forever locally; 0 = keep)")
    p.add_argument("--bfl", action="store_true", default=bool(_env("BFL")),
                   help="also offer FLUX.1 Depth [pro] through BFL's API (needs BFL_API_KEY; every image costs "
                        "the host's credits; env FLUXDEPTH_BFL=1; docs/bfl.md)")
    p.add_argument("--lora-dir", default=os.environ.get("FLUXDEPTH_LORA_DIR"), metavar="DIR",
                   help="folder of style LoRAs (.safetensors) the app offers (env FLUXDEPTH_LORA_DIR; docs/loras.md)")
    p.add_argument("--ray-address", default=_env("RAY_ADDRESS"), metavar="ADDR",
                   help="render the Sequence tab's frames on this Ray cluster (env FLUXDEPTH_RAY_ADDRESS; needs "
                        "pip install -e \".[farm]\"; docs/farm.md)")
    p.add_argument("--workers", type=int, default=int(_env("WORKERS", "0")), metavar="N",
                   help="Ray workers for the Sequence tab's frames (env FLUXDEPTH_WORKERS; default 1 with "
                        "--ray-address; without an address, N workers on this machine)")
    p.add_argument("--mcp", action="store_true", default=_env("MCP", "") in ("1", "true", "True"),
                   help="also serve /preview and /generate as MCP tools at /gradio_api/mcp/ for assistants and DCC "
                        "tools (env FLUXDEPTH_MCP=1; needs pip install -e \".[mcp]\"; local studios only)")
    limits.add_arguments(p)
    return p


def check_mcp(args: argparse.Namespace) -> None:
    """MCP tools take files as URLs that the server downloads itself: fine on a workstation, not for strangers."""
    if not args.mcp:
        return
    if is_shared(args):
        raise ValueError("--mcp is for a local studio: its tools make the server download file URLs, so it is not "
                         "offered with --share or on a Space")
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise ValueError('--mcp needs the MCP extra: pip install -e ".[mcp]"') from None


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must look like USER:PASS")
    return user, password


def is_shared(args: argparse.Namespace) -> bool:
    return bool(args.share or os.environ.get("SPACE_ID"))


def create(args: argparse.Namespace):
    """Build (studio, demo) without serving; tests use this too."""
    from ..pipeline import PipelineManager, parse_model_source
    from .app import build_app
    from ..settings import parse_live_preview
    from .handlers import Studio, check_outputs_writable
    from .sharing import make_policy

    limits.configure(limits.from_arguments(args))
    check_mcp(args)
    outputs = check_outputs_writable(Path(args.outputs))
    source = parse_model_source(args.model)
    # The app offers the LoRA folder's files by name and never opens a path a request names (loras.py).
    manager = PipelineManager(source, variant=args.variant, placement=args.placement, device=args.device,
                              token=os.environ.get("HF_TOKEN"), compile=args.compile, vram_budget=args.vram_budget,
                              lora_dir=args.lora_dir, lora_paths=False, vram_headroom=args.vram_headroom)
    manager.check_variant(args.variant)
    keep = None if args.keep_days in (None, "") else float(args.keep_days)
    policy = make_policy(is_shared(args), args.variant, manager.runnable_variants(), args.allow_tiers, keep)
    farm = None
    if args.ray_address or args.workers:
        farm = {"address": args.ray_address or None, "workers": max(1, args.workers or 1)}
    bfl = None
    if args.bfl:
        from ..bfl import BflBackend

        bfl = BflBackend()
        bfl.check()  # no key: the app does not start (exit 2), rather than failing at the first Generate
    # ZeroGPU runs each image in another process: a preview could not be handed back while the image forms.
    live_preview = 0 if os.environ.get("SPACES_ZERO_GPU") else parse_live_preview(args.live_preview)
    studio = Studio(manager=manager, outputs=outputs, policy=replace(policy, mcp=bool(args.mcp)), farm=farm, bfl=bfl,
                    live_preview_every=live_preview)
    return studio, build_app(studio)


def guard_middleware(bound: limits.Limits):
    """Starlette middleware entry for gradio's app: request body bound and login slow-down (docs/sharing.md)."""
    from starlette.middleware import Middleware

    from .sharing import GuardMiddleware

    # An upload request may carry a whole sequence (many files): bounded by what one zip may expand to.
    return Middleware(GuardMiddleware, body_limit=bound.body_kb * 1024,
                      upload_limit=max(bound.upload_mb, bound.zip_mb) * 2**20)


def main(argv: list[str] | None = None) -> None:
    from ..errors import FluxDepthError

    args = build_parser().parse_args(argv)
    try:
        auth = parse_auth(args.auth)
        studio, demo = create(args)
    except (ValueError, FluxDepthError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    from .sharing import remove_scratch_on_signals, start_retention, sweep_outputs, sweep_stale_scratch

    sweep_stale_scratch()  # what a killed or crashed server left in the temp folder
    remove_scratch_on_signals(studio.workspace)

    if args.share and not auth:
        print("warning: --share without --auth: anyone with the link can use this GPU; add --auth USER:PASS",
              file=sys.stderr)
    policy = studio.policy
    print(f"tiers offered to visitors: {', '.join(policy.tiers)}; results kept "
          f"{'forever' if policy.keep_days is None else f'{policy.keep_days:g} days'}", file=sys.stderr)
    sweep_outputs(studio.outputs, policy.keep_days)
    start_retention(studio.outputs, policy.keep_days)
    try:
        start_on_zerogpu(studio)
    except FluxDepthError as exc:  # the Space's log shows one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size)
    # quiet: gradio's own lines would tell the artist to "set share=True in launch()"; ours name our flag.
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, footer_links=["api", "settings"],
                quiet=True, prevent_thread_lock=True, **launch_options(studio, auth))
    studio.manager.warm_up()  # the first Generate finds the libraries imported and the weights read ahead
    print(f"FluxDepth Studio on {demo.local_url}", file=sys.stderr)
    if demo.share_url:
        print(f"public link (about a week; anyone with it can use this studio): {demo.share_url}", file=sys.stderr)
    elif not args.share:
        print("for a temporary public link, start with --share (and --auth USER:PASS)", file=sys.stderr)
    # (an MCP client connects to http://HOST:PORT/gradio_api/mcp/, listed on the page's "Use via API")
    demo.block_thread()


def start_on_zerogpu(studio) -> None:
    """ZeroGPU: weights go to "cuda" at start-up, outside the GPU-timed calls; a compiled tier (fp8, or --compile)
    is compiled here, once, in one long GPU call (pipeline/zerogpu.py)."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return
    import spaces  # type: ignore  # present on every ZeroGPU Space

    studio.manager.load()
    studio.manager.compile_on_zerogpu(spaces)


def launch_options(studio, auth=None) -> dict:
    """The security-relevant launch arguments, one place for the app and its tests."""
    from .app import allowed_paths
    from .layout import CSS

    bound = limits.current()
    return dict(
        css=CSS,
        auth=auth,
        max_file_size=f"{bound.upload_mb}mb",
        allowed_paths=allowed_paths(studio),
        show_error=False,  # errors reach visitors only as our own one-line messages (sharing.user_facing)
        app_kwargs={"middleware": [guard_middleware(bound)]},
        mcp_server=studio.policy.mcp,
    )
