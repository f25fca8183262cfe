"""Offline SASS of the sm90 MLA decode partial kernel per sweep variant (no GPU): registers, spills, shared memory,
CTAs per SM, and the tile loop's instructions per 32 tokens, so a variant can be judged before a GPU call.

Compiles the heads<=16 bucket with the variant applied, as the launcher builds it (mla_decode_compile.partial_spec:
the plan's constexprs and launch options, JIT-like alignment hints), disassembles it with the nvdisasm in Triton's
wheel (mxfp4_gemm_sass.disassemble) and takes the innermost loop with matrix instructions as the tile loop.

    python -m speedrun.eval.kernels.mla_decode_sass [--kv fp8|bf16] [--json] [VARIANT ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from dataclasses import asdict, dataclass, field

from speedrun.eval.kernels.mxfp4_gemm_sass import disassemble, opcode

VARIANTS = ("default", "fp8_n64_w8", "fp8_r168_st3", "a8w8_n128_pv_f16", "t16_n64_w8")  # default: as shipped
MMA = ("HMMA", "HGMMA", "QGMMA")  # QGMMA: fp8 wgmma
TOKENS = 32  # per 32-token tile: the unit round 3/4 measured (~3 µs per tile per CTA)


@dataclass
class TileStats:
    variant: str
    block_n: int
    warps: int
    stages: int
    maxnreg: int | None
    regs: int
    spill: int  # stack + local bytes per thread
    shared: int  # bytes per CTA, static (with the driver's 1 KiB) + dynamic
    ctas_per_sm: int
    limit: str  # what sets ctas_per_sm
    loop: int  # instructions per tile loop iteration (per thread)
    ops: dict[str, int] = field(default_factory=dict)

    def per_tile(self) -> float:
        """Instructions per thread per 32 tokens."""
        return self.loop * TOKENS / self.block_n

    def warp_per_tile(self) -> float:
        """Warp-instructions a CTA issues per 32 tokens (what its 4 schedulers share with the SM's other CTAs)."""
        return self.per_tile() * self.warps

    def count(self, *ops: str) -> float:
        """Per-thread count of these opcodes per 32 tokens."""
        return sum(self.ops.get(o, 0) for o in ops) * TOKENS / self.block_n


def tile_loop(instrs: list[str], labels: dict[str, int]) -> list[str]:
    """The innermost backward branch whose body has matrix instructions (the segment's tile loop; the loop
    around it walks the segments)."""
    loops = [(labels[m.group(1)], i) for i, s in enumerate(instrs)
             if (m := re.search(r"BRA\s+`?\(?\.?(L_x_\d+)", s)) and labels.get(m.group(1), i + 1) <= i]  # fmt: skip
    with_mma = [(a, b) for a, b in loops if any(opcode(s) in MMA for s in instrs[a : b + 1])]
    if not with_mma:
        raise ValueError("no loop with matrix instructions in the partial kernel")
    a, b = min(with_mma, key=lambda lo: lo[1] - lo[0])
    return instrs[a : b + 1]


def variant_stats(variant: str, kv: str = "fp8") -> TileStats:
    """Compile one sweep variant's partial kernel for sm90 and read its resources and tile loop."""
    from speedrun.eval.kernels import mla_decode_bench as bench
    from speedrun.eval.kernels.aot import compile_spec
    from speedrun.eval.kernels.mla_decode_compile import KV_TORCH, partial_spec
    from speedrun.eval.readiness.resources import sm90_usage
    from speedrun.overlays.mla_decode import api
    from speedrun.overlays.mla_decode.config import Compute

    cfg = bench.variant_config(variant)
    compute = cfg.fp8_compute if kv == "fp8" else Compute.A16  # a8w8 variants set it themselves
    res = compile_spec(partial_spec(bench.BUCKET, bench.HEADS, cfg, kv, "sm90", compute), "sm90")
    if not res.ok:
        raise RuntimeError(f"{variant}: {res.error}")
    run = api.kv_config(cfg, KV_TORCH[kv]) if kv == "fp8" else cfg
    run = run.a8w8 if run.fp8_compute == Compute.A8W8 and kv == "fp8" else run  # its BLOCK_N / warps / stages
    instrs, labels, _ = disassemble(res.binary)
    body = tile_loop(instrs, labels)
    use = sm90_usage(res.binary, res.shared or 0, res.num_warps or run.num_warps)
    maxnreg = getattr(run, "maxnreg", None)  # the a8w8 knobs have none
    return TileStats(variant, run.BLOCK_N, run.num_warps, run.num_stages, maxnreg, use.vgpr or 0, use.scratch,
                     use.shared, use.occupancy, use.limit, len(body),
                     dict(collections.Counter(map(opcode, body)).most_common()))  # fmt: skip


def table(variants: tuple[str, ...] = VARIANTS, kv: str = "fp8") -> str:
    stats = [variant_stats(v, kv) for v in variants]
    base = next((s for s in stats if s.variant == "default"), stats[0])
    rows = [f"| variant ({kv}) | BLOCK_N, warps, stages, maxnreg | regs | spill B (in loop: LDL+STL) | smem KB | "
            "CTAs/SM (limit) | warps/SM | loop instr / tile | per 32 tok: instr/thread | warp-instr per CTA | "
            "vs default | HMMA | LDGSTS | BAR | LDS+LDSM | STS | F2FP | NOP |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in stats:
        rows.append(
            f"| {s.variant} | {s.block_n}, {s.warps}w, {s.stages}st, {s.maxnreg or '-'} | {s.regs} | {s.spill} "
            f"({s.ops.get('LDL', 0) + s.ops.get('STL', 0)}) | {s.shared / 1024:.1f} | {s.ctas_per_sm} ({s.limit}) | "
            f"{s.ctas_per_sm * s.warps} | {s.loop} | {s.per_tile():.0f} | {s.warp_per_tile():.0f} | "
            f"{s.warp_per_tile() / base.warp_per_tile():.2f}x | {s.count('HMMA'):.0f} | {s.count('LDGSTS'):.0f} | "
            f"{s.count('BAR'):.1f} | {s.count('LDS', 'LDSM'):.0f} | {s.count('STS'):.0f} | {s.count('F2FP'):.0f} | "
            f"{s.count('NOP'):.0f} |"
        )  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", default=list(VARIANTS), help="sweep variants (mla_decode_bench)")
    ap.add_argument("--kv", choices=("fp8", "bf16"), default="fp8")
    ap.add_argument("--json", action="store_true", help="one TileStats dict per variant instead of the table")
    args = ap.parse_args(argv)
    if args.json:
        print(json.dumps({v: asdict(variant_stats(v, args.kv)) for v in args.variants}))
    else:
        print(table(tuple(args.variants), args.kv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
