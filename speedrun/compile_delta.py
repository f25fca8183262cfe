"""What changed between two `speedrun kernels compile --json` reports of the same kernels, e.g. under Triton
3.6 and 3.7: per kernel x config, the registers, spills, scratch, shared memory, occupancy, matrix
instructions and instruction count. A report, not a gate: the compile command itself exits 1 on a compile
error, a spill to memory or a missing MMA; `--against` says only whether the machine code is the same.

    python -m speedrun.compile_delta OLD.json NEW.json [--title TEXT] [--accept KNOWN.json] > DELTA.md

Exit 1 when NEW has kernels that fail the gate (compile error, spill to memory, missing MMA), except those
failing the same way in KNOWN (a committed report, whose README says why they are accepted for now).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from speedrun.eval.pack import read_json
from speedrun.eval.readiness.fingerprint import compare

FIELDS = ("mma", "vgpr_total", "sgpr", "spills", "scratch", "shared", "occupancy", "instructions")


def delta(old_rows: list[dict], new_rows: list[dict]) -> dict[str, Any]:
    """Kernels matched by arch:kernel; for each one whose figures differ, {field: (old, new)}."""
    key = "{arch}:{kernel}".format_map
    old = {key(r): r for r in old_rows}
    changed = {}
    for r in new_rows:
        before = old.get(key(r))
        diff = {f: (before.get(f), r.get(f)) for f in FIELDS if before and before.get(f) != r.get(f)}
        if diff:
            changed[key(r)] = diff
    return {
        "code": compare(old_rows, new_rows),
        "figures": changed,
        "failed": [key(r) for r in new_rows if not r["pass"]],
    }


def markdown(d: dict[str, Any], title: str) -> str:
    code = d["code"]
    lines = [
        f"# {title}",
        "",
        f"Machine code: {len(code['same'])} same, {len(code['changed'])} changed, {len(code['new'])} new, "
        f"{len(code['gone'])} gone. Failing the compile gate now: {len(d['failed'])}"
        + (f" ({', '.join(d['failed'])})" if d["failed"] else "")
        + f". Figures changed for {len(d['figures'])} kernel x config(s):",
        "",
        "| arch:kernel | " + " | ".join(FIELDS) + " |",
        "|---" * (len(FIELDS) + 1) + "|",
    ]
    for name, diff in sorted(d["figures"].items()):
        cells = [_cell(diff.get(f)) for f in FIELDS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(pair: tuple | None) -> str:
    if pair is None:
        return ""
    a, b = pair
    if isinstance(a, int) and isinstance(b, int):
        return f"{a} → {b} ({b - a:+d})"
    return f"{a} → {b}"


def failing(rows: list[dict]) -> dict[str, list[str]]:
    """arch:kernel -> its problems, for the rows that fail the compile gate."""
    return {
        "{arch}:{kernel}".format_map(r): r.get("problems") or [r.get("error") or "?"] for r in rows if not r["pass"]
    }


def _rows(path: Path) -> list[dict]:
    try:
        return read_json(path)["rows"]
    except (OSError, ValueError, KeyError) as exc:
        raise typer.BadParameter(f"{path}: not a `speedrun kernels compile --json` report ({exc})") from None


def main(
    old: Annotated[Path, typer.Argument(help="the earlier --json report")],
    new: Annotated[Path, typer.Argument(help="the later --json report")],
    title: Annotated[str, typer.Option(help="heading of the markdown")] = "Compile report delta",
    accept: Annotated[Path | None, typer.Option(help="a report whose gate failures are known (not failed on)")] = None,
) -> None:
    """Print the markdown delta of NEW against OLD; exit 1 where NEW has kernels failing the gate (beyond
    those that fail alike in --accept)."""
    d = delta(_rows(old), _rows(new))
    print(markdown(d, title), end="")
    known = failing(_rows(accept)) if accept else {}
    new_failures = {k: v for k, v in failing(_rows(new)).items() if not _alike(known.get(k), v)}
    for k, v in new_failures.items():
        print(f"FAILS THE GATE: {k}: {'; '.join(v)}")
    if new_failures:
        raise typer.Exit(1)


def _alike(known: list[str] | None, now: list[str]) -> bool:
    """The same kind of failure (a spill of another size is still the known spill; a compile error is not)."""

    def kind(problems: list[str]) -> list[str]:
        return sorted(p.split(":")[0] for p in problems)

    return known is not None and kind(known) == kind(now)


if __name__ == "__main__":
    typer.run(main)
