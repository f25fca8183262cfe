"""Registers, shared memory, scratch and the occupancy they imply, read from a compiled kernel.

gfx950 (CDNA4): the amdgcn text carries the HSA metadata (.vgpr_count = arch VGPRs + AGPRs since gfx90a's
unified register file, .agpr_count, .sgpr_count, .group_segment_fixed_size, .private_segment_fixed_size,
spill counts) and LLVM's own "; Occupancy:" comment. Triton allocates LDS dynamically, so metadata.shared is
added to the static group segment.
sm90: `cuobjdump --dump-resource-usage` (shipped in Triton's wheel) on the cubin: REG, STACK, LOCAL, SHARED
(static; on sm90 it includes the 1 KiB the driver reserves per CTA), plus Triton's dynamic metadata.shared.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# CDNA3/CDNA4 per SIMD: 512 unified VGPRs per lane (arch + accumulation), allocated in granules of 8, at most
# 8 waves; 4 SIMDs per CU; gfx950 has 160 KiB LDS per CU (also the per-workgroup maximum). SGPRs never bind:
# a wave may hold at most 102 of the SIMD's 800, which still leaves room for 8 waves.
GFX950 = {"vgprs": 512, "vgpr_granule": 8, "max_waves": 8, "simds": 4, "lds": 160 * 1024}
# H100 (sm90) per SM: 64K 32-bit registers in 4 sub-partitions, allocated per warp in units of 256;
# 64 warps, 32 CTAs; 228 KiB shared memory (227 KiB usable by one CTA), allocated in units of 128 bytes.
SM90 = {"regs": 65536, "reg_unit": 256, "partitions": 4, "max_warps": 64, "max_ctas": 32,
        "smem": 228 * 1024, "smem_cta": 227 * 1024, "smem_unit": 128}  # fmt: skip


@dataclass
class Usage:
    vgpr: int | None = None  # gfx950 arch VGPRs; sm90: registers per thread
    agpr: int | None = None
    vgpr_total: int | None = None  # what occupancy is computed from (gfx950: arch + AGPR, sm90: = vgpr)
    sgpr: int | None = None
    shared: int = 0  # LDS / shared memory bytes per workgroup (CTA), static + dynamic
    scratch: int = 0  # private / local / stack bytes per lane: spills
    spills: int = 0  # spilled registers (gfx950 VGPR + SGPR spill counts; sm90: 0, scratch says it)
    occupancy: int = 0  # waves per SIMD (gfx950) or CTAs per SM (sm90)
    limit: str = ""  # the resource that sets `occupancy`
    llvm_occupancy: int | None = None  # gfx950: LLVM's own figure (registers and static LDS only)

    def dict(self) -> dict:
        return asdict(self)


def _ceil(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def _field(text: str, key: str) -> int | None:
    m = re.search(rf"^[\s-]*{re.escape(key)}:\s+(\d+)", text, re.M)  # "  - .agpr_count:" opens the list
    return int(m.group(1)) if m else None


def gfx950_occupancy(vgpr_total: int, lds: int, num_warps: int) -> tuple[int, str]:
    """Waves per SIMD: min of the register file, LDS (whole workgroups per CU, their waves spread over the 4
    SIMDs) and the hardware cap. 0 when one workgroup's LDS does not fit in a CU."""
    g = GFX950
    by = {"max": g["max_waves"], "vgpr": g["vgprs"] // max(_ceil(vgpr_total, g["vgpr_granule"]), g["vgpr_granule"])}
    if lds:
        by["lds"] = (g["lds"] // lds) * num_warps // g["simds"]
    limit = min(by, key=lambda k: (by[k], k != "max"))
    return by[limit], limit


def sm90_occupancy(regs: int, smem: int, num_warps: int) -> tuple[int, str]:
    """CTAs per SM (the CUDA occupancy calculator's rules for compute capability 9.0); 0 when a CTA does not fit."""
    s = SM90
    per_warp = _ceil(max(regs, 1) * 32, s["reg_unit"])
    warps_by_regs = s["partitions"] * ((s["regs"] // s["partitions"]) // per_warp)
    by = {"max": s["max_ctas"], "warps": s["max_warps"] // num_warps, "regs": warps_by_regs // num_warps}
    if smem:
        by["smem"] = 0 if smem > s["smem_cta"] + 1024 else s["smem"] // _ceil(smem, s["smem_unit"])
    limit = min(by, key=lambda k: (by[k], k != "max"))
    return by[limit], limit


def gfx950_usage(amdgcn: str, dynamic_shared: int, num_warps: int) -> Usage:
    total = _field(amdgcn, ".vgpr_count") or 0
    agpr = _field(amdgcn, ".agpr_count") or 0
    arch = re.search(r"; NumVgprs:\s+(\d+)", amdgcn)
    llvm = re.search(r"; Occupancy:\s+(\d+)", amdgcn)
    lds = (_field(amdgcn, ".group_segment_fixed_size") or 0) + (dynamic_shared or 0)
    spills = (_field(amdgcn, ".vgpr_spill_count") or 0) + (_field(amdgcn, ".sgpr_spill_count") or 0)
    occ, limit = gfx950_occupancy(total, lds, num_warps)
    return Usage(int(arch.group(1)) if arch else total - agpr, agpr, total, _field(amdgcn, ".sgpr_count"), lds,
                 _field(amdgcn, ".private_segment_fixed_size") or 0, spills, occ, limit,
                 int(llvm.group(1)) if llvm else None)  # fmt: skip


def cuobjdump() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def parse_resource_usage(text: str) -> dict[str, int]:
    """`cuobjdump --dump-resource-usage` output -> {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}."""
    line = re.search(r"Function [^:]+:\s*\n\s*(REG:.*)", text)
    if not line:
        raise ValueError(f"no per-function resource line in cuobjdump output: {text[:300]!r}")
    return {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line.group(1))}


def sm90_usage(cubin: bytes, dynamic_shared: int, num_warps: int) -> Usage:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(cuobjdump()), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True, timeout=60).stdout  # fmt: skip
    r = parse_resource_usage(out)
    smem = r.get("SHARED", 0) + (dynamic_shared or 0)
    occ, limit = sm90_occupancy(r["REG"], smem, num_warps)
    return Usage(r["REG"], None, r["REG"], None, smem, r.get("STACK", 0) + r.get("LOCAL", 0), 0, occ, limit)
