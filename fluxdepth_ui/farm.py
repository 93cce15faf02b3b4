"""Sequences on Ray: frames rendered by N workers, each loading the pipeline once (docs/farm.md).

Frames are independent once the stats file fixes the range and the seed, so the driver hands them out and every
worker renders through the same shot function as any other path (`shot.render_shot`): the files are byte-identical
to a single-process run. No scheduler here: Ray's actors and `ray.wait` do the scheduling; what is left to do is
planned by the sequence service (sequence.render_sequence, which calls this with `workers`); this module retries a
frame whose worker died and reports a frame that failed twice.

Ray is an optional extra (`pip install -e ".[farm]"`); this module imports it only when called.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable

from .errors import FluxDepthError
from .settings import PipelineSpec, ShotSettings

ATTEMPTS = 2  # a frame that fails this many times is reported; the others finish
WAIT_SLICE_S = 1.0  # the driver waits for the next finished frame in slices, so signal handlers run


class ShotWorker:
    """One Ray actor: loads its pipeline on the first frame and keeps it for every later one."""

    def __init__(self, spec: dict, fail_once_on: int | None = None, stall_on: int | None = None):
        self.spec = PipelineSpec(**spec)
        self.manager = None
        self.fail_once_on = fail_once_on  # tests: this worker process dies once on this frame number
        self.stall_on = stall_on  # tests: this frame takes ten minutes

    def render(self, frame_path: str, number: int, shot: dict, png: str, control_png: str, key: str,
               formats: tuple[str, ...]) -> int:
        from .pipeline import PipelineManager
        from .shot import render_shot

        if self.fail_once_on == number:
            marker = png + ".died-once"
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # a worker killed mid-frame: nothing of this frame was written
        if self.stall_on == number:
            time.sleep(600)
        if self.manager is None:
            self.manager = PipelineManager.from_spec(self.spec, token=os.environ.get("HF_TOKEN"))
        render_shot(self.manager, frame_path, ShotSettings.from_dict(shot), png, key=key, control_png=control_png,
                    formats=formats)
        return number


def render_jobs_on_ray(spec: PipelineSpec, jobs: list, shot: ShotSettings, formats: tuple[str, ...], workers: int,
                       address: str | None, report, worker_options: dict | None = None,
                       on_done: Callable[[object, str], None] | None = None) -> None:
    """Render the planned frames (sequence.plan_frames) on `workers` Ray actors, one GPU each when the cluster has
    GPUs, else one CPU each; fills `report` (sequence.SequenceReport): rendered, retried, failed."""
    try:
        import ray
    except ImportError:
        raise FluxDepthError('--workers needs Ray: pip install -e ".[farm]"') from None
    if workers < 1:
        raise FluxDepthError("--workers must be 1 or more")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(workers, 1)}))
    pool: list = []
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        per_worker = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        # No automatic restarts: a task sent to an actor Ray is still restarting can fail as well (issue 27 saw the
        # next frame lost that way), so a dead worker is replaced by a fresh actor before anything else is sent to it.
        actor = ray.remote(max_restarts=0, **per_worker)(ShotWorker)
        options = worker_options or {}

        def start_worker():
            return actor.remote(spec.to_dict(), **options)

        pool.extend(start_worker() for _ in range(min(workers, len(jobs))))
        shot_dict = shot.to_dict()
        attempts: dict[int, int] = {}
        queue = list(jobs)
        running: dict = {}  # object ref -> (actor index, job)

        def submit(index: int) -> None:
            job = queue.pop(0)
            ref = pool[index].render.remote(job.frame.path, job.frame.number, shot_dict, job.png, job.control_png,
                                            job.key, tuple(formats))
            running[ref] = (index, job)

        for index in range(len(pool)):
            if queue:
                submit(index)
        while running:
            # In one-second slices: one blocking ray.wait held Python's signal handlers (a server's SIGTERM, a time
            # limit's SIGALRM) off until a frame ended, minutes on a farm; Ray answers Ctrl-C itself.
            ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SLICE_S)
            if not ready:
                continue
            ref = ready[0]
            index, job = running.pop(ref)
            number = job.frame.number
            try:
                ray.get(ref)
                report.rendered.append(number)
                status = "rendered"
            except Exception as exc:  # noqa: BLE001 - a worker's failure is this frame's result
                if isinstance(exc, ray.exceptions.RayActorError):
                    ray.kill(pool[index], no_restart=True)
                    pool[index] = start_worker()
                attempts[number] = attempts.get(number, 0) + 1
                if attempts[number] < ATTEMPTS:
                    report.retried.append(number)
                    queue.append(job)  # again, on whichever worker is free next
                    status = "retrying"
                else:
                    report.failed[number] = _reason(exc)
                    status = "failed"
            if status != "retrying" and on_done:
                on_done(job.frame, status)
            if queue:
                submit(index)
    finally:
        # The workers go now, finished or interrupted (Ctrl-C, an error): on a shared cluster their GPUs are free
        # for the next job at once, not when this process lets go of the last handle.
        for worker in pool:
            with contextlib.suppress(Exception):  # a cluster that is gone has ended them already
                ray.kill(worker, no_restart=True)
        if started_here:
            ray.shutdown()


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
