"""Sequences on Ray: frames rendered by N workers, each loading the pipeline once (docs/farm.md).

Frames are independent once the stats file fixes the range and the seed, so the driver hands them out and every
worker renders through the same shot function as any other path (`shot.render_shot`): the files are byte-identical
to a single-process run. No scheduler here: Ray's actors and `ray.wait` do the scheduling; this module decides what
is left to do (resume), retries a frame whose worker died, and reports a frame that failed twice.

Ray is an optional extra (`pip install -e ".[farm]"`); this module imports it only when called.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from .atomic import remove_stale_parts
from .errors import FluxDepthError
from .settings import PipelineSpec, ShotSettings

ATTEMPTS = 2  # a frame that fails this many times is reported; the others finish


class ShotWorker:
    """One Ray actor: loads its pipeline on the first frame and keeps it for every later one."""

    def __init__(self, spec: dict, fail_once_on: int | None = None):
        self.spec = PipelineSpec(**spec)
        self.manager = None
        self.fail_once_on = fail_once_on  # tests: this worker process dies once on this frame number

    def render(self, frame_path: str, number: int, shot: dict, png: str, control_png: str, key: str,
               formats: tuple[str, ...]) -> int:
        from .pipeline import PipelineManager
        from .shot import render_shot

        if self.fail_once_on == number:
            marker = png + ".died-once"
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # a worker killed mid-frame: nothing of this frame was written
        if self.manager is None:
            self.manager = PipelineManager.from_spec(self.spec, token=os.environ.get("HF_TOKEN"))
        render_shot(self.manager, frame_path, ShotSettings.from_dict(shot), png, key=key, control_png=control_png,
                    formats=formats)
        return number


@dataclass
class FarmReport:
    rendered: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # frame -> last error, after ATTEMPTS tries
    retried: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    def failure_line(self) -> str:
        """'frame(s) 4, 9 failed twice (why)': the one message the CLI and the app give."""
        numbers = ", ".join(map(str, sorted(self.failed)))
        return f"frame(s) {numbers} failed twice ({next(iter(self.failed.values()))})"


def render_sequence_ray(spec: PipelineSpec, frames: list, stats, depth, generation, out_dir: str, workers: int,
                        address: str | None = None, formats: tuple[str, ...] = (),
                        on_frame: Callable[[int, int, object, str], None] | None = None,
                        worker_options: dict | None = None) -> FarmReport:
    """Render `frames` on `workers` Ray actors (one GPU each when the cluster has GPUs, else one CPU each)."""
    try:
        import ray
    except ImportError:
        raise FluxDepthError('--workers needs Ray: pip install -e ".[farm]"') from None
    from .pipeline import PipelineManager
    from .sequence import frame_is_done, output_paths, settings_with_stats
    from .shot import expected_key

    if workers < 1:
        raise FluxDepthError("--workers must be 1 or more")
    os.makedirs(os.path.join(out_dir, "control"), exist_ok=True)
    remove_stale_parts(out_dir)  # a killed run's half-written files
    shot = ShotSettings(settings_with_stats(depth, stats), generation)
    keyer = PipelineManager.from_spec(spec)  # names the model and tier for the shot keys; loads nothing
    report = FarmReport(workers=workers)
    todo = []
    for frame in frames:
        png, sidecar, control_png = output_paths(out_dir, frame)
        key = expected_key(keyer, frame.path, shot)
        report.outputs.append(png)
        report.controls.append(control_png)
        if frame_is_done(png, sidecar, control_png, key, formats):
            report.skipped.append(frame.number)
        else:
            todo.append((frame, png, control_png, key))
    done_count = len(report.skipped)
    if on_frame:
        for i, number in enumerate(report.skipped):
            on_frame(i + 1, len(frames), next(f for f in frames if f.number == number), "skipped")
    if not todo:
        return report

    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(workers, 1)}))
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        per_worker = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        # No automatic restarts: a task sent to an actor Ray is still restarting can fail as well (issue 27 saw the
        # next frame lost that way), so a dead worker is replaced by a fresh actor before anything else is sent to it.
        actor = ray.remote(max_restarts=0, **per_worker)(ShotWorker)
        options = worker_options or {}

        def start_worker():
            return actor.remote(spec.to_dict(), **options)

        pool = [start_worker() for _ in range(min(workers, len(todo)))]
        shot_dict = shot.to_dict()
        attempts: dict[int, int] = {}
        queue = list(todo)
        running: dict = {}  # object ref -> (actor index, item)

        def submit(index: int) -> None:
            frame, png, control_png, key = item = queue.pop(0)
            ref = pool[index].render.remote(frame.path, frame.number, shot_dict, png, control_png, key,
                                            tuple(formats))
            running[ref] = (index, item)

        for index in range(len(pool)):
            if queue:
                submit(index)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            index, item = running.pop(ref)
            frame = item[0]
            try:
                ray.get(ref)
                report.rendered.append(frame.number)
                status = "rendered"
            except Exception as exc:  # noqa: BLE001 - a worker's failure is this frame's result
                if isinstance(exc, ray.exceptions.RayActorError):
                    ray.kill(pool[index], no_restart=True)
                    pool[index] = start_worker()
                attempts[frame.number] = attempts.get(frame.number, 0) + 1
                if attempts[frame.number] < ATTEMPTS:
                    report.retried.append(frame.number)
                    queue.append(item)  # again, on whichever worker is free next
                    status = "retrying"
                else:
                    report.failed[frame.number] = _reason(exc)
                    status = "failed"
            if status != "retrying":
                done_count += 1
                if on_frame:
                    on_frame(done_count, len(frames), frame, status)
            if queue:
                submit(index)
    finally:
        if started_here:
            ray.shutdown()
    report.rendered.sort()
    report.seconds = time.perf_counter() - t0
    return report


def _reason(exc: BaseException) -> str:
    """One line: our own message when a worker raised one, else what kind of failure it was."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FluxDepthError):
        return str(cause)
    text = str(exc).strip().splitlines()
    name = type(exc).__name__
    if "ActorDied" in name or "ActorError" in name or "WorkerCrashed" in name:
        return "its worker process died twice"
    return f"{name}: {text[-1][:200] if text else ''}"
