"""Send depth frames from Houdini to a running FluxDepth Studio and bring the results back.

It renders nothing itself: point it at the depth AOV files your ROP already wrote.

From hython / a terminal (one `hython -m pip install gradio_client` first):
    hython fluxdepth_send.py --depth '$HIP/render/shot.depth.$F4.exr' --frames 1-48 \
        --prompt "a flooded cathedral, god rays" --seed 7 --out '$HIP/fluxdepth/shot.$F4.png'

As a shelf tool (Script tab):
    import sys; sys.path.append("/path/to/fluxdepth/examples/houdini")
    import fluxdepth_send; fluxdepth_send.shelf()

The app (python app.py, or a --share link, or a Space) must be running; pass its address with --url.
Each frame goes to the app's /generate endpoint with one fixed seed. Results are saved where --out says and, with
--cop, loaded into a COP File node so you see them next to the render.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

try:  # inside Houdini / hython
    import hou  # type: ignore
except ImportError:  # plain Python: $HIP, $F4 etc. are expanded by this script
    hou = None

DEFAULT_URL = os.environ.get("FLUXDEPTH_URL", "http://127.0.0.1:7860/")


def expand(pattern: str, frame: int) -> str:
    """Houdini's own expansion when available ($HIP, $JOB, $F4, ...), else $F / $Fn / #### and environment vars."""
    if hou is not None:
        return hou.text.expandStringAtFrame(pattern, frame)
    text = re.sub(r"\$F(\d*)", lambda m: f"{frame:0{int(m.group(1) or 1)}d}", pattern)
    text = re.sub(r"#+", lambda m: f"{frame:0{len(m.group(0))}d}", text)
    return os.path.expandvars(text)


def parse_frames(text: str | None) -> list[int]:
    if not text:
        return [int(hou.frame()) if hou is not None else 1]
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def load_into_cop(node_path: str, image_pattern: str) -> None:
    node = hou.node(node_path)
    if node is None:
        raise SystemExit(f"error: COP node {node_path} not found")
    parm = node.parm("filename") or node.parm("filename1")  # Copernicus File / COP2 File
    if parm is None:
        raise SystemExit(f"error: {node_path} has no filename parameter; give a File COP")
    parm.set(image_pattern)


def send(depth: str, frames: list[int], prompt: str, out: str, url: str = DEFAULT_URL, seed: int = 0,
         steps: int = 28, guidance: float = 10.0, mode: str = "auto", long_side: int = 1024, hf_token=None,
         log=print) -> list[str]:
    from gradio_client import Client, handle_file

    client = Client(url, token=hf_token, verbose=False)
    written = []
    for frame in frames:
        depth_path = expand(depth, frame)
        if not os.path.exists(depth_path):
            raise SystemExit(f"error: frame {frame}: {depth_path} does not exist; render the depth AOV first")
        # /generate returns the PNG, its metadata and the also_save files (16-bit PNG / EXR) when asked for.
        png, meta, _ = client.predict(handle_file(depth_path), prompt, seed=seed, steps=steps, guidance=guidance,
                                      mode=mode, long_side=long_side, api_name="/generate")
        target = expand(out, frame)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        shutil.copyfile(png, target)
        written.append(target)
        log(f"frame {frame}: {target} (seed {meta['seed']}, {meta['seconds']:.1f} s)")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", required=True, help="depth AOV path pattern, e.g. $HIP/render/depth.$F4.exr")
    ap.add_argument("--frames", help="A-B (default: the current frame)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--out", required=True, help="result pattern, e.g. $HIP/fluxdepth/shot.$F4.png")
    ap.add_argument("--url", default=DEFAULT_URL, help="the running app (default %(default)s or FLUXDEPTH_URL)")
    ap.add_argument("--seed", type=int, default=0, help="one seed for every frame (same noise: no flicker)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--guidance", type=float, default=10.0)
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--long-side", type=int, default=1024)
    ap.add_argument("--cop", help="COP File node to load the results into, e.g. /img/comp1/fluxdepth")
    args = ap.parse_args(argv)
    written = send(args.depth, parse_frames(args.frames), args.prompt, args.out, args.url, args.seed, args.steps,
                   args.guidance, args.mode, args.long_side, os.environ.get("HF_TOKEN"))
    if args.cop and hou is not None:
        load_into_cop(args.cop, args.out)
    return 0 if written else 1


def shelf() -> None:
    """Shelf tool: ask for the depth pattern and prompt, send the current frame, load the result into a COP."""
    pressed, (depth, prompt, out, cop) = hou.ui.readMultiInput(
        "FluxDepth: send the current depth frame",
        ("Depth AOV pattern", "Prompt", "Result pattern", "COP File node (optional)"),
        buttons=("Send", "Cancel"), close_choice=1,
        initial_contents=("$HIP/render/depth.$F4.exr", "", "$HIP/fluxdepth/result.$F4.png", ""),
    )
    if pressed != 0:
        return
    with hou.InterruptableOperation("FluxDepth", open_interrupt_dialog=True):
        written = send(depth, [int(hou.frame())], prompt, out, log=lambda m: hou.ui.setStatusMessage(m))
    if cop:
        load_into_cop(cop, out)
    hou.ui.displayMessage(f"FluxDepth wrote {written[0]}")


if __name__ == "__main__":
    sys.exit(main())
