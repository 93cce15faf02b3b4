"""App benchmarks on the dev machine (issue 4 targets).

    python benchmarks/app_startup.py [--starts 3] [--previews 10]

1. Cold start: `python app.py --model tiny-random` in a fresh process until the page answers HTTP 200 (no model is
   loaded at start). Target <= 8 s on the 2-core machine.
2. Preview of a 2048x2048 float32 EXR, server side: what the preview event runs (read or cached map, normalize,
   histograms, 16-bit PNG, stats). First call (file read) and later calls (a slider moved: map cached).
   Target <= 300 ms. Also the full client round trip through gradio_client's /preview.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
os.environ.update(OFFLINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(outputs: str) -> float:
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), "--model", "tiny-random", "--port",
                             str(port), "--outputs", outputs], env={**os.environ, **OFFLINE},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t < 60:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200:
                    return time.perf_counter() - t
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("app did not answer within 60 s")
    finally:
        proc.terminate()
        proc.wait(10)


def make_exr(path: str, size: int = 2048) -> None:
    import OpenEXR

    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    z = 1.5 + 30.0 * (y / size) ** 2 + 2.0 * np.cos(x / 83.0)
    z[: size // 6] = np.inf
    OpenEXR.File({"type": OpenEXR.scanlineimage, "compression": OpenEXR.ZIP_COMPRESSION},
                 {"Z": z.astype(np.float32)}).write(path)


def preview_server_side(path: str, outputs: str, n: int) -> dict:
    from pathlib import Path

    from fluxdepth_ui.ui import handlers as h

    studio = h.Studio(manager=None, outputs=Path(outputs))

    def one(invert: str) -> float:
        t = time.perf_counter()
        result = h.run_preview(studio, path, h.depth_settings(invert=invert))
        h.write_control_png(studio, "bench", result)
        h.histogram_frames(result)
        h.stats_markdown(result)
        return time.perf_counter() - t

    first = one("auto")
    later = [one("on" if i % 2 else "off") for i in range(n)]
    return {"first_ms": round(first * 1000, 1), "later_ms_median": round(statistics.median(later) * 1000, 1),
            "later_ms_max": round(max(later) * 1000, 1), "n": n}


def preview_round_trip(path: str, outputs: str, n: int) -> dict:
    from gradio_client import Client, handle_file

    from fluxdepth_ui.ui.launch import build_parser, create, launch_options

    studio, demo = create(build_parser().parse_args(["--model", "tiny-random", "--outputs", outputs]))
    demo.queue()
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                **launch_options(studio))
    try:
        client = Client(demo.local_url, verbose=False)
        times = []
        for i in range(n):
            t = time.perf_counter()
            client.predict(handle_file(path), invert="on" if i % 2 else "off", api_name="/preview")
            times.append(time.perf_counter() - t)
    finally:
        demo.close()
    return {"round_trip_ms_median": round(statistics.median(times) * 1000, 1),
            "round_trip_ms_max": round(max(times) * 1000, 1), "n": n,
            "note": "includes uploading the 16 MB EXR and downloading the PNG on every call"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--previews", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    import gradio

    with tempfile.TemporaryDirectory() as tmp:
        starts = [cold_start(os.path.join(tmp, "out")) for _ in range(args.starts)]
        exr = os.path.join(tmp, "depth_2048.exr")
        make_exr(exr)
        report = {
            "cold_start_s": [round(s, 2) for s in starts],
            "cold_start_s_median": round(statistics.median(starts), 2),
            "preview_2048_exr_server": preview_server_side(exr, os.path.join(tmp, "out"), args.previews),
            "preview_2048_exr_client": preview_round_trip(exr, os.path.join(tmp, "out2"), max(3, args.previews // 2)),
            "targets": "cold start <= 8 s; preview <= 300 ms server-side",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "gradio": gradio.__version__,
        }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
