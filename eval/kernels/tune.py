"""`speedrun kernels tune`: sweep an op on this GPU, pick per config bucket the fastest variant and write it into
the arch's table.

A sweep row (written by `python -m speedrun.eval.kernels.<op>_bench --sweep`) carries `bucket` (the key of
`configs/<arch>.json` it exercises, in the overlays/buckets.py grammar: `m<=16`, `heads<=16`, `w4a4:tpe<=4`),
`variant`, `config` (its knobs: the whole bucket config or only the overrides), `us`, and its shape fields. A bucket
covers several shapes, so a variant is scored by the geometric mean of its time ratios against the current config
over the bucket's shapes (those the current config was measured on), and only variants measured on all of them
compete: a variant that skipped (or failed on) the slowest shape cannot win on the easy ones. The "current" variant
is the one whose knobs all equal the table entry's. What is written back is the winner's difference from the
current variant on the same shape, each changed knob replaced whole (an "fp8": {} that clears sub-overrides stays
cleared), so per-shape values never leak into a bucket's entry.
The selection (`select`, `apply`) is pure and needs no GPU. `kernels tune` first runs the sweep (`sweep_file`): on
this GPU, which must be sm90 (gfx950 tables are reasoned, no MI355X here, and tuning needs the GPU it tunes for),
unless it re-selects from a stored sweep; then `select_op` and `write` put the winners into the arch's table with
where they came from.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speedrun.eval.pack import read_json

# Row fields that are measurements or bookkeeping, not shape: everything else non-float is the shape.
NOT_SHAPE = {"impl", "variant", "config", "bucket", "us", "gpu", "timing", "error", "current", "route", "skipped"}
MISSING = object()
CURRENT_NAMES = ("config", "default", "current")  # preferred label when several variants are no-ops


class TuneError(ValueError):
    pass


@dataclass
class Choice:
    bucket: str
    current: str
    winner: str
    speedup: float  # current time / winner time (geometric mean over the bucket's shapes)
    shapes: int
    candidates: int  # variants measured on every shape of the bucket
    config: dict[str, Any]  # the knobs the winner changes (replaced whole when written)

    @property
    def changed(self) -> bool:
        return self.winner != self.current


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a sweep file: a list, or {"rows": [...], ...}."""
    data = read_json(path)
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise TuneError(f"{path}: no sweep rows (expected a list or an object with 'rows')")
    return rows


def shape_of(row: dict[str, Any]) -> tuple:
    """A row's shape key: its explicit `shape`, else its non-float scalar fields outside NOT_SHAPE."""
    if "shape" in row:
        return (json.dumps(row["shape"], sort_keys=True),)
    keep = [(k, v) for k, v in row.items() if k not in NOT_SHAPE and isinstance(v, (int, str, bool))]
    return tuple(sorted(keep))


def entry(table: dict[str, Any], bucket: str) -> dict[str, Any]:
    """The table's config dict for a bucket key (a top-level key of the table; `_` keys are metadata)."""
    node = table.get(bucket) if not bucket.startswith("_") else None
    if not isinstance(node, dict):
        keys = sorted(k for k in table if not k.startswith("_"))
        raise TuneError(f"bucket {bucket!r} is not a config key of the table (keys: {keys})")
    return node


def is_current(cfg: dict[str, Any], knobs: dict[str, Any]) -> bool:
    """Every knob of a row equals the entry's (a row may list all knobs or only its overrides)."""
    return all(cfg.get(k, MISSING) == v for k, v in knobs.items())


def delta(cur: dict[str, Any], win: dict[str, Any]) -> dict[str, Any]:
    """The knobs the winner sets differently from the current variant."""
    return {k: copy.deepcopy(v) for k, v in win.items() if cur.get(k, MISSING) != v}


def usable(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Our measured rows (baselines, errors and missing times dropped); a row without `bucket` is an error."""
    out = []
    for i, r in enumerate(rows):
        if r.get("impl", "speedrun") != "speedrun" or r.get("error") or not isinstance(r.get("us"), (int, float)):
            continue
        if "bucket" not in r:
            raise TuneError(f"{source}: row {i} (variant {r.get('variant')!r}) has no 'bucket' field; "
                            "re-run the sweep with a bench that records the config key of each row")  # fmt: skip
        out.append(r)
    return out


def _times(rows: list[dict[str, Any]]) -> dict[str, dict[tuple, float]]:
    """variant -> shape -> us (the best of repeated measurements)."""
    t: dict[str, dict[tuple, float]] = {}
    for r in rows:
        s, v = shape_of(r), str(r.get("variant"))
        t.setdefault(v, {})[s] = min(t.get(v, {}).get(s, math.inf), float(r["us"]))
    return t


def _current(rows: list[dict[str, Any]], cfg: dict[str, Any], bucket: str) -> tuple[str, set]:
    """The current config's variant (the no-op covering the most shapes; "config"/"default" on ties) and the
    shapes it was measured on: a shape without a current time (error, spent budget) cannot be compared."""
    noop = {str(r.get("variant")) for r in rows if r.get("current") is True or is_current(cfg, r.get("config") or {})}
    cover = {v: {shape_of(r) for r in rows if str(r.get("variant")) == v} for v in noop}
    if not cover:
        raise TuneError(f"bucket {bucket!r}: no row measures the current config "
                        "(a variant whose knobs all equal the table's entry, e.g. 'config')")  # fmt: skip
    cur = min(cover, key=lambda v: (-len(cover[v]), v not in CURRENT_NAMES, v))
    return cur, cover[cur]


def select_bucket(rows: list[dict[str, Any]], cfg: dict[str, Any], bucket: str, min_gain: float = 1.0) -> Choice:
    """The winner of one bucket: the geomean of a challenger's time ratios over the shapes where it ran a kernel of
    its own (a row timed exactly as the current config's is the bench reusing that timing: a knob that leaves the
    kernel alone there, e.g. an FP8-only knob on a bf16 cache, which would otherwise dilute the gain). Ties (and
    gains below `min_gain`) keep the current config; among equal challengers the variant name decides, so the
    choice is deterministic."""
    cur, shapes = _current(rows, cfg, bucket)
    times = _times(rows)
    scores = {}
    for v, by_shape in times.items():
        if set(by_shape) >= shapes:
            own = [s for s in shapes if by_shape[s] != times[cur][s]]
            ratios = [by_shape[s] / times[cur][s] for s in own] or [1.0]
            scores[v] = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    best = min(scores, key=lambda v: (round(scores[v], 9), v != cur, v))
    if scores[best] * min_gain > scores[cur]:
        best = cur
    return Choice(bucket, cur, best, 1.0 / scores[best], len(shapes), len(scores), _change(rows, cfg, cur, best))


def _change(rows: list[dict[str, Any]], cfg: dict[str, Any], cur: str, win: str,
            view: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """The winner's knobs that differ from the current variant's, on a shape where the current row is exactly
    the entry (else any shape both measured); `view` maps both rows' configs first (per-shape entries: `flat`)."""
    by = {(str(r.get("variant")), shape_of(r)): r.get("config") or {} for r in rows}
    both = [s for (v, s) in by if v == cur and (win, s) in by]
    exact = [s for s in both if is_current(cfg, by[cur, s])]
    s = (exact or both)[0]
    view = view or (lambda c: c)
    return delta(view(by[cur, s]), view(by[win, s]))


def select(rows: list[dict[str, Any]], table: dict[str, Any], source: str = "sweep", min_gain: float = 1.0):
    """One Choice per bucket found in the sweep rows (in the order the rows name them)."""
    good = usable(rows, source)
    if not good:
        raise TuneError(f"{source}: no usable rows (all errored, or none from our kernels)")
    by_bucket: dict[str, list] = {}
    for r in good:
        by_bucket.setdefault(str(r["bucket"]), []).append(r)
    return [select_bucket(rs, entry(table, b), b, min_gain) for b, rs in by_bucket.items()]


# Per-shape entries (`--per-shape`): ops whose tables take `<N>x<K>:<bucket>` keys (mxfp4_gemm) record the weight
# shape of each sweep row in this field; an entry's knobs are flat and win over the bucket's layout overrides
# (overlays/mxfp4_gemm/config.py GemmTable.config).
SHAPE_FIELD = "nk"
SHAPE_KEY = re.compile(r"^\d+x\d+:")  # a per-shape entry's key: created by apply when new
LAYOUT_OVERRIDES = "swz"  # the nested overrides a row's config carries for the table's non-plain weight layout


def flat(cfg: dict[str, Any], layout: str) -> dict[str, Any]:
    """A row's config as a per-shape entry sees it: top-level knobs, the layout's nested overrides applied."""
    out = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    if layout != "plain":
        out.update(cfg.get(LAYOUT_OVERRIDES) or {})
    return out


def select_shapes(rows: list[dict[str, Any]], table: dict[str, Any], kept: set[str], source: str = "sweep",
                  min_gain: float = 1.05) -> list[Choice]:  # fmt: skip
    """Per-shape winners: for each bucket whose entry stays (`kept`: per-shape knobs are written relative to it)
    and each weight shape in it, the variant that wins that weight's rows (geomean over its Ms, as select_bucket)
    by `min_gain`, on the table's own weight layout (a shape entry cannot change it). The knobs written are the
    winner's flat difference from the current row (as select_bucket's, through `flat`)."""
    layout = table.get("_layout", "plain")
    mine = [r for r in usable(rows, source) if SHAPE_FIELD in r and r.get("w_layout", layout) == layout]
    groups: dict[tuple[str, str], list] = {}
    for r in mine:
        if str(r["bucket"]) in kept:
            groups.setdefault((str(r["bucket"]), str(r[SHAPE_FIELD])), []).append(r)
    out = []
    for (bucket, nk), rs in groups.items():
        c = select_bucket(rs, entry(table, bucket), bucket, min_gain)
        if c.changed:
            change = _change(rs, entry(table, bucket), c.current, c.winner, lambda cfg: flat(cfg, layout))
            out.append(Choice(f"{nk}:{bucket}", c.current, c.winner, c.speedup, c.shapes, c.candidates, change))
    return out


def apply(table: dict[str, Any], choices: list[Choice], provenance: dict[str, Any]) -> dict[str, Any]:
    """A copy of `table` with each changed bucket's winner merged in (a per-shape key `<N>x<K>:<bucket>` is
    created when new); `_meta.tuned` records where it came from. Other buckets and every other `_meta` field are
    kept."""
    out = copy.deepcopy(table)
    for c in choices:
        if c.changed:
            base = out.get(c.bucket, {}) if SHAPE_KEY.match(c.bucket) else entry(out, c.bucket)
            out[c.bucket] = {**base, **copy.deepcopy(c.config)}
    meta = out.setdefault("_meta", {})
    prev = meta.get("tuned") if isinstance(meta.get("tuned"), dict) else {}
    buckets = dict(prev.get("buckets", {}))
    for c in choices:
        buckets[c.bucket] = {"from": c.current, "to": c.winner, "speedup": round(c.speedup, 4), "shapes": c.shapes}
    meta["tuned"] = {**provenance, "buckets": buckets}
    return out


def write_table(path: Path, table: dict[str, Any]) -> None:
    """Write in the file's own indentation (1 or 2 spaces), so a diff shows the values that changed."""
    old = path.read_text().splitlines()
    indent = len(old[1]) - len(old[1].lstrip(" ")) if len(old) > 1 else 1
    path.write_text(json.dumps(table, indent=max(indent, 1)) + "\n")


def rich_table(op: str, choices: list[Choice]) -> Any:
    from rich.table import Table

    t = Table(title=f"{op}: fastest variant per bucket (geomean over the bucket's shapes)")
    for col in ("bucket", "current", "winner", "speedup", "shapes", "candidates"):
        t.add_column(col)
    for c in choices:
        win = f"[green]{c.winner}[/]" if c.changed else c.winner
        t.add_row(c.bucket, c.current, win, f"{c.speedup:.3f}x", str(c.shapes), str(c.candidates))
    return t


# ---- running it: the sweep on this GPU, the table of one op
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
    choices: list[Choice]
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


def select_op(op: str, sweep: Path, arch: str, min_gain: float, per_shape: float | None = None) -> Tuning:
    """The op's table for `arch` against the sweep's rows; `per_shape` (a min gain): also the per-shape winners
    of the buckets that stay. Raises TuneError."""
    from speedrun.overlays import arch as arches

    path = arches.HERE / op / "configs" / f"{arch}.json"
    table = json.loads(path.read_text())
    rows = load_rows(sweep)
    choices = select(rows, table, str(sweep), min_gain)
    if per_shape is not None:
        if not any(SHAPE_FIELD in r for r in rows):
            raise TuneError(f"{op}: its sweep rows name no weight shape ('{SHAPE_FIELD}'): no per-shape entries")
        kept = {c.bucket for c in choices if not c.changed}
        choices += select_shapes(rows, table, kept, str(sweep), per_shape)
    return Tuning(op, path, table, sweep, rows, choices, min_gain)


def write(t: Tuning, command: str) -> None:
    """The table with the winners merged in, `_meta.tuned` saying which GPU, when, by which command."""
    prov = {
        "gpu": ", ".join(sorted({str(r.get("gpu", "?")) for r in t.rows})),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "sweep": str(t.sweep),
        "min_gain": t.min_gain,
    }
    write_table(t.path, apply(t.table, t.choices, prov))
