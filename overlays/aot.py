"""Ahead-of-time compilation of our Triton kernels for a chosen target, on any machine (no GPU needed).

Each op exposes `compile_specs(arch) -> list[CompileSpec]` (in `overlays/<op>/compile.py`), one per
kernel x config in its per-arch table; `speedrun kernels compile` and CI compile them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

TARGETS = {"gfx950": ("hip", "gfx950", 64), "sm90": ("cuda", 90, 32)}


@dataclass
class CompileSpec:
    name: str  # e.g. "mla_decode/splitkv[bs<=32]"
    fn: Any  # the @triton.jit function
    signature: dict[str, str]  # arg -> "*bf16" | "i32" | "fp32" | "constexpr" ...
    constexprs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # num_warps, num_stages, waves_per_eu, ...
    expect_mma: str | None = None  # regex that must appear in the assembly (e.g. v_mfma_scale on gfx950)


@dataclass
class CompileResult:
    name: str
    arch: str
    ok: bool
    error: str | None = None
    mma: list[str] = field(default_factory=list)
    shared: int | None = None
    asm: str = ""


MMA_PATTERNS = {"gfx950": r"v_mfma\w*", "sm90": r"wgmma\.\w+|mma\.sync\.aligned\.\w+"}


def compile_spec(spec: CompileSpec, arch: str) -> CompileResult:
    """Compile one spec for `arch` ("gfx950" | "sm90") and read the matrix instructions it uses."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        src = ASTSource(spec.fn, signature=spec.signature, constexprs=spec.constexprs)
        opts = dict(spec.options)
        if arch != "gfx950":
            opts = {k: v for k, v in opts.items() if k not in ("waves_per_eu", "matrix_instr_nonkdim", "kpack")}
        kernel = triton.compile(src, target=GPUTarget(*TARGETS[arch]), options=opts)
    except Exception as exc:  # the report names the failing kernel and config
        return CompileResult(spec.name, arch, ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
    asm = kernel.asm.get("amdgcn") or kernel.asm.get("ptx") or ""
    mma = sorted(set(re.findall(MMA_PATTERNS[arch], asm)))
    ok, err = True, None
    if spec.expect_mma and not re.search(spec.expect_mma, asm):
        ok, err = False, f"expected matrix instruction /{spec.expect_mma}/ not in {arch} assembly"
    return CompileResult(spec.name, arch, ok, err, mma, getattr(kernel.metadata, "shared", None), asm)
