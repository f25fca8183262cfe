"""Ahead-of-time compilation of our Triton kernels for a chosen target, on any machine (no GPU needed).

Each op exposes `compile_specs(arch) -> list[CompileSpec]` (in `eval/kernels/<op>_compile.py`, listed in
`COMPILE`), one per kernel x config in its per-arch table; `speedrun kernels compile` and CI compile them all.

Specialization hints (`CompileSpec.attrs`). A JIT launch specializes each argument on what it sees: a pointer
whose address is 16-byte aligned and an integer divisible by 16 get `tt.divisibility = 16` ("D"), and on AMD a
tensor smaller than 2 GiB gets `tt.pointer_range = 32` ("S", which enables buffer loads). An AOT compile sees
no values, so without hints it assumes nothing: no vectorized loads, often no software pipelining, and the
report would describe a different kernel from the one that runs. Pass the JIT's codes per argument name:

    CompileSpec(..., attrs={"a_ptr": "DS", "w_ptr": "DS", "stride_am": "D"})   # or attrs=aligned(sig, ...)

Each backend turns the codes into IR attributes exactly as the JIT does (CUDA ignores "S"). Only promise what
every real launch satisfies (torch allocations are 256-byte aligned; a stride is "D" only if always % 16 == 0).
Empty attrs (the default) compile as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from speedrun.overlays.arch import for_arch

TARGETS = {"gfx950": ("hip", "gfx950", 64), "sm90": ("cuda", 90, 32)}


@dataclass
class CompileSpec:
    name: str  # e.g. "mla_decode/splitkv[bs<=32]"
    fn: Any  # the @triton.jit function
    signature: dict[str, str]  # arg -> "*bf16" | "i32" | "fp32" | "constexpr" ...
    constexprs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # num_warps, num_stages, waves_per_eu, maxnreg, ...
    expect_mma: str | None = None  # regex that must appear in the assembly (e.g. v_mfma_scale on gfx950)
    attrs: dict[str, str] = field(default_factory=dict)  # arg -> JIT specialization codes "D" / "S" / "DS"
    min_occupancy: int | None = None  # the report fails the kernel below this (waves/SIMD on gfx950, CTAs/SM on sm90)
    no_spills: bool = False  # the report fails the kernel on any spill, register-to-register ones included


def aligned(signature: dict[str, str], *names: str) -> dict[str, str]:
    """attrs for `names` (all pointers and ints of `signature` when none given) as a JIT launch would see them
    with aligned tensors and multiple-of-16 integers: pointers "DS", integers "D"."""
    picked = names or [k for k, v in signature.items() if v.startswith("*") or v[0] in "iu"]
    return {k: "DS" if signature[k].startswith("*") else "D" for k in picked}


def ir_attrs(fn: Any, attrs: dict[str, str], backend: Any) -> dict[tuple[int, ...], list[list[Any]]]:
    """CompileSpec.attrs -> ASTSource attrs ({(arg index,): [[name, value], ...]}) through the backend's own
    `parse_attr`, the function the JIT uses on its specialization codes."""
    out = {}
    for name, codes in attrs.items():
        parsed = backend.parse_attr(codes)
        if parsed:
            out[(fn.arg_names.index(name),)] = parsed
    return out


@dataclass
class CompileResult:
    name: str
    arch: str
    ok: bool
    error: str | None = None
    mma: list[str] = field(default_factory=list)
    shared: int | None = None
    asm: str = ""
    binary: bytes | None = None  # cubin (sm90) / hsaco (gfx950): `speedrun kernels compile` reads registers here
    num_warps: int | None = None


# The matrix instructions themselves (wgmma fence/commit/wait are bookkeeping, left out), with their operand types
# on sm90 (m64n16k32.f32.e4m3.e4m3 vs .f16.f16: an fp8 dot Triton upcast shows as f16).
MMA_PATTERNS = {"gfx950": r"v_mfma\w*", "sm90": r"wgmma\.mma_async\.sync\.aligned\.[\w.]+|mma\.sync\.aligned\.[\w.]+"}


def _source(fn: Any) -> Any:
    """The AST source class for a kernel: Gluon kernels (explicit layouts) have their own."""
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction

    return GluonASTSource if isinstance(fn, GluonJITFunction) else ASTSource


def compile_spec(spec: CompileSpec, arch: str) -> CompileResult:
    """Compile one spec for `arch` ("gfx950" | "sm90") and read the matrix instructions it uses."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    try:
        target = GPUTarget(*TARGETS[arch])
        attrs = ir_attrs(spec.fn, spec.attrs, make_backend(target)) if spec.attrs else None
        src = _source(spec.fn)(spec.fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
        kernel = triton.compile(src, target=target, options=for_arch(spec.options, arch))
    except Exception as exc:  # the report names the failing kernel and config
        return CompileResult(spec.name, arch, ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
    asm = kernel.asm.get("amdgcn") or kernel.asm.get("ptx") or ""
    mma = sorted(set(re.findall(MMA_PATTERNS[arch], asm)))
    ok, err = True, None
    if spec.expect_mma and not re.search(spec.expect_mma, asm):
        ok, err = False, f"expected matrix instruction /{spec.expect_mma}/ not in {arch} assembly"
    binary = kernel.asm.get("hsaco") or kernel.asm.get("cubin")
    md = kernel.metadata
    return CompileResult(spec.name, arch, ok, err, mma, getattr(md, "shared", None), asm, binary, md.num_warps)
