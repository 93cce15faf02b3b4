"""The wheel is the whole app: built from this checkout, installed (not editable) into a fresh venv, started from
another folder with the installed launcher, it serves the page with its examples, presets and depth guide.

Offline: the wheel is built without build isolation from the tools already installed, and the fresh venv borrows
this environment's dependencies through a path entry (a `.pth` line, which does not pull in the editable install of
this checkout).
"""

import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    str(ROOT), "-w", str(work / "dist")], check=True, capture_output=True, cwd=work, timeout=300)
    wheel = next((work / "dist").glob("fluxdepth_ui-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return venv, work


def test_installed_package_is_the_wheel_not_the_checkout(installed):
    venv, work = installed
    where = subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                     "import fluxdepth_ui.presets as p; print(p.__file__); print(p.builtin_dir()); "
                                     "print(len(p.list_presets()))"], text=True, cwd=work).split()
    assert str(venv) in where[0] and str(venv) in where[1] and int(where[2]) == 6


def test_installed_launcher_serves_examples_presets_and_guide(installed):
    venv, work = installed
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([str(venv / "bin" / "fluxdepth-studio"), "--model", "tiny-random", "--port", str(port),
                             "--outputs", str(work / "outputs")], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        config = None
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            try:
                config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert config, f"the installed app did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
        for expected in ("room_karma_depth.exr", "Karma / Mantra EXR", "How auto reads your file",
                         "FLUX.1-Depth-dev was trained on Depth Anything maps"):
            assert expected in config, expected
    finally:
        proc.terminate()
        proc.wait(timeout=30)
