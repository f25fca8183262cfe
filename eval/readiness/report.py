"""`speedrun kernels compile`: every op's CompileSpecs compiled for gfx950 / sm90 in a pool of worker processes,
with the resource figures of `resources.py` and a pass/fail verdict per kernel x config.

Workers are spawned (not forked) with TRITON_INTERPRET removed and a fresh Triton cache directory that is
deleted afterwards, so every run really compiles (CI measures the compiler, not a cache). A spec is named by
(module, arch, index) and rebuilt in the worker: @triton.jit functions do not pickle.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time
from typing import Any

from speedrun.overlays.ops import OPS

ARCHS = ("gfx950", "sm90")
_SPECS: dict[tuple[str, str], list] = {}
# 128-bit global loads: without alignment hints (CompileSpec.attrs) an AOT compile falls back to narrow ones.
WIDE_LOADS = {
    "gfx950": r"(?:global|buffer)_load_dwordx4",
    "sm90": r"ld\.global(?:\.\w+)*\.v4|cp\.async\.c[ag]\.shared\.global \[[^\]]*\], \[[^\]]*\], 0x10",
}


def op_module(op: str) -> str:
    """An op name -> "module:function" of its specs; a dotted "module[:function]" is taken as given."""
    if "." not in op:
        from speedrun.eval.kernels import COMPILE

        return f"{COMPILE[op]}:compile_specs"
    return op if ":" in op else f"{op}:compile_specs"


def _init(cache_dir: str, quiet: bool = True) -> None:
    os.environ.pop("TRITON_INTERPRET", None)  # interpreted kernels cannot be compiled
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    if quiet:  # Triton prints whole PTX listings on ptxas errors; the rows carry the error text
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)


def _specs(module: str, arch: str) -> list:
    if (module, arch) not in _SPECS:
        import importlib

        mod, fn = module.split(":")
        _SPECS[module, arch] = getattr(importlib.import_module(mod), fn)(arch)
    return _SPECS[module, arch]


def _count(task: tuple[str, str]) -> int:
    return len(_specs(*task))


def verdict(row: dict[str, Any]) -> list[str]:
    """Why a row fails (empty: it passes): no compile / missing expected MMA, spills to memory (scratch), or it
    does not fit. Register-to-register spills (gfx950: SGPRs into VGPR lanes, VGPRs into AGPRs; no scratch)
    cost a few moves, not memory traffic: they are reported (`notes`) but do not fail."""
    if not row["ok"]:
        return [row.get("error") or "compile failed"]
    bad = []
    if row.get("scratch"):
        regs = f"{row['spills']} registers, " if row.get("spills") else ""  # sm90 reports bytes only
        bad.append(f"spills to memory: {regs}{row['scratch']} B scratch per lane")
    if row.get("occupancy") == 0:
        bad.append(f"does not fit ({row.get('limit')}: {row.get('shared')} B shared)")
    elif row.get("min_occupancy") and row.get("occupancy", 0) < row["min_occupancy"]:
        bad.append(f"occupancy {row['occupancy']} < {row['min_occupancy']} required (limit: {row.get('limit')})")
    if row.get("no_spills") and row.get("spills") and not row.get("scratch"):
        bad.append(f"{row['spills']} registers spilled (this kernel must not spill at all)")
    return bad


def notes(row: dict[str, Any]) -> list[str]:
    if row.get("spills") and not row.get("scratch"):
        return [f"{row['spills']} registers spilled into other registers (no scratch)"]
    return []


def measure(spec: Any, arch: str) -> dict[str, Any]:
    """Compile one spec and read its resources into a report row (no verdict yet)."""
    from speedrun.eval.kernels.aot import compile_spec
    from speedrun.eval.readiness.resources import gfx950_usage, sm90_usage

    t0 = time.perf_counter()
    res = compile_spec(spec, arch)
    row = {"kernel": res.name, "arch": arch, "ok": res.ok, "error": res.error, "mma": res.mma,
           "expect_mma": spec.expect_mma, "num_warps": res.num_warps, "attrs": bool(spec.attrs),
           **({"min_occupancy": spec.min_occupancy} if spec.min_occupancy else {}),
           **({"no_spills": True} if spec.no_spills else {}),
           "wide_loads": len(re.findall(WIDE_LOADS[arch], res.asm))}  # fmt: skip
    if res.binary is not None:
        try:
            use = gfx950_usage(res.asm, res.shared or 0, res.num_warps) if arch == "gfx950" else None
            use = use or sm90_usage(res.binary, res.shared or 0, res.num_warps)
            row.update(use.dict())
        except Exception as exc:  # an unreadable resource report is a failure, not a crash of the whole run
            row.update(ok=False, error=f"resource usage unreadable: {type(exc).__name__}: {exc}"[:500])
    if res.ok:
        from speedrun.eval.readiness.fingerprint import fingerprint

        try:
            row["fingerprint"], row["instructions"] = fingerprint(arch, res.asm, res.binary)
        except Exception as exc:  # a fingerprint is evidence, not a gate: its absence is a note
            row["fingerprint_error"] = f"{type(exc).__name__}: {exc}"[:200]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _work(task: tuple[str, str, str, int]) -> dict[str, Any]:
    op, module, arch, i = task
    try:
        row = measure(_specs(module, arch)[i], arch)
    except Exception as exc:  # a crash in one spec must not hide the others
        row = {"kernel": f"{op}#{i}", "arch": arch, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"op": op, "index": i, **row}


def run(ops: list[str] | tuple[str, ...] = OPS, archs: tuple[str, ...] = ARCHS, workers: int = 2) -> dict:
    """Compile every spec of `ops` for `archs`; {"rows": [...], "failed": n, "seconds": wall, "workers": n}."""
    t0 = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="speedrun-aot-")
    try:
        with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(cache,)) as pool:
            pairs = [(op, a) for op in ops for a in archs]
            counts = pool.map(_count, [(op_module(op), a) for op, a in pairs], chunksize=1)
            tasks = [(op, op_module(op), a, i) for (op, a), n in zip(pairs, counts, strict=True) for i in range(n)]
            tasks.sort(key=lambda t: "gemm" not in t[1])  # the slowest compiles first: better packing
            rows = list(pool.imap_unordered(_work, tasks, chunksize=1))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    order = {(op, a): k for k, (op, a) in enumerate((op, a) for op in ops for a in archs)}
    rows.sort(key=lambda r: (order[r["op"], r["arch"]], r["index"]))
    for r in rows:
        r["problems"] = verdict(r)
        r["notes"] = notes(r)
        r["pass"] = not r["problems"]
    failed = sum(not r["pass"] for r in rows)
    return {"rows": rows, "failed": failed, "seconds": round(time.perf_counter() - t0, 1), "workers": workers}


def table(result: dict) -> Any:
    """The rich table of a `run` result."""
    from rich.table import Table

    t = Table(title=f"AOT compile: {len(result['rows'])} kernels x configs, {result['failed']} failing, "
              f"{result['seconds']} s on {result['workers']} workers")  # fmt: skip
    for col in ("op", "kernel", "arch", "status", "matrix instr", "regs (v+a/s)", "shared KiB", "scratch",
                "occupancy", "s"):  # fmt: skip
        t.add_column(col, overflow="fold")
    for r in result["rows"]:
        regs = "" if r.get("vgpr") is None else str(r["vgpr"])
        if r.get("agpr"):
            regs += f"+{r['agpr']}a"
        if r.get("sgpr") is not None:
            regs += f"/{r['sgpr']}s"
        unit = "waves/SIMD" if r["arch"] == "gfx950" else "CTAs/SM"
        occ = f"{r['occupancy']} {unit} ({r['limit']})" if "occupancy" in r else ""
        status = "[green]ok[/]" if r["pass"] else "[red]FAIL[/] " + "; ".join(r["problems"])[:160]
        if r["pass"] and r["notes"]:
            status = "[yellow]ok[/] " + r["notes"][0]
        kib = f"{r['shared'] / 1024:.1f}" if "shared" in r else ""
        t.add_row(r["op"], r["kernel"], r["arch"], status, ",".join(r.get("mma", []))[:60], regs, kib,
                  str(r.get("scratch", "")), occ, str(r.get("seconds", "")))  # fmt: skip
    return t
