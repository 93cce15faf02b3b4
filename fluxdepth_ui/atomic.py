"""Files appear whole or not at all: write beside the target, then rename over it (docs/sharing.md).

A crash, a full disk or a cancel mid-write leaves the old file (or none), never a truncated one that a resumed
sequence would take for a finished frame.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from contextlib import contextmanager
from typing import Callable

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str):
    """Yield a temporary name in the target's folder; on success it is renamed to `path`, on failure removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    root, ext = os.path.splitext(os.path.basename(path))
    # Not mkstemp: the writer creates the file, so it gets the usual permissions (umask), not 0600.
    tmp = os.path.join(folder, f".{root[:40]}.{os.getpid()}-{secrets.token_hex(4)}.part{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_PART = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.part(\.[A-Za-z0-9]+)?$")


def remove_stale_parts(folder: str) -> list[str]:
    """Before a resume: half-written files of a writer that was killed (SIGKILL skips the cleanup above), found by
    the process id in their names. Files of a writer still running on this machine are left alone."""
    removed = []
    for base, _, names in os.walk(folder):
        for name in names:
            m = _PART.match(name)
            if m and not process_alive(int(m.group(1))):
                try:
                    os.unlink(os.path.join(base, name))
                    removed.append(name)
                except OSError:
                    pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def exclusive(path: str, on_wait: Callable[[], None] | None = None):
    """Hold `path`.lock while making a cache entry, so that another process making the same one (a second farm worker
    on this machine, a second app) waits and then finds it made, instead of spending minutes making it again.

    filelock's OS lock: a process that dies releases it. Where the folder cannot hold a lock file (read-only cache),
    the entry is made without one, as before.
    """
    from filelock import FileLock, Timeout

    path = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        lock = FileLock(path + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            lock.acquire()
    except OSError as exc:
        log.warning("no lock for %s (%s): making it unguarded", path, exc)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
