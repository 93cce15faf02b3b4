"""Hostile visitors against a shared studio on loopback (issue 24): what one visitor can make the server hold.

Starts `app.py --share --auth` with tiny-random in a child process (its own temp folder), then measures:

1. page sessions that never open a heartbeat: `--sessions` calls of the page's preview event
   (`/gradio_api/run/predict`, a fresh session_hash each) with an 8000x8000 float EXR; the server's resident
   memory (VmRSS) before and after;
2. a many-page TIFF (50,000 pages of 16x16) and a deep-sample EXR (400x400, 1000 samples a pixel): time to answer;
3. a cookie-less loop on `/gradio_api/heartbeat/local` while a logged-in client asks for API previews for
   `--race-seconds`: failures of the logged-in client;
4. SIGTERM: bytes left under the server's scratch root.

    python benchmarks/visitor_bounds.py --json docs/results/visitor_bounds.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
AUTH = ("artist", "s3cret")
PREVIEW_REST = ["auto", "auto", "auto", 0.5, 99.5, 0, 0, 512, "snap", "auto"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def make_files(work: Path) -> dict:
    import OpenEXR
    import tifffile

    from conftest import write_exr

    z = np.linspace(2.0, 40.0, 8000 * 8000, dtype=np.float32).reshape(8000, 8000)
    big = write_exr(work / "big.exr", {"Z": z})
    del z
    pages = work / "pages.tif"
    with tifffile.TiffWriter(pages) as tif:
        for i in range(50_000):
            tif.write(np.full((16, 16), i % 60000, np.uint16), contiguous=False)
    one = np.linspace(5, 50, 1000, dtype=np.float32)
    samples = np.empty((400, 400), dtype=object)
    for y in range(400):
        for x in range(400):
            samples[y, x] = one
    deep = str(work / "deep.exr")
    OpenEXR.File({"type": OpenEXR.deepscanline, "compression": OpenEXR.ZIPS_COMPRESSION}, {"Z": samples}).write(deep)
    small = write_exr(work / "small.exr", {"Z": np.linspace(2, 40, 256 * 192, dtype=np.float32).reshape(192, 256)})
    return {"big": big, "pages": str(pages), "deep": deep, "small": small}


class Server:
    def __init__(self, work: Path, extra: list[str]):
        self.tmp = work / "tmp"
        self.tmp.mkdir()
        self.port = free_port()
        env = {**os.environ, "TMPDIR": str(self.tmp), "GRADIO_TEMP_DIR": str(work / "gradio"),
               "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        # SPACE_ID: the shared-server policy of a Space (a --share link would open a public tunnel).
        self.proc = subprocess.Popen([sys.executable, "app.py", "--model", "tiny-random", "--port", str(self.port),
                                      "--outputs", str(work / "outputs"), "--auth", ":".join(AUTH), *extra],
                                     cwd=ROOT, env={**env, "SPACE_ID": "local/visitor-bounds"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                httpx.get(self.url + "/config", timeout=5)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode()[-2000:])
                time.sleep(0.3)
        raise RuntimeError("the server did not start")

    def scratch(self) -> list[Path]:
        return list(self.tmp.glob("fluxdepth-sessions-*"))


def logged_in() -> httpx.Client:
    return httpx.Client(timeout=120)


def login(client: httpx.Client, url: str) -> None:
    r = client.post(url + "/login", data={"username": AUTH[0], "password": AUTH[1]})
    r.raise_for_status()


def upload(client: httpx.Client, url: str, path: str) -> dict:
    with open(path, "rb") as fh:
        r = client.post(url + "/gradio_api/upload", files={"files": (os.path.basename(path), fh)})
    r.raise_for_status()
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": os.path.basename(path)}


def api_preview(client: httpx.Client, url: str, record: dict) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    r = client.post(url + "/gradio_api/call/preview", json={"data": [record, *PREVIEW_REST]})
    if r.status_code != 200:
        return time.perf_counter() - t0, r.text[:200]
    stream = client.get(url + f"/gradio_api/call/preview/{r.json()['event_id']}").text
    error = None
    if "event: error" in stream:
        payload = stream.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
        error = (json.loads(payload) or {}).get("error") if payload != "null" else "error"
        error = error or "error"
    return time.perf_counter() - t0, error


def page_preview_payload(client: httpx.Client, url: str, record: dict) -> tuple[int, list, int]:
    """The page's preview event (depth file changed): its index, its inputs' values, the trigger's id."""
    config = client.get(url + "/config").json()
    components = {c["id"]: c for c in config["components"]}
    depth_id = next(c["id"] for c in config["components"]
                    if c.get("props", {}).get("label", "").startswith("Depth file"))
    dep = next(d for d in config["dependencies"]
               if any(t[0] == depth_id and t[1] == "change" for t in d["targets"]) and not d.get("queue", True))
    values = []
    for cid in dep["inputs"]:
        values.append(record if cid == depth_id else components[cid].get("props", {}).get("value"))
    return dep["id"], values, depth_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--race-seconds", type=float, default=30.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fluxdepth-visitors-"))
    t0 = time.perf_counter()
    files = make_files(work)
    report = {"python": platform.python_version(), "cpus": os.cpu_count(), "made_files_s": round(time.perf_counter()
                                                                                                 - t0, 1)}
    server = Server(work, ["--max-decoded-mb", "300"])
    try:
        client = logged_in()
        login(client, server.url)
        small = upload(client, server.url, files["small"])
        api_preview(client, server.url, small)  # torch-free warm-up: the preview path is loaded
        big = upload(client, server.url, files["big"])
        fn_index, values, trigger = page_preview_payload(client, server.url, big)
        idle = rss_mb(server.proc.pid)
        t0 = time.perf_counter()
        codes = []
        for i in range(args.sessions):
            r = client.post(server.url + "/gradio_api/run/predict",
                            json={"data": values, "fn_index": fn_index, "session_hash": f"nobeat{i:04d}",
                                  "trigger_id": trigger, "event_data": None})
            codes.append(r.status_code)
        report["sessions"] = {"count": args.sessions, "http_200": codes.count(200), "rss_idle_mb": round(idle),
                              "rss_after_mb": round(rss_mb(server.proc.pid)),
                              "rss_growth_mb": round(rss_mb(server.proc.pid) - idle),
                              "seconds": round(time.perf_counter() - t0, 1)}
        print("sessions", report["sessions"], flush=True)

        for key in ("pages", "deep"):
            record = upload(client, server.url, files[key])
            seconds, error = api_preview(client, server.url, record)
            report[key] = {"seconds": round(seconds, 2), "refused": error, "file_mb": round(
                os.path.getsize(files[key]) / 2**20, 1)}
            print(key, report[key], flush=True)

        stop = time.monotonic() + args.race_seconds
        beats = [0]

        def beat_loop():
            while time.monotonic() < stop:
                try:
                    with httpx.stream("GET", server.url + "/gradio_api/heartbeat/local", timeout=2) as r:
                        next(r.iter_bytes(), None)
                except httpx.HTTPError:
                    pass
                beats[0] += 1

        threads = [threading.Thread(target=beat_loop, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        results = []
        while time.monotonic() < stop:
            results.append(api_preview(client, server.url, small)[1])
        for t in threads:
            t.join(10)
        report["heartbeat_race"] = {"seconds": args.race_seconds, "previews": len(results),
                                    "failures": sum(1 for e in results if e), "heartbeats": beats[0],
                                    "first_failure": next((e for e in results if e), None)}
        print("race", report["heartbeat_race"], flush=True)

        roots = server.scratch()
        before = sum(tree_bytes(r) for r in roots)
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(60)
        report["sigterm"] = {"exit": code, "scratch_bytes_before": before,
                             "scratch_roots_left": len(server.scratch()),
                             "scratch_bytes_left": sum(tree_bytes(r) for r in server.scratch())}
        print("sigterm", report["sigterm"], flush=True)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
