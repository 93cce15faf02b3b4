"""`python app.py`: parse the start options and serve the Blocks app."""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = argparse.ArgumentParser(prog="python app.py", description="FluxDepth Studio")
    parser.add_argument("--host", default=os.environ.get("FLUXDEPTH_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FLUXDEPTH_PORT", "7860")))
    args = parser.parse_args(argv)

    import gradio as gr

    with gr.Blocks(title="FluxDepth Studio") as demo:
        gr.Markdown("# FluxDepth Studio\nThe depth preview and generation panels are being built.")
    demo.launch(server_name=args.host, server_port=args.port)
