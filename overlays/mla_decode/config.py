"""The typed schema of configs/<arch>.json: one `heads<=N` bucket per entry (overlays/buckets.py grammar), its
knobs, and the enums of the mode knobs. Tables are validated once when loaded into these frozen models; the plan
holds them (the kernels' constexprs are read from their attributes)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from speedrun.overlays.buckets import Knobs, Pow2, parse_table


class Compute(StrEnum):
    """How an fp8 KV cache computes: a8w8 (q quantized to fp8 per row, fp8 MMAs) or a16 (upcast to 16 bits)."""

    A8W8 = "a8w8"
    A16 = "a16"


class Fp8Cvt(StrEnum):
    """a16 on fp8 caches: MMA in q's dtype (bf16), in f16 (e4m3 -> f16 exact), or f16 with the packed PTX convert."""

    BF16 = "bf16"
    F16 = "f16"
    ASM = "asm"


class MmaM(StrEnum):
    TOKENS = "tokens"  # tokens are the MMA's M (sm90 wgmma needs M >= 64)
    HEADS = "heads"


class Pv(StrEnum):
    FP8 = "fp8"  # P and V in fp8
    F16 = "f16"  # P in f16, V upcast (exact)


class PvSplit(StrEnum):
    """gluon_ws: what the two MMA warpgroups split in PV: the 512 output rows (each reads half of V) or the heads
    (each reads all of V for its own 8 heads, so the softmax's alpha and P stay in the warpgroup that made them)."""

    ROWS = "rows"
    HEADS = "heads"


class Engine(StrEnum):
    """Which partial kernel runs (a8w8.engine for fp8 caches, kv16_engine for 16-bit ones): the Triton kernel (every
    arch), or a Gluon one (sm90 only, heads <= 16, tokens as M, 64-token tiles): gluon_sm90.py, or its
    warp-specialized form for fp8 caches (gluon_sm90_ws.py: loads and the V convert in partitions of their own)."""

    TRITON = "triton"
    GLUON = "gluon"
    GLUON_WS = "gluon_ws"

    @property
    def gluon(self) -> bool:
        return self != Engine.TRITON


class MergeKnobs(Knobs):
    # powers of two: BLOCK_P = min(BLOCK_P, max_tile // BLOCK_DV) (api.merge_blocks) is a tl.arange extent
    BLOCK_P: Pow2 = Field(ge=1)
    min_block_dv: Pow2 = Field(ge=16)
    max_tile: Pow2 = Field(2048, ge=64)  # floats in the [BLOCK_P, BLOCK_DV] tile (caps BLOCK_P)
    num_warps: int = Field(ge=1)
    num_stages: int = Field(1, ge=1)
    waves_per_eu: int | None = None


class Fp8Knobs(Knobs):
    """A bucket's "fp8": knobs of the a16 path on fp8 caches (never the split width)."""

    BLOCK_N: int | None = Field(None, ge=16)
    num_warps: int | None = Field(None, ge=1)
    num_stages: int | None = Field(None, ge=1)
    split_d: int | None = None
    fp8_cvt: Fp8Cvt | None = None
    qk_chains: int | None = None
    maxnreg: int | None = Field(None, ge=16, le=255)  # CUDA only: see MlaBucket
    a16_mma_m: MmaM | None = None


class MxKnobs(Knobs):
    """A bucket's "mxfp4": knobs of the partial kernel on an MXFP4 cache (the whole [BLOCK_N, 512] tile decoded to
    bf16 in registers; never the split width)."""

    BLOCK_N: int | None = Field(None, ge=16)
    num_warps: int | None = Field(None, ge=1)
    num_stages: int | None = Field(None, ge=1)
    waves_per_eu: int | None = None


class A8W8Knobs(Knobs):
    """A bucket's "a8w8": the kernel knobs of the fp8-compute path (they override the bucket's for fp8 caches);
    mma_m and pv are its own (the plan reads them here)."""

    mma_m: MmaM
    pv: Pv
    engine: Engine = Engine.TRITON
    BLOCK_N: int = Field(ge=16)
    num_warps: int = Field(ge=1)
    num_stages: int = Field(ge=1)
    waves_per_eu: int | None = None
    matrix_instr_nonkdim: int | None = None
    # The split width of an fp8 model computing a8w8 (the Gluon kernel's 164 KB of shared memory hold one CTA per
    # SM, so the bucket's 2 per SM would be two waves); 16-bit caches keep the bucket's.
    programs_per_sm: int | None = Field(None, ge=1)
    # The Gluon kernel's V copy (fp8 -> f16) in slices of this many tokens (default 32): fewer slices, fewer CTA
    # barriers, more registers (sm90 AOT: 64 rows = 178 registers and 7 barriers a tile vs 170 and 8).
    cvt_rows: int | None = Field(None, ge=8)
    # The Gluon kernel leaves a tile's PV wgmma in flight under the next tile's QK and V copy (its V copy and P
    # double-buffered: 2 x 64 KB of f16 V, so at most 2 ring stages fit in an H100's 227 KB)
    pipe_pv: bool | None = None
    pv_split: PvSplit | None = None  # gluon_ws only (PvSplit); rows when unset
    # gluon_ws only: V buffers (default num_stages: the converter fills one while PV reads another); 1 frees shared
    # memory for ring slots (f16 V: 3 or 4 slots instead of 2), converting a tile only after the PV before retired
    v_bufs: int | None = Field(None, ge=1)
    # gluon_ws only: the softmax's running max moves only when a tile's scores would overflow P (f16: by more than
    # 2^7), each token warp's partial max published by P's own barrier: no per-tile reduction barriers
    # (gluon_sm90_ws._lazy_softmax)
    lazy_max: bool | None = None


class MlaBucket(Knobs):
    """One `heads<=N` bucket."""

    BLOCK_H: int = Field(ge=16)
    BLOCK_N: int = Field(ge=16)
    num_warps: int = Field(ge=1)
    num_stages: int = Field(ge=1)
    waves_per_eu: int | None = None
    matrix_instr_nonkdim: int | None = None
    # CUDA only (PTX .maxnreg, a launch option): registers per thread the partial kernel may use, e.g. 168 so 3
    # CTAs of 4 warps fit an SM. Rejected on AMD (api.cuda_only), whose occupancy knob is waves_per_eu.
    maxnreg: int | None = Field(None, ge=16, le=255)
    programs_per_sm: int = Field(ge=1)
    min_chunk: int = Field(ge=16)
    merge: MergeKnobs
    split_d: int = 1
    fp8_cvt: Fp8Cvt = Fp8Cvt.BF16
    fp8: Fp8Knobs | None = None
    mxfp4: MxKnobs | None = None
    snap: bool = False
    qk_chains: int = 1
    fp8_compute: Compute = Compute.A16
    a8w8: A8W8Knobs | None = None
    # The 16-bit paths (bf16 caches, fp8 computed a16): heads as M (mma.sync, split_d) or tokens as M (wgmma, 4
    # slices). Not `mma_m`: that is a8w8's own knob, which must not land on the bucket (with_overrides).
    a16_mma_m: MmaM = MmaM.HEADS
    # 16-bit caches (bf16 q and KV): the Triton kernel, or the Gluon one (sm90, heads <= 16, BLOCK_N 64, 4/8 warps:
    # gluon_sm90.py reads the landed tile for both MMAs). Not `engine`: that is a8w8's own knob (with_overrides).
    kv16_engine: Engine = Engine.TRITON
    # CUDA sm90+: the partial and merge kernels launch as programmatic dependents (overlays/pdl.py): the partial
    # kernel may start as the cache write before it drains, the merge as the partial kernel's programs finish; both
    # wait before reading anything. Ignored where PDL does not exist.
    pdl: bool = False

    @model_validator(mode="after")
    def _a8w8_knobs(self) -> MlaBucket:
        if self.fp8_compute == Compute.A8W8 and self.a8w8 is None:
            raise ValueError("fp8_compute is a8w8 but the bucket has no a8w8 knobs")
        return self


def check_table(table: Mapping[str, Any], where: str) -> dict[str, MlaBucket]:
    """Every bucket of a table: its key in the one grammar (`heads<=N`) and its knobs (ValueError naming them)."""
    return parse_table(table, MlaBucket, where, "heads", expected="heads<=N")


__all__ = [
    "A8W8Knobs",
    "Compute",
    "Engine",
    "Fp8Cvt",
    "Fp8Knobs",
    "MergeKnobs",
    "MlaBucket",
    "MmaM",
    "MxKnobs",
    "Pv",
    "PvSplit",
    "check_table",
]
