"""The typed schema of configs/<arch>.json: one `m<=N` / `m>N` bucket per entry (overlays/buckets.py grammar;
m = tokens of the call), optional per-shape overrides `<N>x<K>:m<=N` (knobs over the same bucket for one weight
shape), the top-level `_layout` (the weight layout the hook re-lays weights out in at load), each bucket's
knobs, and the enums of the mode knobs. Tables are validated once when loaded into a GemmTable of frozen models;
the plan holds them (constexprs come from their attributes, defaults from GemmBucket)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import Field

from speedrun.overlays.buckets import Knobs, parse

DIM = "m"
SHAPE = re.compile(r"^\d+x\d+$")  # a per-shape override's prefix: "<N>x<K>"


class Route(StrEnum):
    """How a bf16-activation call with MXFP4 activations runs (see api.py)."""

    FUSED = "fused"  # one launch: A quantized in the GEMM's A-load
    PREQUANT = "prequant"  # quantizer launch, then the GEMM on quantized A
    DEQUANT_W = "dequant_w"  # sm90 prefill: quantize A, dequantize W, cuBLAS bf16
    STOCK_FP8 = "stock_fp8"  # CUDA prefill: W converted to FP8 blocks, stock's FP8 block GEMM (stock_fp8.py)


class AMode(IntEnum):
    """The kernel's A_MODE constexpr: what the A operand is."""

    BF16 = 0  # bf16 used as is (w4a16, or A already quantize-dequantized)
    QUANT = 1  # bf16 quantized to MXFP4 in the A-load (bit-exact with the reference quantizer)
    MXFP4 = 2  # packed codes + E8M0 scales


class WDeq(IntEnum):
    """The kernel's W_DEQ constexpr (dequant path; config key "deq" for plain weights)."""

    GENERIC = 0  # exact decode, interleaved
    FAST = 1  # mx.mxfp4_to_bf16_fast (inline PTX on CUDA), interleaved back along K
    HALVES = 2  # even/odd-K halves, two K/2 dots
    WORDS = 3  # int32 words, eight K/8 dots (BLOCK_K >= 128, else HALVES)
    SWZ = 4  # swz128 weights (mx.layout), whole 128-wide chunks: never a config value, the layout picks it


class Engine(StrEnum):
    """Which GEMM kernel a bucket runs: the Triton kernel (kernels.py: every arch, route and A mode), or the
    warp-specialized Gluon decode kernel (gluon_sm90_ws.py: sm90, the fused route's w4a4 on swz128 weights, M <= 64;
    elsewhere the bucket runs the Triton kernel, and the plan says so)."""

    TRITON = "triton"
    GLUON_WS = "gluon_ws"

    @property
    def gluon(self) -> bool:
        return self != Engine.TRITON


class Layout(StrEnum):
    """Weight layouts: plain (codes in k order), swz128 (mx.layout: each lane's codes of a 128-wide K chunk
    contiguous, decoded as WDeq.SWZ), swz128_mul1 (the same, every scale byte <= 128 checked at re-layout: one
    multiply per decoded pair); the _g64 ones store rows in groups of 64 (a 64-row tile's K step reads 4 KiB
    contiguous)."""

    PLAIN = "plain"
    SWZ128 = "swz128"
    SWZ128_MUL1 = "swz128_mul1"
    SWZ128_G64 = "swz128_g64"  # swz128 with rows in groups of 64 (mx.layout group_rows)
    SWZ128_G64_MUL1 = "swz128_g64_mul1"

    @property
    def row_group(self) -> int:
        return 64 if self in (Layout.SWZ128_G64, Layout.SWZ128_G64_MUL1) else 1

    @property
    def mul1(self) -> bool:
        return self in (Layout.SWZ128_MUL1, Layout.SWZ128_G64_MUL1)

    @staticmethod
    def swz(row_group: int, mul1: bool) -> Layout:
        """The swz128 layout with `row_group` rows per group (1 or 64) and the one-multiply decode or not."""
        return {(1, False): Layout.SWZ128, (1, True): Layout.SWZ128_MUL1, (64, False): Layout.SWZ128_G64,
                (64, True): Layout.SWZ128_G64_MUL1}[row_group, mul1]  # fmt: skip


class GemmKnobs(Knobs):
    """Knobs that may override a bucket's ("a16": bf16 activations; "swz": swz128 weights; per-shape entries):
    None is "not overridden" (Knobs.with_overrides takes only the knobs an entry sets)."""

    route: Route | None = None
    engine: Engine | None = None
    deq: WDeq | None = None
    BLOCK_M: int | None = Field(None, ge=16)
    BLOCK_N: int | None = Field(None, ge=16)
    BLOCK_K: int | None = Field(None, ge=32)
    SPLIT_K: int | None = Field(None, ge=0)  # 0: auto (api.split_k)
    CTAS_PER_SM: int | None = Field(None, ge=0)  # resident CTAs per SM: the wave-balanced auto split-K
    MIN_K_TILES: int | None = Field(None, ge=1)
    GROUP: int | None = Field(None, ge=1)
    num_warps: int | None = Field(None, ge=1)
    num_stages: int | None = Field(None, ge=1)
    maxnreg: int | None = None  # CUDA only
    b_regs: bool | None = None  # sm90: the bf16 A tile (A_MODE 0) via registers in the K loop (PERF.md Round 5)
    pdl: bool | None = None  # see GemmBucket
    fused_below_nk: int | None = None  # prequant: weights under this many elements run fused
    waves_per_eu: int | None = None
    matrix_instr_nonkdim: int | None = None
    kpack: int | None = None


class GemmBucket(GemmKnobs):
    """One `m<=N` bucket: the tile is required, every other knob has its default here; "a16" / "swz" override
    it. No default for num_stages (Triton's own differs by backend: a bucket without one launches without it)."""

    route: Route = Route.FUSED
    engine: Engine = Engine.TRITON
    deq: WDeq = WDeq.GENERIC
    BLOCK_M: int = Field(ge=16)
    BLOCK_N: int = Field(ge=16)
    BLOCK_K: int = Field(ge=32)
    SPLIT_K: int = Field(0, ge=0)
    MIN_K_TILES: int = Field(2, ge=1)
    GROUP: int = Field(1, ge=1)
    num_warps: int = Field(4, ge=1)
    fused_below_nk: int = 0
    b_regs: bool = False
    # CUDA sm90+: launched as a programmatic dependent (overlays/pdl.py; kernels.py): the GEMM may start while the
    # kernel before it drains and fetch its weight slice into L2 first. Ignored where PDL does not exist.
    pdl: bool = False
    a16: GemmKnobs | None = None
    swz: GemmKnobs | None = None


@dataclass(frozen=True)
class GemmTable:
    """A validated configs/<arch>.json: the M buckets, the per-shape overrides, the weight layout."""

    buckets: dict[str, GemmBucket]  # `m<=N` / `m>N`
    shapes: dict[str, GemmKnobs]  # `<N>x<K>:m<=N`: knobs over that bucket for one weight shape
    layout: Layout = Layout.PLAIN  # "_layout"

    def config(self, key: str, n: int, k: int) -> GemmBucket:
        """Bucket `key` for an N x K weight: with its per-shape entry's knobs when the table has one. The entry is
        the most specific: its knobs also win over the bucket's "swz" overrides (applied later, for swz128)."""
        bucket, shape = self.buckets[key], self.shapes.get(f"{n}x{k}:{key}")
        if shape is None:
            return bucket
        swz = {"swz": bucket.swz.with_overrides(shape)} if bucket.swz is not None else {}
        return bucket.with_overrides(shape).model_copy(update=swz)


def check_table(table: Mapping[str, Any], where: str) -> GemmTable:
    """Every entry of a table: keys in the grammar (`m<=N`, `m>N`, `<N>x<K>:m<=N` over an existing bucket), the
    knobs, and `_layout` (ValueError naming the first bad one)."""
    layout = table.get("_layout", Layout.PLAIN)
    if layout not in tuple(Layout):
        raise ValueError(f"{where}: _layout {layout!r}: expected one of {tuple(x.value for x in Layout)}")
    buckets, shapes = {}, {}
    for key, cfg in table.items():
        if key.startswith("_"):
            continue
        b = parse(key)
        if b.dim != DIM or (b.fmt is not None and not SHAPE.match(b.fmt)):
            raise ValueError(f"{where}: bucket {key!r}: expected m<=N, m>N or <N>x<K>:m<=N")
        if b.fmt is None:
            buckets[key] = GemmBucket.checked(cfg, f"{where} {key}")
        elif key.split(":", 1)[1] not in table:
            raise ValueError(f"{where}: {key!r} overrides a bucket the table does not have")
        else:
            shapes[key] = GemmKnobs.checked(cfg, f"{where} {key}")
    return GemmTable(buckets, shapes, Layout(layout))


__all__ = ["AMode", "Engine", "GemmBucket", "GemmKnobs", "GemmTable", "Layout", "Route", "WDeq", "check_table"]
