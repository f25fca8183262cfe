"""Calling stock SGLang 0.5.17's kernels from a bench process (no server), and the FP8 weights they take.

- `stock_config()`: SGLang's kernel paths read the resolved server config (`get_exec()`: fused-MoE config
  lookup, deterministic mode, fused sum-all-reduce). Outside a server nothing is published, so this installs
  SGLang's own test hook, `get_context().override_server_args()`: a dummy `ServerArgs` with every default, which
  is what a `launch_server` without flags resolves these fields to (moe_runner_backend / fp8_gemm_backend
  "auto", no deterministic mode, no fused all-reduce). It also builds the single-rank TP group such a server has.
- DeepGEMM: SGLang pre-compiles its FP8 GEMM for every M up to 16384 on first use of an (N, K) unless
  SGLANG_JIT_DEEPGEMM_PRECOMPILE=0 (10-20 minutes; the server does it once at start, or
  `sglang.compile_deep_gemm` ahead of time). A bench compiles only the Ms it runs, so importing this module sets
  that variable (before any SGLang import reads it) and `no_deepgemm_precompile()` also clears the flag if SGLang
  was imported first.
- `fp8_block_quant`: DeepSeek's FP8 checkpoint format (e4m3 weights, one fp32 scale_inv per 128x128 block). With
  power-of-two scales, weights that came from MXFP4 values are carried exactly, so FP8 baselines and our MXFP4
  kernels compute on identical weights and differ only in activation quantization.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("SGLANG_JIT_DEEPGEMM_PRECOMPILE", "0")

BLOCK = 128
FP8_MAX = 448.0  # float8_e4m3fn


def stock_config() -> None:
    """Publish SGLang's default config in this process if no server config is published yet, and give it the
    single-rank TP group a `--tp 1` server has (see `single_rank_tp_group`)."""
    from sglang.srt.runtime_context import get_context, get_exec

    try:
        get_exec()
    except ValueError:  # "config namespace 'exec' not published"
        get_context().override_server_args().install()
    single_rank_tp_group()


def single_rank_tp_group() -> None:
    """SGLang's distributed groups at world size 1, as `launch_server --tp 1` builds them, unless this process
    has them. Stock's out-of-place fused MoE allocates its output in the TP group's symmetric-memory pool
    (`get_tp_group()`), so a test or bench calling it outside a server needs one."""
    import torch
    from sglang.srt.distributed import parallel_state as ps

    from speedrun.launch.server import free_port

    if ps._TP is not None:
        return
    cuda = torch.cuda.is_available()
    ps.init_distributed_environment(world_size=1, rank=0, local_rank=torch.cuda.current_device() if cuda else 0,
                                    distributed_init_method=f"tcp://127.0.0.1:{free_port()}",
                                    backend="nccl" if cuda else "gloo")  # fmt: skip
    ps.initialize_model_parallel(tensor_model_parallel_size=1)


def no_deepgemm_precompile() -> None:
    """Make sure DeepGEMM compiles only the Ms a bench runs (see the module doc)."""
    from sglang.srt.layers.deep_gemm_wrapper import compile_utils

    compile_utils._ENABLE_JIT_DEEPGEMM_PRECOMPILE = False  # read at import: see the module doc


def deepgemm_available() -> bool:
    """Whether SGLang enables DeepGEMM here: sgl-deep-gemm importable on sm90+ (a dependency of sglang 0.5.17)."""
    from sglang.srt.layers import deep_gemm_wrapper

    return bool(deep_gemm_wrapper.ENABLE_JIT_DEEPGEMM)


def fp8_block_quant(w: Any, block: int = BLOCK) -> tuple[Any, Any]:
    """bf16/fp32 [..., N, K] -> (float8_e4m3fn [..., N, K], float32 scale_inv [..., ceil(N/b), ceil(K/b)]), the
    scale of each block the power of two that puts its largest |value| at or under 448."""
    import torch

    *lead, n, k = w.shape
    nb, kb = -(-n // block), -(-k // block)
    padded = torch.zeros(*lead, nb * block, kb * block, dtype=torch.float32, device=w.device)
    padded[..., :n, :k] = w.float()
    blocks = padded.view(*lead, nb, block, kb, block)
    amax = blocks.abs().amax(dim=(-3, -1)).clamp_min(1e-12)  # an all-zero block: any scale
    scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)))
    q = (blocks / scale[..., :, None, :, None]).to(torch.float8_e4m3fn)
    return q.view(*lead, nb * block, kb * block)[..., :n, :k].contiguous(), scale


def fp8_block_dequant(q: Any, scale: Any, block: int = BLOCK) -> Any:
    """The inverse of fp8_block_quant, in float32 (tests)."""
    import torch

    *_, n, k = q.shape
    s = scale.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)[..., :n, :k]
    return q.to(torch.float32) * s
