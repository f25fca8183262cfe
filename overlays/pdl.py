"""Programmatic dependent launch (PDL, sm90+): a chain of our kernels on one stream where each may start while the
one before it drains, so launch latency and the next kernel's prologue overlap the previous kernel's tail.

A kernel launched with `launch_pdl=True` may begin before its predecessor in the stream has completed. The chain is
correct when every kernel in it keeps three rules (`griddepcontrol`, PTX ISA):
1. it executes `pdl_wait` before it completes, so its completion implies its predecessor's, and by induction every
   earlier kernel's (an early exit waits too);
2. it reads what its predecessor writes only after `pdl_wait`; what kernels further back wrote is complete once the
   predecessor's own wait has returned (a kernel triggers its dependents only after that wait, or is the chain's
   first kernel, launched normally);
3. it writes before `pdl_wait` only to memory no running kernel touches (fresh outputs of the call).
`pdl_trigger` lets the next kernel launch once every program of this one has triggered or exited: at that point all
of them are resident, so the dependents fill SMs as this kernel's programs finish.
With PDL off (the constexpr) none of this emits code: the interpreter, ROCm and pre-sm90 CUDA run plain launches.
Launch sites pass `**dependent(pdl)` (the kernel's PDL constexpr and the launch attribute, never one without the
other), or `**launch_kw(pdl)` where the constexpr travels with the kernel's other constants: the HIP backend has no
`launch_pdl` option and rejects the keyword even when it is False.
"""

from __future__ import annotations

import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton built without its CUDA backend (a ROCm wheel may be): PDL never runs there

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Block until the predecessor has completed and its writes are visible (rule 1 and 2)."""
    if PDL:
        gdc_wait()


@triton.jit
def pdl_trigger(PDL: tl.constexpr):
    """Allow the dependent kernel to launch (once every program has triggered or exited)."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def prefetch_ptrs(ptrs):
    """One L2 prefetch per element of a pointer tensor (`prefetch.global.L2`: no fault, no registers written). For
    weights a kernel will stream after its `pdl_wait`: they do not depend on the predecessor."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)  # fmt: skip


def launch_kw(pdl: bool) -> dict[str, bool]:
    """The launch keyword of a programmatic dependent: {"launch_pdl": True}, or nothing at all (ROCm's Triton
    raises on an option its backend does not have, False included)."""
    return {"launch_pdl": True} if pdl else {}


def dependent(pdl: bool) -> dict[str, bool]:
    """A kernel's launch keywords as a programmatic dependent: its PDL constexpr (the waits that make the launch
    safe) and the launch attribute, together."""
    return {"PDL": pdl, **launch_kw(pdl)}


__all__ = ["dependent", "launch_kw", "pdl_trigger", "pdl_wait", "prefetch_ptrs"]
