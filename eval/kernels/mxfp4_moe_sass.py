"""Offline SASS of the sm90 MXFP4 MoE GEMMs per bucket and sweep variant (no GPU): registers, spills, shared memory,
CTAs per SM, the K loop's instructions per 32 K-elements and per KiB of weight codes (decode: weight streaming), its
issue cost against its MMAs' tensor-core time (prefill: compute-bound), and its barriers and waits, so a variant can
be judged before a GPU call.

Compiles GEMM1 and GEMM2 of a bucket with the variant laid over it (mxfp4_moe_bench.variant_cfg), as the hook's plan
launches them (mxfp4_moe_compile.gemm1_spec / gemm2_spec: resolver flags, JIT-like alignment; swz128 weights unless
the variant picks the plain layout), disassembles each with the nvdisasm in Triton's wheel and takes the innermost
loop with matrix instructions as the K loop (mla_decode_sass.tile_loop).

    python -m speedrun.eval.kernels.mxfp4_moe_sass [--bucket KEY ...] [--json] [VARIANT ...]

A VARIANT is `config`, a sweep variant's name, or knobs laid over the bucket as `KNOB=VALUE[,KNOB=VALUE]` (JSON
values, e.g. `b_regs=true,BLOCK_K1=128`): a knob is judged here before it becomes a sweep row.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from speedrun.eval.kernels.mla_decode_sass import tile_loop
from speedrun.eval.kernels.mxfp4_gemm_sass import disassemble, knob_variant, opcode

DECODE_BUCKETS = tuple(f"{f}:tpe<={t}" for f in ("w4a4", "w4a16") for t in (1, 4, 16, 64))
# barriers and cp.async group bookkeeping (LDGDEPBAR arms a group, DEPBAR waits on one); wgmma waits: mma_waits
SYNC = ("BAR", "DEPBAR", "LDGDEPBAR")


@dataclass
class GemmStats:
    bucket: str
    variant: str
    gemm: int  # 1: gate + up (2 * BLOCK_N weight rows per CTA), 2: down
    block: tuple[int, int, int]  # BLOCK_M, BLOCK_N, BLOCK_K as launched (swz128: K rounded up to 128)
    warps: int
    stages: int
    regs: int
    spill: int  # stack + local bytes per thread
    shared: int  # bytes per CTA, static + dynamic
    ctas_per_sm: int
    limit: str  # what sets ctas_per_sm
    loop: int  # instructions per K-loop iteration (per thread)
    mma: int  # HGMMA / HMMA per K step
    mma_waits: int  # WARPGROUP.DEPBAR per K step: 1 = the step's wgmmas back to back, one per wgmma = serialized
    ops: dict[str, int] = field(default_factory=dict)
    mma_kind: str = ""  # the K loop's first matrix instruction: shape, and A from registers (RS) or shared (SS)

    def rows(self) -> int:
        """Weight rows a CTA streams (GEMM1 holds gate and up)."""
        return self.block[1] * (2 if self.gemm == 1 else 1)

    def per_32k(self) -> float:
        """Instructions per thread per 32 K-elements (one scale group across the CTA's weight rows)."""
        return self.loop * 32 / self.block[2]

    def warp_per_kib(self) -> float:
        """Warp-instructions per KiB of weight codes: the issue cost of streaming the weight."""
        return self.loop * self.warps / (self.rows() * self.block[2] / 2 / 1024)

    def issue_per_tensor(self) -> float:
        """Clocks to issue the loop at 4 warp-instructions per clock per SM over clocks of its MMAs at the bf16
        wgmma peak (2048 FMA per clock per SM), both per K step of one CTA: the prefill (compute-bound) cost of the
        decode; above ~0.5 the decode cannot hide behind the tensor cores at a realistic 2-3 issued per clock."""
        fma = self.block[0] * self.rows() * self.block[2]
        return self.loop * self.warps / 4 / (fma / 2048)

    def syncs(self) -> int:
        """CTA barriers and cp.async group arms / waits per K step."""
        return sum(self.ops.get(o, 0) for o in SYNC)


def variant_knobs(variant: str) -> dict[str, Any]:
    """What a VARIANT argument lays over a bucket (see the module doc); KeyError for an unknown name."""
    from speedrun.eval.kernels.mxfp4_moe_bench import SWEEP_VARIANTS

    if variant == "config":
        return {}
    return knob_variant(variant) if "=" in variant else SWEEP_VARIANTS[variant]


def gemm_stats(bucket: str, variant: str = "config") -> tuple[GemmStats, GemmStats]:
    """Compile GEMM1 and GEMM2 of one sm90 bucket with a sweep variant ("config": as shipped) and read them."""
    from speedrun.eval.kernels.aot import compile_spec
    from speedrun.eval.kernels.mxfp4_moe_bench import variant_cfg
    from speedrun.eval.kernels.mxfp4_moe_compile import gemm1_spec, gemm2_spec, launch
    from speedrun.eval.readiness.resources import sm90_usage
    from speedrun.overlays.mxfp4_moe import api
    from speedrun.overlays.mxfp4_moe.config import Layout

    base = api.table("sm90")[bucket]
    cfg, layout = variant_cfg(base, variant_knobs(variant))
    swz, group = layout != "plain", Layout(layout).row_group
    run = launch(cfg, "sm90", swz)
    out = []
    for gemm, spec_fn in ((1, gemm1_spec), (2, gemm2_spec)):
        print(f"compiling GEMM{gemm} [{bucket}] {variant}", file=sys.stderr, flush=True)  # ~5-20 s each on 2 cores
        res = compile_spec(spec_fn(bucket, cfg, "sm90", swz, group), "sm90")
        if not res.ok:
            raise RuntimeError(f"{bucket} {variant} GEMM{gemm}: {res.error}")
        instrs, labels, _ = disassemble(res.binary)
        body = tile_loop(instrs, labels)
        opts = run.opts1 if gemm == 1 else run.opts2
        bn, bk = (cfg.BLOCK_N1, run.block_k1) if gemm == 1 else (cfg.BLOCK_N2, run.block_k2)
        warps, ops = opts["num_warps"], collections.Counter(map(opcode, body))
        use = sm90_usage(res.binary, res.shared or 0, warps)
        out.append(GemmStats(bucket, variant, gemm, (cfg.BLOCK_M, bn, bk), warps, opts["num_stages"], use.vgpr or 0,
                             use.scratch, use.shared, use.occupancy, use.limit, len(body), ops["HGMMA"] + ops["HMMA"],
                             sum("WARPGROUP.DEPBAR" in i for i in body), dict(ops.most_common()),
                             mma_kind(body)))  # fmt: skip
    return out[0], out[1]


def mma_kind(body: list[str]) -> str:
    """`64x128x16 RS` (wgmma, A from registers), `64x64x16 SS` (A from shared memory) or `HMMA.16816` (mma.sync)."""
    for ins in body:
        if m := re.search(r"HGMMA\.(\d+x\d+x\d+)\S*\s+\S+,\s*(\S+)", ins):
            return f"{m.group(1)} {'SS' if m.group(2).startswith('gdesc') else 'RS'}"
        if m := re.search(r"HMMA\.(\d+)", ins):
            return f"HMMA.{m.group(1)}"
    return ""


def row(s: GemmStats) -> str:
    top = ", ".join(f"{k} {v}" for k, v in list(s.ops.items())[:5])
    m, n, k = s.block
    return (f"| {s.bucket} | {s.variant} | {s.gemm} | {m}x{n}x{k}, {s.warps}w, {s.stages}st | {s.regs} | {s.spill} | "
            f"{s.shared / 1024:.1f} | {s.ctas_per_sm} ({s.limit}) | {s.loop} | {s.per_32k():.0f} | "
            f"{s.warp_per_kib():.0f} | {s.issue_per_tensor():.2f} | {s.mma_kind} | {s.mma} / {s.mma_waits} | "
            f"{s.syncs()} ({s.ops.get('BAR', 0)} BAR) | {top} |")  # fmt: skip


HEADER = ("| bucket | variant | GEMM | tile MxNxK, warps, stages | regs | spill B | smem KiB | CTAs/SM (limit) | "
          "loop instr / K step | instr / 32 K | warp-instr / KiB W | issue : tensor | MMA | mma / waits | "
          "BAR + cp.async waits / K step | top opcodes |\n" + "|---" * 16 + "|")  # fmt: skip


def table(buckets: tuple[str, ...], variants: tuple[str, ...]) -> str:
    lines = [HEADER]
    for b in buckets:
        for v in variants:
            lines += [row(s) for s in gemm_stats(b, v)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    knobs = "KNOB=VALUE[,KNOB=VALUE] (e.g. b_regs=true)"
    ap.add_argument("variants", nargs="*", default=["config"], help=f"config, sweep variants or {knobs}")
    ap.add_argument("--bucket", action="append", help=f"sm90 bucket key (default: {', '.join(DECODE_BUCKETS)})")
    ap.add_argument("--json", action="store_true", help="one GemmStats dict per kernel instead of the table")
    args = ap.parse_args(argv)
    from speedrun.eval.kernels.mxfp4_moe_bench import SWEEP_VARIANTS, variant_cfg
    from speedrun.overlays.mxfp4_moe import api

    buckets = tuple(args.bucket or DECODE_BUCKETS)
    if bad := [b for b in buckets if b not in api.table("sm90")]:
        ap.error(f"--bucket: {bad} not in the sm90 table; expected one of {', '.join(api.table('sm90'))}")
    if bad := [v for v in args.variants if v != "config" and "=" not in v and v not in SWEEP_VARIANTS]:
        ap.error(f"unknown variant(s) {bad}; expected config, KNOB=VALUE,... or one of {', '.join(SWEEP_VARIANTS)}")
    for v in (v for v in args.variants if "=" in v):
        try:  # a misspelt knob or a bad value: one line before any compile
            variant_cfg(api.table("sm90")[buckets[0]], knob_variant(v))
        except ValueError as exc:
            ap.error(f"variant {v!r}: {exc}")
    if args.json:
        print(json.dumps([asdict(s) for b in buckets for v in args.variants for s in gemm_stats(b, v)]))
    else:
        print(table(buckets, tuple(args.variants)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
