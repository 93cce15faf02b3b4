"""What a shared studio (a `--share` link, a Space) must not trust: docs/sharing.md explains each piece.

- `HostPolicy`: what visitors may change (tiers), how long their files are kept, preset saving.
- `UploadGate`: the only way from a request value to a file path: files this server received through gradio's
  upload route (or a bundled example), regular files only. A plain string path is never opened.
- `Workspace`: one private temp folder per browser session (previews, unpacked zips), removed when it ends.
- `GuardMiddleware`: a bound on API request bodies and a slow-down after failed logins, per client.
- `sweep_outputs`: retention of old session folders.
- `user_facing`: every error a visitor sees is one line without a server path; anything unexpected is logged
  with a short id and shown as "internal error (id ...)".
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import html
import inspect
import logging
import math
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import process_alive
from ..depth import DepthInputError
from ..errors import FluxDepthError, one_line

log = logging.getLogger(__name__)

DAY = 86400.0


# --- policy ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPolicy:
    shared: bool = False  # served to strangers: a --share link or a Space
    tiers: tuple[str, ...] = ()  # tiers a visitor may switch to (the launch tier is always among them)
    keep_days: float | None = None  # session folders and uploads older than this are removed; None keeps them
    save_presets: bool = True  # visitors may write presets into the host's preset folder
    min_free_mb: int = 200  # refuse a generation before it starts when the outputs disk is this full
    mcp: bool = False  # local only (launch.check_mcp): MCP tools hand files in through gradio's cache folder

    def check_tier(self, variant: str) -> None:
        if variant not in self.tiers:
            offered = ", ".join(self.tiers)
            raise FluxDepthError(f"this server offers only {offered}; the host can allow more tiers with "
                                 "--allow-tiers")


def make_policy(shared: bool, launch_tier: str, runnable: list[str], allow_tiers: str | None,
                keep_days: float | None) -> HostPolicy:
    """Local: every tier this machine runs, files kept. Shared: the launch tier only, files kept 7 days."""
    if allow_tiers in (None, ""):
        tiers = list(runnable) if not shared else [launch_tier]
    elif allow_tiers == "all":
        tiers = list(runnable)
    else:
        tiers = [t.strip() for t in allow_tiers.split(",") if t.strip()]
        unknown = [t for t in tiers if t not in runnable]
        if unknown:
            raise FluxDepthError(f"--allow-tiers names {', '.join(unknown)}, which this machine cannot run; "
                                 f"choose from {', '.join(runnable)}")
    if launch_tier not in tiers:
        tiers.insert(0, launch_tier)
    if keep_days is None and shared:
        keep_days = 7.0
    if keep_days is not None and keep_days <= 0:
        keep_days = None  # 0 = keep forever
    return HostPolicy(shared=shared, tiers=tuple(t for t in runnable if t in tiers) or (launch_tier,),
                      keep_days=keep_days, save_presets=not shared)


# --- uploads -----------------------------------------------------------------------------------------------------


class UploadGate:
    """Turns a file value from a request into a path, or refuses it.

    Accepted: a file record (gradio's FileData) whose file came in through this server's upload route, or a
    cached copy of a bundled example. Refused: plain strings, paths anywhere else (other sessions' results, the
    outputs folder, system files), anything that is not a regular file.
    """

    def __init__(self, demo, example_files: list[str], trust_cache: bool = False):
        self._demo = demo
        # MCP tools (a local studio only) save the files an assistant sends into gradio's cache, not through the
        # upload route: with --mcp, a file in that cache folder is taken as sent by the client.
        self._trust_cache = trust_cache
        self._made: set[str] = set()
        self._examples = {_sha256(p): os.path.basename(p) for p in example_files}

    def resolve(self, value, what: str = "depth file", record_only: bool = False) -> str:
        if isinstance(value, dict):
            path = value.get("path")
        elif hasattr(value, "path"):  # FileData
            path = value.path
        elif isinstance(value, str) and not record_only:
            path = value  # from a gr.File component: gradio already kept it to its upload folder
        elif isinstance(value, str):
            raise DepthInputError(f"send the {what} as a file (gradio_client: handle_file(path)), not as a path "
                                  "on the server")
        else:
            path = None
        if not path:
            raise DepthInputError(f"no {what} yet: upload one")
        path = str(path)
        real = os.path.realpath(path)
        if not (real in self._uploaded() or self._is_example_copy(real) or self._in_cache(real)):
            raise DepthInputError(f"that {what} was not uploaded to this server; upload the file itself")
        if not os.path.isfile(real):
            raise DepthInputError(f"the uploaded {what} is gone (removed after the retention period); upload it "
                                  "again")
        return real

    def register(self, path: str) -> str:
        """A file this server made and handed to a client as an input value (a photo's depth): it may come back."""
        self._made.add(os.path.realpath(path))
        return path

    def _uploaded(self) -> set[str]:
        return {os.path.realpath(p) for p in getattr(self._demo, "upload_file_set", ())} | self._made

    def _in_cache(self, real: str) -> bool:
        if not self._trust_cache:
            return False
        cache = os.path.realpath(self._demo.GRADIO_CACHE)
        return os.path.commonpath([cache, real]) == cache

    def _is_example_copy(self, real: str) -> bool:
        name = os.path.basename(real)
        if name not in self._examples.values() or not os.path.isfile(real):
            return False
        return self._examples.get(_sha256(real)) == name


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- per-session scratch space -----------------------------------------------------------------------------------


SCRATCH_PREFIX = "fluxdepth-sessions-"


def _new_scratch_root() -> Path:
    # The process id in the name lets the next start remove what a killed server left (sweep_stale_scratch).
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))


@dataclass
class Workspace:
    """Private temp folders per session (under the system temp dir, which gradio may serve from), removed at the
    session's end, at the server's end (SIGTERM and SIGINT included: launch.py) and, for a killed server, at the
    next start. Bounded whatever a client skips (heartbeats, cookies): at most `max_sessions` sessions hold scratch
    (the least recently used one goes first), a session keeps only its latest unpacked upload, and unpacked uploads
    of all sessions together stay under `max_staged_mb` (docs/sharing.md)."""

    root: Path = field(default_factory=_new_scratch_root)
    max_sessions: int = 64
    max_staged_mb: int = 8192
    _staged: OrderedDict = field(default_factory=OrderedDict)  # (session, key) -> (entry, folder, bytes)
    _used: OrderedDict = field(default_factory=OrderedDict)  # session -> None, least recently used first
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self):
        atexit.register(self.close)  # scratch files never outlive the server process

    def folder(self, session: str | None, *parts: str) -> Path:
        safe = _safe_session(session)
        with self._lock:
            self._used[safe] = None
            self._used.move_to_end(safe)
            while len(self._used) > self.max_sessions:
                self._end(next(iter(self._used)))
            path = self.root.joinpath(safe, *parts)
            path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def scratch(self):
        """A folder of one request (API calls, which have no page session), removed when the request is done."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=".request-", dir=self.root))  # no session's name starts with "."
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def staged(self, session: str | None, key: tuple, make) -> object:
        """`make(folder)` once per (session, key): the same upload is never unpacked twice. A `make` that raises
        leaves nothing behind."""
        safe = _safe_session(session)
        with self._lock:
            kept = self._staged.get((safe, key))
            if kept is not None:
                self._staged.move_to_end((safe, key))
                return kept[0]
        folder = self.folder(session, f"upload-{time.time_ns()}")
        try:
            entry = make(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        with self._lock:
            for other in [k for k in self._staged if k[0] == safe]:  # a session works on its latest upload
                self._drop(other)
            self._staged[(safe, key)] = (entry, folder, size)
            while sum(v[2] for v in self._staged.values()) > self.max_staged_mb * 2**20 and len(self._staged) > 1:
                self._drop(next(iter(self._staged)))
        return entry

    def discard(self, session: str | None, folder: str | Path) -> None:
        """An unpacked upload that was refused after unpacking: its files go now, not at the session's end."""
        safe, folder = _safe_session(session), Path(folder)
        with self._lock:
            for k in [k for k, v in self._staged.items() if k[0] == safe and v[1] == folder]:
                self._drop(k)
        shutil.rmtree(folder, ignore_errors=True)

    def end(self, session: str | None) -> None:
        with self._lock:
            self._end(_safe_session(session))

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _end(self, safe: str) -> None:
        for k in [k for k in self._staged if k[0] == safe]:
            del self._staged[k]
        self._used.pop(safe, None)
        shutil.rmtree(self.root / safe, ignore_errors=True)

    def _drop(self, key: tuple) -> None:
        _, folder, _ = self._staged.pop(key)
        shutil.rmtree(folder, ignore_errors=True)


def remove_scratch_on_signals(workspace: Workspace) -> None:
    """SIGTERM (how hosts stop a Space) and SIGINT skip atexit: remove the scratch root, then end as the signal
    would have. Main thread only (launch.main)."""

    def handler(signum, frame):
        workspace.close()
        signal.signal(signum, signal.SIG_DFL)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # gradio's own shutdown on Ctrl+C
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def sweep_stale_scratch(temp_dir: str | None = None) -> list[str]:
    """At start: remove the scratch roots of servers that are no longer running (killed, crashed)."""
    removed = []
    base = Path(temp_dir or tempfile.gettempdir())
    for path in base.glob(f"{SCRATCH_PREFIX}*-*"):
        pid = path.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir() or path.is_symlink() or process_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def _safe_session(session: str | None) -> str:
    return "".join(c for c in (session or "") if c.isalnum() or c in "_-")[:32] or "local"


# --- retention ---------------------------------------------------------------------------------------------------


def sweep_outputs(outputs: Path, keep_days: float | None, now: float | None = None) -> list[str]:
    """Remove session folders under `outputs` whose newest file is older than `keep_days`. Returns their names."""
    if keep_days is None or not outputs.is_dir():
        return []
    cutoff = (now or time.time()) - keep_days * DAY
    removed = []
    for folder in outputs.iterdir():
        if not folder.is_dir() or folder.is_symlink():
            continue
        newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
        if newest < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def start_retention(outputs: Path, keep_days: float | None, every_s: float = 3600.0) -> threading.Event | None:
    """Sweep now and then every hour in a daemon thread; set the returned event to stop it."""
    if keep_days is None:
        return None
    stop = threading.Event()

    def loop():
        while True:
            try:
                removed = sweep_outputs(outputs, keep_days)
                if removed:
                    log.info("retention: removed %d session folders older than %g days", len(removed), keep_days)
            except OSError:
                log.exception("retention sweep failed")
            if stop.wait(every_s):
                return

    threading.Thread(target=loop, name="fluxdepth-retention", daemon=True).start()
    return stop


# --- errors a visitor sees ---------------------------------------------------------------------------------------


def user_facing(fn):
    """Wrap an event handler: FluxDepthError -> its one line; anything else -> logged, shown with an id only."""

    import gradio as gr

    @contextlib.contextmanager
    def translated():
        try:
            yield
        except gr.Error:
            raise
        except FluxDepthError as exc:  # gradio renders a toast's text as HTML: a file name must stay text
            raise gr.Error(html.escape(one_line(str(exc)), quote=False), print_exception=False) from None
        except Exception:  # noqa: BLE001 - the one place unexpected errors are turned into a safe message
            ident = secrets.token_hex(4)
            log.exception("internal error %s in %s", ident, getattr(fn, "__name__", "handler"))
            raise gr.Error(f"internal error (id {ident}); the host's log has the details", print_exception=False) \
                from None

    if inspect.isgeneratorfunction(fn):  # a handler that streams (the live preview): each value as it comes
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            with translated():
                yield from fn(*args, **kwargs)

        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with translated():
            return fn(*args, **kwargs)

    return wrapper


def as_toast(outputs: int, status: int | None = None):
    """For page events: an error becomes a toast (gr.Warning) and the outputs stay as they were, so no control is
    left under a red overlay; `status` (an output index) also gets the message. API endpoints raise instead."""
    import gradio as gr

    def as_updates(exc) -> tuple:
        gr.Warning(exc.message)
        updates = [gr.update() for _ in range(outputs)]
        if status is not None:
            from .handlers import md_text

            updates[status] = f"⚠ {md_text(html.unescape(exc.message))}"
        return tuple(updates) if outputs > 1 else updates[0]

    def wrap(fn):
        guarded = user_facing(fn)

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def streaming(*args, **kwargs):
                try:
                    yield from guarded(*args, **kwargs)
                except gr.Error as exc:
                    yield as_updates(exc)

            return streaming

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return guarded(*args, **kwargs)
            except gr.Error as exc:
                return as_updates(exc)

        return wrapper

    return wrap


# --- request guard -----------------------------------------------------------------------------------------------


class LoginThrottle:
    """After `free` failed logins from one client, each further attempt waits: 1 s, 2 s, 4 s, ... up to `most` s."""

    def __init__(self, free: int = 5, most: float = 300.0, clock=time.monotonic):
        self.free, self.most, self.clock = free, most, clock
        self._fails: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        with self._lock:
            fails, until = self._fails.get(client, (0, 0.0))
        return max(0.0, until - self.clock())

    def record(self, client: str, ok: bool, free: int | None = None) -> None:
        free = self.free if free is None else free
        with self._lock:
            if ok:
                if client != ALL_CLIENTS:  # one visitor's good login does not lift the slow-down for all
                    self._fails.pop(client, None)
                return
            fails = self._fails.get(client, (0, 0.0))[0] + 1
            delay = 0.0 if fails <= free else min(self.most, 2.0 ** (fails - free - 1))
            self._fails[client] = (fails, self.clock() + delay)
            if len(self._fails) > 10_000:  # bounded memory under a spray of addresses
                self._fails.pop(next(iter(self._fails)))


UPLOAD_ROUTE = "/gradio_api/upload"  # gradio's file upload: multipart, streamed to disk, each file bounded by gradio


class GuardMiddleware:
    """ASGI: refuse request bodies above `body_limit` bytes on every route before they are read (gradio's upload
    route: `upload_limit`, and multipart only), and slow down repeated failed logins (docs/sharing.md)."""

    def __init__(self, app, body_limit: int, upload_limit: int | None = None, throttle: LoginThrottle | None = None):
        self.app, self.body_limit, self.throttle = app, body_limit, throttle or LoginThrottle()
        self.upload_limit = upload_limit or body_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "").rstrip("/")
        limit = self.body_limit
        if path == UPLOAD_ROUTE and scope.get("method") == "POST":
            if not (_header(scope, b"content-type") or "").lower().startswith("multipart/form-data"):
                return await _plain(send, 415, "uploads are sent as multipart/form-data")
            limit = self.upload_limit
        length = _header(scope, b"content-length")
        if length and (not length.isdigit() or int(length) > limit):
            return await _plain(send, 413, "request body too large for this server")
        seen = 0

        async def counted_receive():  # a body without a length (chunked) is counted as it arrives
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        try:
            if scope.get("method") == "POST" and path.endswith("/login"):
                return await self._login(scope, counted_receive, send)
            return await self.app(scope, counted_receive, send)
        except _BodyTooLarge:
            return await _plain(send, 413, "request body too large for this server")

    async def _login(self, scope, receive, send):
        client = _client_key(scope)
        # Per client, and over all clients together (a bucket of its own with more free attempts): a forged
        # address per attempt cannot get around the slow-down.
        wait = max(self.throttle.wait_s(client), self.throttle.wait_s(ALL_CLIENTS))
        if wait > 0:
            return await _plain(send, 429, f"too many failed logins; wait {math.ceil(wait)} s",
                                [(b"retry-after", str(math.ceil(wait)).encode())])
        status = {}

        async def watched_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watched_send)
        ok = status.get("code") == 200
        self.throttle.record(client, ok)
        self.throttle.record(ALL_CLIENTS, ok, free=ALL_CLIENTS_FREE)


class _BodyTooLarge(Exception):
    pass


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


ALL_CLIENTS = "*"
ALL_CLIENTS_FREE = 50


def _client_key(scope) -> str:
    """The client's address; behind a proxy on this machine (gradio's share tunnel, a Space) the forwarded one that
    proxy added: the last entry of X-Forwarded-For (proxies append; the entries before it are the client's own
    claim, free to forge)."""
    host = (scope.get("client") or ("unknown", 0))[0]
    forwarded = _header(scope, b"x-forwarded-for")
    if forwarded and host in ("127.0.0.1", "::1", "localhost"):
        return forwarded.split(",")[-1].strip()[:64] or host
    return host


async def _plain(send, status: int, text: str, headers: list | None = None):
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
