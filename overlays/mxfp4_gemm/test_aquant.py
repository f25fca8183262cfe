"""The fused activation quantizer (kernels.qdq_mxfp4_fast): its rule checked exhaustively against the reference
quantizer on the CPU, by emulating the sm90 PTX step by step in torch and by running the portable Triton path
(interpreter)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # see overlays/mx/test_mx.py: only where no GPU tests share the process
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

from speedrun.overlays import interpreter  # noqa: E402
from speedrun.overlays.mx.quant import qdq_mxfp4  # noqa: E402
from speedrun.overlays.mxfp4_gemm.api import qdq_blocks  # noqa: E402
from speedrun.overlays.mxfp4_gemm.reference import qdq_edge_blocks  # noqa: E402

interpreter.patch()


def _u16(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16).to(torch.int32) & 0xFFFF


def emulate_ptx(x: torch.Tensor) -> torch.Tensor:
    """bf16 [B, 32] -> what mx.triton_helpers.QDQ_BF16X2_ASM computes, one PTX instruction per line (bf16 adds in torch
    round like add.rn.bf16x2 here: the exact sums need at most 13 significant bits)."""
    amax = x.float().abs().amax(-1, keepdim=True)
    field = ((amax.view(torch.int32) + 0x200000) >> 23) & 0xFF
    eb = torch.where(field == 255, 254, (field - 2).clamp_min(0))
    bits = _u16(x)
    f = torch.maximum(bits & 0x7F80, eb << 7)  # and.b32, max.u16x2
    c = (f + 0x340).to(torch.int16).view(torch.bfloat16)  # add.u32
    v = (x + c) - c  # add.rn.bf16x2, sub.rn.bf16x2
    v = torch.minimum(_u16(v) & 0x7FFF, (eb << 7) + 0x140)  # and.b32, min.u16x2
    return (v | (bits & 0x8000)).to(torch.int16).view(torch.bfloat16)  # lop3


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    bad = (got.view(torch.int16) != want.view(torch.int16)).nonzero()
    first = bad[0, 0].item() if len(bad) else None
    assert len(bad) == 0, f"{len(bad)} mismatches, first in block {first}: {got[first]} vs {want[first]}"


def test_ptx_rule_matches_reference_exhaustively():
    blocks = qdq_edge_blocks()
    assert len(blocks) > 100_000
    _same(emulate_ptx(blocks), qdq_mxfp4(blocks))


def test_triton_path_matches_reference():
    blocks = qdq_edge_blocks(step=25, subnormals=False).to(DEV)
    _same(qdq_blocks(blocks, False).cpu(), qdq_mxfp4(blocks.cpu()))
