"""Where a rank's parameter sits in the unsharded (TP=1) model, so the filler can draw every value from its
global coordinates and TP=1 and TP=N serve the same synthetic model.

`global_view(module, name, t)` -> `View(shape, index)`: `shape` is the TP=1 tensor's shape, `index[d]` the global
position along dim d of each local position (dims not in `index` are not sharded). `None`: the layout is not
known for this module under sharding (the filler then draws from local coordinates and reports the tensor).

The rules mirror SGLang 0.5.17's weight loaders (tests/test_synth_tp.py checks the attributes they read exist in
its source): column-parallel linears shard `param.output_dim` per logical output (MergedColumn: `output_sizes`;
QKV: q heads, and kv heads with `num_kv_head_replicas`), row-parallel ones `param.input_dim`; the vocab
embedding / lm_head shard rows by `shard_indices`; FusedMoE shards experts by EP rank (fused shared experts
last) and the intermediate size by MoE TP rank, w13 as [gate; up] halves (DeepSeek's w1/w3 loads); GPT-OSS's
MXFP4 experts follow models/gpt_oss.py (interleaved rows, uneven split, zero padding: index -1). Every unit a
parameter is stored in (rows, packed bytes, 32-wide MXFP4 scale groups, 128-wide FP8 blocks) is handled by
scaling the logical sizes by the parameter's own size along that dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

COLUMN = ("QKVParallelLinear", "MergedColumnParallelLinear", "ColumnParallelLinear")
ROW = ("RowParallelLinear",)
VOCAB = ("VocabParallelEmbedding",)  # ParallelLMHead subclasses it
MOE = ("FusedMoE",)


@dataclass
class View:
    shape: tuple[int, ...]
    index: dict[int, torch.Tensor] = field(default_factory=dict)


def kind(module: Any) -> str | None:
    """The module's sharding family, by class name along its MRO (no SGLang import: runs in tests too)."""
    names = [c.__name__ for c in type(module).__mro__]
    for family, classes in (("column", COLUMN), ("row", ROW), ("vocab", VOCAB), ("moe", MOE)):
        if any(c in names for c in classes):
            return family
    return None


def global_view(module: Any, name: str, t: torch.Tensor) -> View | None:
    """The TP=1 view of parameter `name` (local to `module`) of shape `t.shape`; see the module docstring."""
    family = kind(module)
    shape = tuple(t.shape)
    if family is None or t.dim() == 0:
        return View(shape)
    if family == "moe":
        return _moe_view(module, name, t)
    tp, rank = int(getattr(module, "tp_size", 1)), int(getattr(module, "tp_rank", 0))
    if family == "vocab":
        return _vocab_view(module, t) if tp > 1 else View(shape)
    if tp == 1:
        return View(shape)
    if family == "row":
        dim = getattr(t, "input_dim", None)
        if dim is None:  # bias, per-channel / per-tensor scales: replicated (applied after the all-reduce)
            return View(shape) if hasattr(t, "output_dim") or t.dim() < 2 else _shifted(shape, t.dim() - 1, rank, tp)
        return _shifted(shape, dim, rank, tp)
    dim = getattr(t, "output_dim", None)  # per-tensor scales carry none: the same on every rank
    return View(shape) if dim is None else _column_view(module, t, dim, rank, tp)


def _shifted(shape: tuple[int, ...], dim: int, rank: int, tp: int) -> View:
    """An even contiguous shard along `dim`: rank r holds [r * n, (r + 1) * n)."""
    n = shape[dim]
    g = list(shape)
    g[dim] = n * tp
    return View(tuple(g), {dim: torch.arange(n) + rank * n})


def _segments(shape: tuple[int, ...], dim: int, local: list[int], offsets: list[int], total: int) -> View | None:
    """Local = concatenation of segments (sizes `local`, in logical units) each landing at global `offsets`,
    along `dim`, in a global dim of `total` logical units; scaled to the parameter's own units."""
    units = sum(local)
    if units == 0 or any((s * shape[dim]) % units for s in (*local, *offsets, total)):
        return None

    def scale(x: int) -> int:  # logical units -> this parameter's units
        return x * shape[dim] // units

    parts = [torch.arange(scale(n)) + scale(o) for n, o in zip(local, offsets, strict=True)]
    g = list(shape)
    g[dim] = scale(total)
    return View(tuple(g), {dim: torch.cat(parts)})


def _column_view(module: Any, t: torch.Tensor, dim: int, rank: int, tp: int) -> View | None:
    shape = tuple(t.shape)
    if hasattr(module, "total_num_kv_heads"):  # QKV: q heads split evenly, kv heads may be replicated
        hq, hk = int(module.num_heads), int(module.num_kv_heads)
        d, dv = int(module.head_size), int(getattr(module, "v_head_size", module.head_size))
        total_q, total_kv = int(module.total_num_heads), int(module.total_num_kv_heads)
        kv_rank = rank // int(getattr(module, "num_kv_head_replicas", 1))
        local = [hq * d, hk * d, hk * dv]
        offsets = [rank * hq * d, total_q * d + kv_rank * hk * d, (total_q + total_kv) * d + kv_rank * hk * dv]
        return _segments(shape, dim, local, offsets, total_q * d + total_kv * (d + dv))
    sizes = [int(s) for s in getattr(module, "output_sizes", [int(module.output_size)])]
    if any(s % tp for s in sizes):
        return None
    local = [s // tp for s in sizes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return _segments(shape, dim, local, [o + rank * n for o, n in zip(starts, local, strict=True)], sum(sizes))


def _vocab_view(module: Any, t: torch.Tensor) -> View | None:
    si = getattr(module, "shard_indices", None)
    if si is None or t.dim() == 0:
        return None
    n = si.org_vocab_end_index - si.org_vocab_start_index
    total = int(module.org_vocab_size)
    rows = t.shape[0]
    if rows < n:
        return None
    # real rows at their global ids; this rank's padding rows past the real vocab (never sampled: SGLang
    # slices logits to the vocabulary), numbered so that no two ranks share them
    pad = torch.arange(rows - n) + total + si.padded_org_vocab_start_index
    g = list(t.shape)
    g[0] = total + si.padded_org_vocab_start_index + rows
    return View(tuple(g), {0: torch.cat([torch.arange(n) + si.org_vocab_start_index, pad])})


def _moe_view(module: Any, name: str, t: torch.Tensor) -> View | None:
    shape = tuple(t.shape)
    view = View(shape)
    ep, tp = int(getattr(module, "moe_ep_size", 1)), int(getattr(module, "moe_tp_size", 1))
    if ep > 1:
        routed = int(module._num_local_routed)
        e_local = shape[0]
        glob_routed = routed * ep
        rank = int(getattr(module, "_expert_storage_rank", module.moe_ep_rank))
        idx = torch.arange(e_local)
        idx = torch.where(idx < routed, idx + rank * routed, idx - routed + glob_routed)  # fused shared: last
        view = View((glob_routed + e_local - routed, *shape[1:]), {0: idx})
    if t.dim() < 2 or (name.startswith("w2") and "bias" in name):
        return view  # per-expert scalars; w2's bias is per output (hidden) channel: not TP-sharded
    if _fused_w13(module):
        return _gpt_oss_view(module, name, t, view) if _is_mxfp4(module) and name.startswith(("w13", "w2")) else None
    if tp == 1:
        return view
    if not name.startswith(("w13", "w2")):
        return None
    inter = int(module.intermediate_size_per_partition)
    rank = int(module.moe_tp_rank)
    if name.startswith("w13"):  # [E, 2I, ...]: gate then up, each sharded
        sub = _segments(shape, 1, [inter, inter], [rank * inter, tp * inter + rank * inter], 2 * tp * inter)
    else:  # w2 [E, H, I]: the intermediate (last) dim
        sub = _shifted(shape, t.dim() - 1, rank, tp)
    if sub is None:
        return None
    return View((view.shape[0], *sub.shape[1:]), {**view.index, **sub.index})


def _fused_w13(module: Any) -> bool:
    """GPT-OSS style experts (SwiGLU with alpha): one fused, interleaved gate_up checkpoint tensor."""
    cfg = getattr(module, "moe_runner_config", None)
    return getattr(cfg, "gemm1_alpha", None) is not None or _is_mxfp4(module)


def _is_mxfp4(module: Any) -> bool:
    return "Mxfp4" in type(getattr(module, "quant_method", None)).__name__


def _gpt_oss_view(module: Any, name: str, t: torch.Tensor, view: View) -> View | None:
    """GPT-OSS MXFP4 experts as models/gpt_oss.py loads them: rank r holds intermediate rows [start, start + n) with
    per-rank size ceil(I / 32 / tp) * 32 (the last rank may hold fewer), w13 rows interleaved gate/up (2i, 2i + 1),
    copied into the leading part of a buffer Mxfp4MoEMethod pads; the padding stays zero (index -1)."""
    tp, rank = int(getattr(module, "moe_tp_size", 1)), int(getattr(module, "moe_tp_rank", 0))
    inter = int(module.intermediate_size_per_partition) * tp  # FusedMoE asserts I % tp == 0; padding is the method's
    per = -(-inter // (32 * tp)) * 32
    start = rank * per
    n = max(0, min(per, inter - start))
    w13 = name.startswith("w13")
    dim = 1 if w13 else t.dim() - 1
    k = 2 if w13 else 1  # w13 holds gate and up rows of each intermediate channel
    padded = int(getattr(module.quant_method, "intermediate_size_per_partition", n))  # the method's padded size
    unit = Fraction(t.shape[dim], k * padded)  # this tensor's elements per logical row (1, 1/2 bytes, 1/32 groups)
    mine, first, width = (unit * k * n, unit * k * start, unit * k * inter)
    if padded < n or any(x.denominator != 1 for x in (mine, first, width)):
        return None
    idx = torch.full((t.shape[dim],), -1, dtype=torch.int64)
    idx[: int(mine)] = torch.arange(int(mine)) + int(first)
    g = list(view.shape)
    g[dim] = int(width)
    return View(tuple(g), {**view.index, dim: idx})
