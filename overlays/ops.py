"""The overlay ops and their backends, spelled once: the plugin, the environment registry, the CLI
(`speedrun kernels ...`) and the compile report all read these."""

from __future__ import annotations

OPS: tuple[str, ...] = ("mla_decode", "mxfp4_moe", "mxfp4_gemm")
BACKENDS: tuple[str, ...] = ("triton", "aiter", "reference")

__all__ = ["BACKENDS", "OPS"]
