"""Offline SASS of the sm90 decode GEMM (no GPU): per bucket, the K loop's instructions by opcode, wgmma waits in the
loop, registers, shared memory, CTAs per SM, and how many instructions run before the first weight load.

Compiles the bucket's swz128 config as the hook serves it (gemm_spec, JIT-like alignment), disassembles the cubin
with the nvdisasm in Triton's wheel and takes the longest backward branch as the K loop.

    python -m speedrun.eval.kernels.mxfp4_gemm_sass [--route fused|prequant] [--knobs K=V,...] [--json] [BUCKET ...]

BUCKET: m<=16 or 16. --knobs lays knobs over each bucket (JSON values, e.g. `b_regs=true,num_stages=4`): a knob
is judged here before it becomes a sweep row.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speedrun.overlays.mxfp4_gemm.config import AMode, GemmBucket, GemmKnobs, Layout

DECODE_BUCKETS = ("m<=16", "m<=32", "m<=64")


@dataclass
class LoopStats:
    loop: int  # instructions per K iteration (per thread)
    ops: dict[str, int] = field(default_factory=dict)  # opcode -> count in the loop
    mma: int = 0  # HGMMA / HMMA in the loop
    mma_waits: int = 0  # WARPGROUP.DEPBAR in the loop: 1 = wgmmas back to back, one per wgmma = serialized
    first_load: int = 0  # instructions before the first global load (LDGSTS / LDG)
    regs: int = 0
    local: int = 0  # spill bytes per thread
    shared: int = 0
    ctas_per_sm: int = 0
    warps: int = 4
    block: tuple[int, int, int] = (0, 0, 0)

    def per_kib(self) -> float:
        """Warp-instructions per KiB of weight codes: the issue cost of streaming the weight."""
        return self.loop * self.warps / (self.block[1] * self.block[2] / 2 / 1024)


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def disassemble(cubin: bytes) -> tuple[list[str], dict[str, int], str]:
    """(instructions in order, branch label -> index of the instruction it marks, cuobjdump resource usage)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    labels, instrs = {}, []
    for line in text.splitlines():
        if m := re.match(r"\s*\.(L_x_\d+):", line):
            labels[m.group(1)] = len(instrs)
        elif m := re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line):
            instrs.append(m.group(1))
    return instrs, labels, res


def opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P[T0-9]+\s+", "", ins.strip()).split(" ")[0].split(".")[0]


def loop_stats(cfg: GemmBucket, a_mode: AMode = AMode.QUANT, layout: Layout = Layout.SWZ128_MUL1) -> LoopStats:
    """Compile one decode config (swz128 weights or `layout`, split epilogue) for sm90 and read its K loop."""
    from speedrun.eval.kernels.aot import compile_spec
    from speedrun.eval.kernels.mxfp4_gemm_compile import gemm_spec
    from speedrun.eval.readiness.resources import sm90_occupancy

    res = compile_spec(gemm_spec("sass", cfg, a_mode, "sm90", 2, layout=layout), "sm90")
    if not res.ok:
        raise RuntimeError(res.error)
    instrs, labels, usage = disassemble(res.binary)
    loops = [(labels[m.group(1)], i) for i, s in enumerate(instrs)
             if (m := re.search(r"BRA\s+`?\(?\.?(L_x_\d+)", s)) and labels.get(m.group(1), i + 1) <= i]  # fmt: skip
    start, end = max(loops, key=lambda lo: lo[1] - lo[0])
    body = instrs[start : end + 1]
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    warps = cfg.num_warps
    return LoopStats(
        loop=len(body), ops=dict(collections.Counter(map(opcode, body)).most_common()),
        mma=sum(opcode(s) in ("HGMMA", "HMMA") for s in body), mma_waits=sum("WARPGROUP.DEPBAR" in s for s in body),
        first_load=next(i for i, s in enumerate(instrs) if opcode(s) in ("LDGSTS", "LDG")), regs=regs,
        local=int(re.search(r"LOCAL:(\d+)", usage).group(1)) + int(re.search(r"STACK:(\d+)", usage).group(1)),
        shared=res.shared or 0, ctas_per_sm=sm90_occupancy(regs, (res.shared or 0) + 1024, warps)[0], warps=warps,
        block=(cfg.BLOCK_M, cfg.BLOCK_N, max(cfg.BLOCK_K, 128)),
    )  # fmt: skip


def knob_variant(variant: str) -> dict[str, Any]:
    """`KNOB=VALUE[,KNOB=VALUE]` as a knob dict (values JSON, else strings: `layout=plain`)."""
    out: dict[str, Any] = {}
    for item in variant.split(","):
        knob, _, raw = item.partition("=")
        try:
            out[knob.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[knob.strip()] = raw.strip()
    return out


def bucket_key(bucket: str) -> str:
    """`16` -> `m<=16` (the CLI takes either)."""
    return f"m<={bucket}" if bucket.isdigit() else bucket


def served_config(bucket: str, knobs: Mapping[str, Any] | None = None) -> GemmBucket:
    """The sm90 table's config for a bucket with its swz128 overrides (what the hook's weights run), `knobs` laid
    over it (ValueError naming a bad one)."""
    from speedrun.overlays.mxfp4_gemm import api

    base = api.table("sm90").buckets[bucket_key(bucket)]
    cfg = base.with_overrides(base.swz)
    return cfg.with_overrides(GemmKnobs.checked(knobs, "--knobs")) if knobs else cfg


def table(buckets: tuple[str, ...] = DECODE_BUCKETS, a_mode: AMode = AMode.QUANT,
          knobs: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    rows = ["| bucket | tile MxNxK, warps, stages | loop instr | warp-instr / KiB W | mma / waits | regs | spill B | "
            "smem KiB | CTAs/SM | instr before 1st load | top opcodes |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for b in buckets:
        cfg = served_config(b, knobs)
        s = loop_stats(cfg, a_mode)
        top = ", ".join(f"{k} {v}" for k, v in list(s.ops.items())[:6])
        rows.append(f"| {b} | {'x'.join(map(str, s.block))}, {s.warps}w, {cfg.num_stages}st | {s.loop} | "
                    f"{s.per_kib():.0f} | {s.mma} / {s.mma_waits} | {s.regs} | {s.local} | {s.shared // 1024} | "
                    f"{s.ctas_per_sm} | {s.first_load} | {top} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("buckets", nargs="*", default=list(DECODE_BUCKETS))
    ap.add_argument("--route", choices=("fused", "prequant"), default="fused", help="A_MODE 1 (fused) or 0")
    ap.add_argument("--knobs", default="", help="KNOB=VALUE[,KNOB=VALUE] over each bucket (e.g. b_regs=true)")
    ap.add_argument("--json", action="store_true", help="one LoopStats dict per bucket instead of the table")
    args = ap.parse_args(argv)
    mode = AMode.QUANT if args.route == "fused" else AMode.BF16
    knobs = knob_variant(args.knobs) if args.knobs else None
    try:  # a misspelt knob or a bad value: one line before any compile
        served_config(args.buckets[0], knobs)
    except (KeyError, ValueError) as exc:
        ap.error(str(exc))
    if args.json:
        print(json.dumps({b: asdict(loop_stats(served_config(b, knobs), mode)) for b in args.buckets}))
    else:
        print(table(tuple(args.buckets), mode, knobs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
