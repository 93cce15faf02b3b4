"""Step times measured on this machine, per model, device and tier: what the app's tier labels show.

Figures from another machine (docs/benchmarks.md) say little about an artist's card, so the labels show only what
this machine measured ("0.42 s/step at 1024×1024 here") or "not measured here yet". Kept as a small JSON file in the
cache folder; the median of the last few images, so one slow first image (caches warming) does not dominate.
"""

from __future__ import annotations

import json
import os
import statistics
import threading

from ..atomic import write_text

KEEP = 8  # last images per (model, device, tier, size)


class TimingLog:
    def __init__(self, root: str):
        self.path = os.path.join(root, "timings.json")
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def record(self, model: str, device: str, variant: str, width: int, height: int, steps: int,
               seconds: float) -> None:
        if steps <= 0 or seconds <= 0:
            return
        key = f"{model}|{device}|{variant}"
        with self._lock:
            data = self._read()
            sizes = data.setdefault(key, {})
            runs = sizes.setdefault(f"{width}x{height}", [])
            runs.append(round(seconds / steps, 4))
            sizes[f"{width}x{height}"] = runs[-KEEP:]
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                write_text(self.path, json.dumps(data, indent=1))
            except OSError:
                pass  # a read-only cache folder costs the labels, never a generation

    def record_first_compiled(self, model: str, device: str, variant: str, seconds: float) -> None:
        """The seconds of the last first image a compiled pipeline made (compile included): what the app quotes
        before the next one ("about N s here last time")."""
        key = f"{model}|{device}|{variant}"
        with self._lock:
            data = self._read()
            data.setdefault(key, {})["first_compiled_s"] = [round(float(seconds), 1)]
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                write_text(self.path, json.dumps(data, indent=1))
            except OSError:
                pass

    def first_compiled(self, model: str, device: str, variant: str) -> float | None:
        runs = (self._read().get(f"{model}|{device}|{variant}") or {}).get("first_compiled_s") or []
        return float(runs[-1]) if runs else None

    def figures(self, model: str, device: str, variants) -> dict[str, str | None]:
        """Per tier, '0.42 s/step at 1024×1024 here (5 images)' for the size measured most, or None (one read)."""
        data = self._read()
        return {v: _figure(data.get(f"{model}|{device}|{v}") or {}) for v in variants}


def _figure(sizes: dict) -> str | None:
    sizes = {k: v for k, v in sizes.items() if "x" in k}  # sizes only, not the first-compiled record
    if not sizes:
        return None
    size, runs = max(sizes.items(), key=lambda item: len(item[1]))
    per_step = statistics.median(runs)
    shown = f"{per_step:.2f}" if per_step < 10 else f"{per_step:.0f}"
    return f"{shown} s/step at {size.replace('x', '×')} here ({len(runs)} image{'s' if len(runs) > 1 else ''})"
