"""How every op bench loses nothing: a failing impl is an error cell of its row, not the end of the run, and the
results file is rewritten as each row completes, so a crash, a kill or a `timeout` leaves every row done so far.

- `attempt(row, fn)`: fills a row from `fn()`, or records why it failed (`error`, one line). It catches any
  Exception and SystemExit: stock paths raise anything, and a library may `sys.exit()` (a JIT that gives up).
- `recording(path, meta, plot, summary)`: the results file of one run. `add(*rows)` rewrites it (atomically: a
  kill mid-write leaves the previous version, never half a file). Inside the block SIGTERM raises `Interrupted`,
  which no `attempt` catches; on any exit the file is written one last time (meta `complete`, or `interrupted`
  and why), then the plot (beside it, .png) and the summary table of the rows there are. An interrupted run then
  exits 128 + signal, one line, no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FAILURES = (Exception, SystemExit)  # what a measured impl may raise without ending the run
MAX_REASON = 300
Emit = Callable[[dict[str, Any]], None]  # where a bench hands each row as it completes (Results.add)


def ignore(row: dict[str, Any]) -> None:
    """The default Emit: a bench called without a results file (tests, other scripts) keeps only its return."""


class Interrupted(BaseException):
    """A signal (SIGTERM from `timeout`) turned into an exception, so that the results are closed on the way out.
    A BaseException but not a SystemExit: no `attempt` records it as one impl's failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def reason(exc: BaseException) -> str:
    """One line: the exception's type and message (whitespace collapsed), at most MAX_REASON characters."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:MAX_REASON] if text else type(exc).__name__


def attempt(row: dict[str, Any], fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """`row` updated with what `fn()` returns, or, when it raises, with `us` None and `error` (its reason)."""
    try:
        row.update(fn() or {})
    except FAILURES as exc:
        row.update(us=None, error=reason(exc))
    return row


class Results:
    """The rows of one run and their file, `{"meta": ..., "rows": [...]}`, rewritten on every `add`."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta, self.rows = path, meta, []
        self.state: dict[str, Any] = {"complete": False}

    def add(self, *rows: dict[str, Any]) -> None:
        self.rows.extend(rows)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"meta": {**self.meta, **self.state}, "rows": self.rows}, indent=1))
        os.replace(tmp, self.path)


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


Rows = list[dict[str, Any]]


@contextlib.contextmanager
def recording(path: Path, meta: dict[str, Any], plot: Callable[[Rows, Path], None] | None = None,
              summary: Callable[[Rows], str] | None = None) -> Iterator[Results]:  # fmt: skip
    """The run's Results, written to `path` now (no rows yet), on every add and on the way out, however it ends;
    then `plot(rows, path.png)` and `summary(rows)` printed, when there are rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results, stopped = Results(path, meta), None
    results.write()
    main = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if main else None
    try:
        yield results
        results.state = {"complete": True}
    except Interrupted as exc:
        results.state, stopped = {"complete": False, "interrupted": str(exc)}, exc
    except BaseException as exc:  # a bug or Ctrl-C: the rows so far are still written, then it propagates
        results.state = {"complete": False, "interrupted": reason(exc)}
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        results.write()
        if results.rows:
            finish(results.rows, path, plot, summary)
    if stopped is not None:
        print(f"interrupted by {stopped}: the {len(results.rows)} rows done are in {path}", flush=True)
        raise SystemExit(128 + stopped.signum)


def finish(rows: Rows, path: Path, plot: Callable[[Rows, Path], None] | None,
            summary: Callable[[Rows], str] | None) -> None:  # fmt: skip
    """Plot and summary of the rows written to `path`: a failure of either is one line, never a lost table."""
    for what, fn in (("plot", plot and (lambda: plot(rows, path.with_suffix(".png")))),
                     ("summary", summary and (lambda: print(summary(rows))))):  # fmt: skip
        try:
            if fn:
                fn()
        except Exception as exc:
            print(f"{path.name}: {what} failed ({reason(exc)}); the rows are in {path}")
