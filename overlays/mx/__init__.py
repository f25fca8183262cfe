"""OCP MX FP4 (MXFP4) numerics shared by the MXFP4 overlays: layout and torch reference maths.

Format: E2M1 values packed two per byte (element 2i in the low nibble, 2i+1 in the high nibble),
one E8M0 scale byte per 32 consecutive elements along K (value 2**(s - 127); s = 255 is NaN).
"""

from speedrun.overlays.mx.format import (
    BLOCK,
    E2M1_VALUES,
    dequant_mxfp4,
    e8m0_to_float,
    pack_e2m1,
    unpack_e2m1,
)
from speedrun.overlays.mx.quant import qdq_mxfp4, quant_mxfp4

__all__ = [
    "BLOCK",
    "E2M1_VALUES",
    "dequant_mxfp4",
    "e8m0_to_float",
    "pack_e2m1",
    "qdq_mxfp4",
    "quant_mxfp4",
    "unpack_e2m1",
]
