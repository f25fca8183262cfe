"""One JSON file per side of a run, rewritten atomically after every scenario: a crash or a kill later in the
run never loses what already finished. Raw request traces go beside it, gzipped (they are large)."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path
from typing import Any

from speedrun.eval.trace import RequestTrace

FORMAT = "speedrun-results/1"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str, allow_nan=False))
    os.replace(tmp, path)


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class ResultsFile:
    """{format, side, recipe, ..., scenarios: [...], accuracy: {...}, errors: [...]}"""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = Path(path)
        self.data = data

    @classmethod
    def create(cls, path: Path, **header: Any) -> ResultsFile:
        data = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            **header,
            "scenarios": [],
            "accuracy": {},
            "errors": [],
        }
        rf = cls(Path(path), data)
        rf.save()
        return rf

    @classmethod
    def load(cls, path: Path) -> ResultsFile:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a speedrun results file (format {data.get('format')!r})")
        return cls(Path(path), data)

    def save(self) -> None:
        write_json_atomic(self.path, _finite(self.data))

    def add_scenario(self, entry: dict[str, Any]) -> None:
        self.data["scenarios"].append(entry)
        self.save()

    def set(self, key: str, value: Any, section: str | None = None) -> None:
        (self.data.setdefault(section, {}) if section else self.data)[key] = value
        self.save()

    def add_error(self, what: str, message: str, log_tail: str = "") -> None:
        self.data["errors"].append({"what": what, "message": message, "log_tail": log_tail})
        self.save()


def save_traces(path: Path, traces: list[RequestTrace]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump([t.to_dict() for t in traces], f, separators=(",", ":"))
    os.replace(tmp, path)


def load_traces(path: Path) -> list[RequestTrace]:
    with gzip.open(path, "rt") as f:
        return [RequestTrace.from_dict(d) for d in json.load(f)]
