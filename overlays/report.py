"""Per-process overlay report: what this process asked for, what it applied, what fell back to stock.

One JSON file per process in SPEEDRUN_REPORT_DIR (nothing is written when unset). The launcher and
`speedrun report` read them back. Writes are atomic (tmp + rename) and throttled: call counters are
flushed at most every FLUSH_S seconds, state changes (hooks applied, a new fallback reason) at once.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

FLUSH_S = 2.0

_state: dict[str, Any] = {}
_calls: Counter[str] = Counter()
_fallbacks: dict[str, Counter[str]] = defaultdict(Counter)
_last_flush = 0.0


def process_identity() -> dict[str, Any]:
    """Role and tensor-parallel rank of this process, read off the call stack.

    SGLang calls `load_plugins()` first thing in `run_scheduler_process(server_args, port_args, gpu_id,
    tp_rank, ...)`, so a scheduler finds that frame above it; the launcher and the Engine do not.
    """
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_name
        if name == "run_scheduler_process":
            loc = frame.f_locals
            return {
                "role": "scheduler",
                "tp_rank": loc.get("tp_rank"),
                "gpu_id": loc.get("gpu_id"),
                "pp_rank": loc.get("pp_rank"),
                "dp_rank": loc.get("dp_rank"),
            }
        frame = frame.f_back
    return {"role": "launcher", "tp_rank": None, "gpu_id": None, "pp_rank": None, "dp_rank": None}


def start(**fields: Any) -> None:
    """Begin this process's report (called once by `register()`)."""
    _state.clear()
    _calls.clear()
    _fallbacks.clear()
    _state.update(pid=os.getpid(), started=time.time(), errors=[], hooks=[], **fields)
    flush(force=True)


def record(**fields: Any) -> None:
    """Set top-level report fields (e.g. what was applied, what the synthetic filler did) and write them now."""
    _state.update(fields)
    flush(force=True)


def add_hook(row: dict[str, Any]) -> None:
    _state.setdefault("hooks", []).append(row)


def error(message: str) -> None:
    """An op was requested but could not be applied: never silent."""
    _state.setdefault("errors", []).append(message)
    flush(force=True)


def called(name: str) -> None:
    _calls[name] += 1
    flush()


def fallback(op: str, hook: str, reason: str) -> None:
    first = reason not in _fallbacks[hook]
    _fallbacks[hook][reason] += 1
    flush(force=first)


def snapshot() -> dict[str, Any]:
    return {
        **_state,
        "calls": dict(_calls),
        "fallbacks": {k: dict(v) for k, v in _fallbacks.items()},
        "updated": time.time(),
    }


def path() -> Path | None:
    root = os.environ.get("SPEEDRUN_REPORT_DIR")
    if not root or not _state:
        return None
    rank = _state.get("tp_rank")
    tag = f"{_state.get('role', 'proc')}" + (f"-tp{rank}" if rank is not None else "")
    return Path(root) / f"overlay-{tag}-{_state['pid']}.json"


def flush(force: bool = False) -> None:
    global _last_flush
    now = time.monotonic()
    target = path()
    if target is None or (not force and now - _last_flush < FLUSH_S):
        return
    _last_flush = now
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot(), indent=1, default=str))
        os.replace(tmp, target)
    except OSError:  # a report must never take the server down
        pass


def read_all(directory: Path) -> list[dict[str, Any]]:
    """Every report in `directory`, launcher first, then schedulers by rank."""
    out = []
    for f in sorted(Path(directory).glob("overlay-*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda r: (r.get("role") != "launcher", r.get("tp_rank") or 0, r.get("pid", 0)))


atexit.register(lambda: flush(force=True))
