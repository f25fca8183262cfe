"""overlays/pdl.py on the CPU: where PDL resolves on, and that no launch site hands ROCm a keyword its Triton
backend rejects (the HIP backend has no `launch_pdl` option: passing it, even False, raises at launch)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

# The interpreter only where there is no GPU: TRITON_INTERPRET is read when kernels are decorated, and pdl.py's
# helpers decorated first here (collection order) would be compiled, not interpreted, under the other CPU tests.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from speedrun.overlays.arch import pdl_ok
from speedrun.overlays.pdl import dependent, launch_kw

OVERLAYS = Path(__file__).resolve().parents[1] / "overlays"


@pytest.mark.parametrize(
    "arch,cuda,want",
    [("sm90", True, True), ("sm100", True, True), ("sm120", True, True), ("sm89", True, False),
     ("sm80", True, False), ("sm90", False, False), ("gfx950", False, False), ("cpu", False, False)],
)  # fmt: skip
def test_pdl_only_on_cuda_sm90_and_newer(arch: str, cuda: bool, want: bool) -> None:
    assert pdl_ok(arch, cuda) is want


def test_launch_keyword_only_when_on_and_hip_would_reject_it() -> None:
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    assert launch_kw(False) == {} and launch_kw(True) == {"launch_pdl": True}
    assert dependent(False) == {"PDL": False} and dependent(True) == {"PDL": True, "launch_pdl": True}
    hip = make_backend(GPUTarget("hip", "gfx950", 64)).parse_options({})
    cuda = make_backend(GPUTarget("cuda", 90, 32)).parse_options({})
    # the JIT raises "Keyword argument ... unrecognised" for a launch keyword its backend's options lack
    assert "launch_pdl" not in hip.__dict__ and "launch_pdl" in cuda.__dict__


def test_no_launch_site_passes_launch_pdl_directly() -> None:
    """Every kernel launch goes through launch_kw (a literal `launch_pdl=` would reach ROCm's JIT)."""
    offenders = []
    for path in OVERLAYS.rglob("*.py"):
        if path.name != "pdl.py":
            lines = enumerate(path.read_text().splitlines(), 1)
            offenders += [
                f"{path.relative_to(OVERLAYS)}:{i}" for i, line in lines if re.search(r"\blaunch_pdl\s*=", line)
            ]
    assert not offenders, offenders
