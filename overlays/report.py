"""Per-process overlay report: what this process asked for, what it applied, what fell back to stock.

One JSON file per process in the plugin settings' report_dir (nothing is written when unset). The launcher
and `speedrun report` read them back. Writes are atomic (tmp + rename) and throttled: call counters are
flushed at most every FLUSH_S seconds, state changes (hooks applied, a new fallback reason) at once.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from speedrun.overlays import environ

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
    if not _state:
        return None
    root = environ.settings().report_dir  # loaded now if register() did not run (tests, tools, the fake server)
    if root is None:
        return None
    rank = _state.get("tp_rank")
    tag = f"{_state.get('role', 'proc')}" + (f"-tp{rank}" if rank is not None else "")
    return root / f"overlay-{tag}-{_state['pid']}.json"


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


class _Shape(BaseModel):
    """The fields readers rely on (other fields pass through); a file that does not fit is named, not read."""

    model_config = ConfigDict(extra="allow")
    role: str = "?"
    tp_rank: int | None = None
    pid: int | None = None
    ops_requested: list[str] = []
    applied: list[str] = []
    hooks: list[Any] = []
    calls: dict[str, int] = {}
    fallbacks: dict[str, dict[str, int]] = {}
    errors: list[str] = []


@dataclass
class Found:
    reports: list[dict[str, Any]]  # launcher first, then schedulers by rank
    unreadable: dict[Path, str] = field(default_factory=dict)  # file -> why


def read_one(f: Path) -> dict[str, Any]:
    """One report file; ValueError (one line: why) when it is unreadable, truncated or not a report."""
    try:
        data = json.loads(f.read_text())
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    except ValueError as exc:  # the writer renames whole files into place: a torn one means a fault
        raise ValueError(f"not valid JSON (truncated?): {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__ if data is not None else 'null'}")
    try:
        _Shape.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ValueError(f"{'.'.join(map(str, e['loc']))}: {e['msg']}, got {e['input']!r:.60}") from None
    return data


def read_reports(path: Path) -> Found:
    """The reports in a report folder (overlay-*.json), or one report file; unreadable ones listed apart."""
    path = Path(path)
    found = Found([])
    for f in [path] if path.is_file() else sorted(path.glob("overlay-*.json")):
        try:
            found.reports.append(read_one(f))
        except ValueError as exc:
            found.unreadable[f] = str(exc)
    found.reports.sort(key=lambda r: (r.get("role") != "launcher", r.get("tp_rank") or 0, r.get("pid") or 0))
    return found


def read_all(directory: Path) -> list[dict[str, Any]]:
    """Every readable report in `directory`, launcher first, then schedulers by rank."""
    return read_reports(directory).reports


atexit.register(lambda: flush(force=True))


def warmups(rep: dict[str, Any]) -> list[str]:
    """What each op compiled at load (`<op>_warmup`, overlays.warmup): its calls and their seconds."""
    return [f"{key.removesuffix('_warmup')}: {v.get('calls')} calls, {v.get('seconds')} s"
            for key, v in sorted(rep.items()) if key.endswith("_warmup") and isinstance(v, dict)]  # fmt: skip


def routes(rep: dict[str, Any]) -> list[str]:
    """How a process's ops route calls by size (`<op>_routes` lines, e.g. "M > 7310: stock FP8 block fused MoE")."""
    return [line for key in sorted(rep) if key.endswith("_routes") for line in rep[key] or []]
