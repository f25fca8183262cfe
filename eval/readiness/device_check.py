"""`speedrun kernels compile --arch sm90 --check-device`: does the CPU-side AOT report describe the kernel the
GPU actually loads? For each kernel x config, compile the spec twice in one worker, for the AOT target (read
with cuobjdump, as the report does) and for the local GPU's own target (loaded through the driver: Triton's
n_regs, n_spills and metadata.shared), in separate fresh caches, and compare. The gfx950 report is trusted on
the same method, so an sm90 mismatch here is a reason to doubt it.

Triton's n_spills is the driver's local-memory size / 4 (bytes per thread); the report's scratch is
cuobjdump's STACK + LOCAL bytes, so both are compared in bytes. Shared memory: Triton's dynamic allocation
(metadata.shared) on both sides; the report adds the static part, which the driver does not expose.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
from typing import Any

FIELDS = ("regs", "scratch", "shared")


def compare(aot: dict[str, Any], dev: dict[str, Any]) -> list[str]:
    """Mismatches between the AOT figures and the device's (empty: they agree)."""
    out = [f"{f}: AOT {aot.get(f)} vs device {dev.get(f)}" for f in FIELDS if aot.get(f) != dev.get(f)]
    if aot.get("target") != dev.get("target"):
        out.append(f"target: AOT {aot.get('target')} vs device {dev.get('target')}")
    return out


def _compile(spec: Any, target: Any, cache: str) -> Any:
    """triton.compile of a spec for `target` in its own cache dir (always a real compile)."""
    import triton
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    from speedrun.eval.kernels.aot import ir_attrs
    from speedrun.overlays.arch import AMD_ONLY

    os.environ["TRITON_CACHE_DIR"] = cache
    attrs = ir_attrs(spec.fn, spec.attrs, make_backend(target)) if spec.attrs else None
    src = ASTSource(spec.fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    opts = {k: v for k, v in spec.options.items() if k not in AMD_ONLY}
    return triton.compile(src, target=target, options=opts)


def aot_figures(spec: Any, cache: str) -> dict[str, Any]:
    """What `speedrun kernels compile --arch sm90` reports for a spec (no GPU needed)."""
    from triton.backends.compiler import GPUTarget

    from speedrun.eval.kernels.aot import TARGETS
    from speedrun.eval.readiness.resources import sm90_usage

    k = _compile(spec, GPUTarget(*TARGETS["sm90"]), cache)
    use = sm90_usage(k.asm["cubin"], k.metadata.shared, k.metadata.num_warps)
    return {"regs": use.vgpr, "scratch": use.scratch, "shared": k.metadata.shared, "target": str(TARGETS["sm90"]),
            "shared_total": use.shared, "occupancy": use.occupancy}  # fmt: skip


def device_figures(spec: Any, cache: str) -> dict[str, Any]:
    """The same spec compiled for, and loaded on, the local GPU."""
    from triton.runtime import driver

    target = driver.active.get_current_target()
    k = _compile(spec, target, cache)
    k._init_handles()  # loads the cubin: the driver fills n_regs / n_spills
    tgt = (target.backend, target.arch, target.warp_size)
    return {"regs": k.n_regs, "scratch": 4 * k.n_spills, "shared": k.metadata.shared, "target": str(tgt)}


def _init(cache: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ["SPEEDRUN_CHECK_CACHE"] = cache


def _work(task: tuple[str, str, int]) -> dict[str, Any]:
    from speedrun.eval.readiness.report import _specs

    op, module, i = task
    root = os.path.join(os.environ["SPEEDRUN_CHECK_CACHE"], f"{op}-{i}")
    row: dict[str, Any] = {"op": op, "index": i, "kernel": f"{op}#{i}"}
    t0 = time.perf_counter()
    try:
        spec = _specs(module, "sm90")[i]
        row["kernel"] = spec.name
        row["aot"] = aot_figures(spec, root + "-aot")
        row["device"] = device_figures(spec, root + "-dev")
        row["mismatches"] = compare(row["aot"], row["device"])
    except Exception as exc:  # one broken spec must not hide the others
        row["mismatches"] = [f"error: {type(exc).__name__}: {exc}"[:500]]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def run(ops: list[str] | tuple[str, ...], workers: int = 4, limit: int | None = None) -> dict[str, Any]:
    """Check every sm90 spec of `ops` (the first `limit` per op when given); {"rows", "failed", "seconds"}."""
    from speedrun.eval.readiness.report import _count, op_module

    t0 = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="speedrun-devcheck-")
    try:
        with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(cache,)) as pool:
            counts = pool.map(_count, [(op_module(op), "sm90") for op in ops], chunksize=1)
            tasks = [(op, op_module(op), i) for op, n in zip(ops, counts, strict=True) for i in range(n)]
            tasks = [t for t in tasks if limit is None or t[2] < limit]
            rows = list(pool.imap_unordered(_work, tasks, chunksize=1))
        rows.sort(key=lambda r: (list(ops).index(r["op"]), r["index"]))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    failed = sum(bool(r["mismatches"]) for r in rows)
    return {"rows": rows, "failed": failed, "seconds": round(time.perf_counter() - t0, 1)}


def table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"sm90 AOT report vs the local GPU: {len(result['rows'])} kernels x configs, "
              f"{result['failed']} mismatching, {result['seconds']} s")  # fmt: skip
    for col in ("op", "kernel", "regs aot/dev", "scratch B aot/dev", "shared B aot/dev", "status"):
        t.add_column(col, overflow="fold")
    for r in result["rows"]:
        a, d = r.get("aot", {}), r.get("device", {})
        pair = {f: f"{a.get(f, '-')}/{d.get(f, '-')}" for f in FIELDS}
        status = "[green]same[/]" if not r["mismatches"] else "[red]" + "; ".join(r["mismatches"])[:200] + "[/]"
        t.add_row(r["op"], r["kernel"], pair["regs"], pair["scratch"], pair["shared"], status)
    return t
