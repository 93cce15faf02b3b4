"""Preview latency while a shared studio is full of generations (loopback only, bounded in time and count).

Starts the app in this process with tiny-random (or --model), then for --seconds runs --clients generation clients
(each submits /generate again as soon as its last one ends, through gradio's queue) and one probe that asks for a
/preview every --probe-every seconds. Reports preview latency idle and under load (p50, p95, max), generations done,
and generations refused because the queue was full.

    python benchmarks/share_load.py --clients 20 --seconds 30 --json docs/results/share_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PREVIEW_REST = ["auto", "auto", "auto", 0.5, 99.5, 0, 0, 512, "snap", "auto"]


def make_depth(folder: Path) -> Path:
    """A 640x480 16-bit millimetre map with a 0 background, like a sensor or COPs export."""
    yy, xx = np.mgrid[0:480, 0:640]
    depth = (1500 + 6 * xx + 3 * yy).astype(np.uint16)
    depth[:60] = 0
    path = folder / "load_depth.png"
    Image.fromarray(depth).save(path)
    return path


def upload(url: str, path: Path) -> dict:
    with open(path, "rb") as fh:
        r = httpx.post(url + "/gradio_api/upload", files={"files": (path.name, fh)}, timeout=30)
    r.raise_for_status()
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}


def preview(url: str, record: dict) -> float:
    t0 = time.perf_counter()
    r = httpx.post(url + "/gradio_api/run/preview", json={"data": [record, *PREVIEW_REST]}, timeout=120)
    r.raise_for_status()
    return time.perf_counter() - t0


def generate(url: str, record: dict, steps: int, seed: int) -> str:
    """'done', 'full' (refused: queue full) or 'error'."""
    data = [record, "load test", seed, steps, 10.0, "", "auto", "auto", "auto", 0.5, 99.5, 0, 0, 256, None, 0.6,
            "snap", "auto"]
    r = httpx.post(url + "/gradio_api/call/generate", json={"data": data}, timeout=30)
    if r.status_code != 200:
        return "full" if "full" in r.text.lower() else "error"
    stream = httpx.get(url + f"/gradio_api/call/generate/{r.json()['event_id']}", timeout=600).text
    if "event: complete" in stream:
        return "done"
    return "full" if "full" in stream.lower() else "error"


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {}
    q = statistics.quantiles(values, n=20) if len(values) > 1 else [values[0]] * 19
    return {"n": len(values), "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(q[18] * 1000, 1), "max_ms": round(values[-1] * 1000, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--queue-size", type=int, default=20)
    p.add_argument("--probe-every", type=float, default=0.25)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args()
    args.clients = min(args.clients, 64)  # bounded: this is a loopback test, not a flood
    args.seconds = min(args.seconds, 300.0)

    from fluxdepth_ui.ui.launch import build_parser, create, launch_options

    work = Path(tempfile.mkdtemp(prefix="fluxdepth-load-"))
    app_args = build_parser().parse_args(["--model", args.model, "--outputs", str(work / "outputs"), "--share",
                                          "--queue-size", str(args.queue_size)])
    studio, demo = create(app_args)
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                **launch_options(studio))
    url = demo.local_url.rstrip("/")
    try:
        record = upload(url, make_depth(work))
        generate(url, record, 1, 0)  # load the model before measuring
        idle = [preview(url, record) for _ in range(20)]

        stop = time.monotonic() + args.seconds
        outcomes: list[str] = []
        lock = threading.Lock()

        def client(i: int):
            n = 0
            while time.monotonic() < stop:
                result = generate(url, record, args.steps, i * 1000 + n)
                n += 1
                with lock:
                    outcomes.append(result)
                if result != "done":
                    time.sleep(0.5)  # a refused client retries after a pause, as gradio's page does

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # let the queue fill
        loaded = []
        while time.monotonic() < stop:
            loaded.append(preview(url, record))
            time.sleep(args.probe_every)
        for t in threads:
            t.join(timeout=600)
    finally:
        demo.close()

    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": args.model, "clients": args.clients, "seconds": args.seconds, "steps": args.steps,
        "queue_size": args.queue_size,
        "preview_idle": percentiles(idle), "preview_under_load": percentiles(loaded),
        "generations_done": outcomes.count("done"), "generations_refused_queue_full": outcomes.count("full"),
        "generation_errors": outcomes.count("error"),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
