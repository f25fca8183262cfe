"""One JSON file per side of a run, rewritten atomically after every scenario: a crash or a kill later in the
run never loses what already finished. Raw request traces go beside it, gzipped (they are large)."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from speedrun.eval.pack import read_json
from speedrun.eval.trace import RequestTrace
from speedrun.recipe import Agreement

FORMAT = "speedrun-results/1"
# what each command writes into a side's file: a re-run replaces its own part (--force), never appends to it
OWNED = {"bench": ("scenarios",), "eval": ("accuracy", "accuracy_requested")}
STEPS = {"bench": ("throughput",), "eval": ("gsm8k", "agreement")}
LAUNCH_STEPS = ("server", "launch")  # the launch is redone by whichever command runs next
EVAL_NOTES = ("gsm8k questions",)


class ResultsError(ValueError):
    """A file that is not a usable results file; the message is one line naming the file and what is wrong."""


class _Open(BaseModel):
    """Checks what the comparison and the report read; anything else in the file is kept as it is."""

    model_config = ConfigDict(extra="allow")


class _Case(_Open):
    isl: int
    osl: int
    concurrency: int
    prompts: int
    warmup: int
    range_ratio: float
    request_rate: float | str
    ignore_eos: bool


class _Scenario(_Open):
    name: str
    case: _Case
    status: str
    metrics: dict[str, float | int | str | None] | None = None
    error: str = ""
    log_tail: str = ""


class _Error(_Open):
    what: str
    message: str
    log_tail: str = ""


class _Gsm8k(_Open):
    score_flexible: float
    score_strict: float
    invalid: float
    questions: int
    min_score: float
    passed: bool


class _Sample(_Open):
    ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]] = []


class _Samples(_Open):
    samples: list[_Sample]
    config: Agreement


class _Accuracy(_Open):
    gsm8k: _Gsm8k | None = None
    agreement_samples: _Samples | None = None


class _Report(_Open):
    role: str = "?"
    tp_rank: int | None = None
    hooks: list[dict[str, Any] | str] = []
    calls: dict[str, int] = {}
    fallbacks: dict[str, dict[str, int]] = {}
    errors: list = []


class _Results(_Open):
    scenarios: list[_Scenario] = []
    accuracy: _Accuracy = _Accuracy()
    accuracy_requested: dict[str, bool] = {}
    errors: list[_Error] = []
    scale_notes: list[str] = []
    overlay_reports: list[_Report] | None = None
    overlays_requested: list[str] = []


def errors_of(data: dict[str, Any], command: str) -> list[dict[str, Any]]:
    """The recorded errors that belong to `command`'s steps (and to a launch; "server c33-up" is the server of
    one server_by_concurrency bucket)."""
    return [e for e in data.get("errors", []) if e["what"].split(" ", 1)[0] in STEPS[command] + LAUNCH_STEPS]


def _kind(value: Any) -> str:
    """A JSON value in a few words: its type, and a scalar's value."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    return "null" if value is None else repr(value)[:60]


def check(path: Path, data: Any) -> None:
    """Raise ResultsError (one line: the file, the field, what was expected) unless `data` is a results file
    whose scenarios each appear once."""
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a speedrun results object ({FORMAT}), got {_kind(data)}")
    if data.get("format") != FORMAT:
        raise ResultsError(f"{path}: not a speedrun results file (format {data.get('format')!r}, expected {FORMAT!r})")
    try:
        _Results.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        got = "" if e["type"] == "missing" else f" (got {_kind(e['input'])})"
        raise ResultsError(f"{path}: {loc}: {e['msg']}{got}{more}") from None
    names = [s["name"] for s in data.get("scenarios", [])]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ResultsError(
            f"{path}: scenario(s) {', '.join(dups)} appear more than once (several runs in one file): re-run into "
            "a fresh --out, or with --force"
        )


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
        """Read and check a results file; any problem is a ResultsError naming the file."""
        path = Path(path)
        try:
            data = read_json(path)  # committed result folders hold it packed (eval/pack.py)
        except OSError as exc:
            raise ResultsError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ResultsError(f"{path}: not JSON ({exc})") from None
        check(path, data)
        return cls(path, data)

    def holds(self, command: str) -> list[str]:
        """What of `command`'s ("bench" or "eval") results this file already holds."""
        d = self.data
        out = [f"{len(d['scenarios'])} scenario(s)"] if command == "bench" and d.get("scenarios") else []
        out += [f"{k} results" for k in d.get("accuracy") or {} if command == "eval"]
        errs = [e["what"] for e in errors_of(d, command)]
        return out + ([f"errors of {', '.join(errs)}"] if errs else [])

    def clear(self, command: str) -> None:
        """Drop `command`'s results (and the launch errors, the launch being redone), keep the other's."""
        d = self.data
        for key in OWNED[command]:
            d[key] = [] if key == "scenarios" else {}
        d["errors"] = [e for e in d.get("errors", []) if e not in errors_of(d, command)]
        eval_note = lambda n: n.startswith(EVAL_NOTES)
        d["scale_notes"] = [n for n in d.get("scale_notes", []) if eval_note(n) != (command == "eval")]
        self.save()

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
