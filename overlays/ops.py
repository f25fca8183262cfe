"""The overlay ops and their backends, spelled once: the plugin, its settings (overlays/environ.py), the recipe,
the CLI (`speedrun kernels ...`) and the compile report all read these."""

from __future__ import annotations

from typing import Literal, get_args

Op = Literal["mla_decode", "mxfp4_moe", "mxfp4_gemm"]
Backend = Literal["triton", "aiter", "reference"]
OPS: tuple[str, ...] = get_args(Op)
BACKENDS: tuple[str, ...] = get_args(Backend)

__all__ = ["BACKENDS", "OPS", "Backend", "Op"]
