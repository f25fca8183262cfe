"""Which GPU architecture we run on, and per-arch launch configs (one JSON per op per arch).

Configs live in `overlays/<op>/configs/<arch>.json`: {"_meta": {...}, "<bucket>": {knobs...}}.
AMD-only knobs never reach a CUDA launch, CUDA-only ones (maxnreg: a register cap per thread, PTX .maxnreg)
never an AMD one (`launch_options`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

ARCHS = ("sm90", "gfx950")
AMD_ONLY = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")
CUDA_ONLY = ("maxnreg",)  # the AMD compiler has no such option (occupancy there is waves_per_eu)
LAUNCH_KEYS = ("num_warps", "num_stages", *AMD_ONLY, *CUDA_ONLY)
HERE = Path(__file__).resolve().parent


def current_arch() -> str:
    """`sm90`, `gfx950`, ... of the visible GPU (`cpu` when there is none)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    props = torch.cuda.get_device_properties(0)
    if getattr(torch.version, "hip", None):
        return props.gcnArchName.split(":")[0]
    return f"sm{props.major}{props.minor}"


@functools.cache
def _sm_count(index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: Any = None) -> int:
    """Multiprocessors (CUs on ROCm) of a device (torch.device or index); 4 on the CPU, where the Triton
    interpreter runs the kernels and a small grid keeps tests fast."""
    import torch

    if isinstance(device, int):
        return _sm_count(device)
    if device is not None and torch.device(device).type != "cuda":
        return 4
    index = torch.device(device).index if device is not None else None
    return _sm_count(index if index is not None else torch.cuda.current_device())


def is_amd(arch: str) -> bool:
    return arch.startswith("gfx")


def pdl_ok(arch: str, cuda: bool) -> bool:
    """Whether kernels may launch as programmatic dependents (overlays/pdl.py): a CUDA device of sm90 or newer
    (`griddepcontrol`); not ROCm, not the CPU interpreter."""
    return cuda and arch.startswith("sm") and arch[2:].isdigit() and int(arch[2:]) >= 90


@functools.cache
def load_configs(op: str, arch: str) -> dict[str, Any]:
    """The config table of `op` for `arch`; falls back to sm90 for unknown CUDA archs."""
    path = HERE / op / "configs" / f"{arch}.json"
    if not path.exists() and not is_amd(arch):
        path = HERE / op / "configs" / "sm90.json"
    if not path.exists():
        raise FileNotFoundError(f"no {op} config for arch {arch!r}: expected {path}")
    return json.loads(path.read_text())


def for_arch(options: dict[str, Any], arch: str) -> dict[str, Any]:
    """Compile options without the other vendor's knobs (AMD-only ones on CUDA, CUDA-only ones on AMD): neither
    compiler is handed an option it does not have."""
    other = CUDA_ONLY if is_amd(arch) else AMD_ONLY
    return {k: v for k, v in options.items() if k not in other}


def launch_options(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """The Triton launch kwargs of a config entry for `arch` (see for_arch)."""
    return for_arch({k: v for k, v in cfg.items() if k in LAUNCH_KEYS}, arch)
