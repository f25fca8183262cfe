"""`speedrun kernels tune`'s work: run an op's sweep on this GPU (its bench with `--sweep`), pick the fastest variant
per config bucket (the pure selection in overlays/readiness/tune.py) and write it into the arch's table with
where it came from. sm90 only: gfx950 tables are reasoned (no MI355X here), and tuning needs the GPU it tunes for.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speedrun.overlays.readiness import tune
from speedrun.overlays.readiness.tune import TuneError


class NotTunableHere(ValueError):
    """This machine cannot tune (no GPU, or not the arch whose tables are tuned)."""


@dataclass
class Tuning:
    """One op's selection: the table it reads (and may write), the sweep it read, the choice per bucket."""

    op: str
    path: Path  # configs/<arch>.json of the op
    table: dict[str, Any]
    sweep: Path
    rows: list[dict[str, Any]]
    choices: list[tune.Choice]
    min_gain: float

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.choices)


def arch_here(stored: bool) -> str:
    """The arch whose table is tuned: this GPU's, which must be sm90; re-selecting from a `stored` sweep (measured
    on the H100) needs no GPU. Raises NotTunableHere."""
    from speedrun.overlays import arch as arches  # the module, not its names: tests stand in for the GPU

    try:
        arch = arches.current_arch()
    except ImportError:
        arch = "cpu"
    if arch == "cpu" and stored:
        return "sm90"
    if arch == "cpu":
        raise NotTunableHere(
            "no GPU visible: `kernels tune` sweeps on the GPU it tunes for (or pass --from DIR of a stored sweep)"
        )
    if arch != "sm90":
        raise NotTunableHere(
            f"arch {arch}: only sm90 tables are tuned here; gfx950 tables are reasoned from the arch, marked untuned"
        )
    return arch


def sweep_file(op: str, out: Path, stored_in: Path | None, warn: Callable[[str], None]) -> Path:
    """`stored_in`/<op>_sweep.json, or a fresh sweep's (run now, written under `out`). A sweep that exits non-zero
    but wrote rows is used (the selection drops error rows) after `warn`; no fresh file raises TuneError."""
    from speedrun.eval.kernels import BENCH

    sweep = (stored_in or out) / f"{op}_sweep.json"
    if stored_in is not None:
        if not sweep.exists():
            raise TuneError(f"{op}: no {sweep}")
        return sweep
    started = time.time()
    rc = subprocess.run([sys.executable, "-m", BENCH[op], "--out", str(out), "--sweep"]).returncode
    if not sweep.exists() or sweep.stat().st_mtime < started:  # a stale file from an earlier run is no result
        raise TuneError(f"{op}: the sweep wrote no {sweep} (exit code {rc})")
    if rc:
        warn(f"{op}: sweep exited with code {rc}; using the rows it wrote")
    return sweep


def select(op: str, sweep: Path, arch: str, min_gain: float) -> Tuning:
    """The op's table for `arch` against the sweep's rows. Raises TuneError."""
    from speedrun.overlays import arch as arches

    path = arches.HERE / op / "configs" / f"{arch}.json"
    table = json.loads(path.read_text())
    rows = tune.load_rows(sweep)
    return Tuning(op, path, table, sweep, rows, tune.select(rows, table, str(sweep), min_gain), min_gain)


def write(t: Tuning, command: str) -> None:
    """The table with the winners merged in, `_meta.tuned` saying which GPU, when, by which command."""
    prov = {
        "gpu": ", ".join(sorted({str(r.get("gpu", "?")) for r in t.rows})),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "sweep": str(t.sweep),
        "min_gain": t.min_gain,
    }
    tune.write_table(t.path, tune.apply(t.table, t.choices, prov))
