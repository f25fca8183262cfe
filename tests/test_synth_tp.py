"""The synthetic filler is TP-invariant: a rank's tensors equal the TP=1 tensors narrowed the way SGLang's weight
loaders narrow a checkpoint. SGLang's layers cannot be built on this CPU (its GPU stack is not installed), so the
modules here carry the attributes the 0.5.17 layers set (checked against its source below), and the expected
shards come from `narrow` calls written like the loaders' (not from shard.py's index maps)."""

import re
from types import SimpleNamespace

import pytest
import torch

from speedrun.overlays.synthetic.fill import fill_, fill_report_
from speedrun.overlays.synthetic.shard import global_view
from speedrun.sglang_source import sglang_root

SEED = 11


def param(shape, dtype=torch.bfloat16, **attrs):
    p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False)
    for k, v in attrs.items():
        setattr(p, k, v)
    return p


class ColumnParallelLinear(torch.nn.Module):
    def __init__(self, out, inp, tp, rank, dtype=torch.bfloat16, k_div=1, n_div=1):
        super().__init__()
        self.tp_rank, self.tp_size, self.output_size = rank, tp, out
        self.weight = param((self.local_out() // n_div, inp // k_div), dtype, output_dim=0, input_dim=1)

    def local_out(self):
        return self.output_size // self.tp_size


class MergedColumnParallelLinear(ColumnParallelLinear):
    def __init__(self, sizes, inp, tp, rank, **kw):
        self.output_sizes = sizes
        super().__init__(sum(sizes), inp, tp, rank, **kw)


class QKVParallelLinear(ColumnParallelLinear):
    def __init__(self, hidden, d, heads, kv_heads, tp, rank):
        self.head_size = self.v_head_size = d
        self.total_num_heads, self.total_num_kv_heads = heads, kv_heads
        self.num_heads = heads // tp
        self.num_kv_heads = max(1, kv_heads // tp)
        self.num_kv_head_replicas = max(1, tp // kv_heads)
        super().__init__((self.num_heads + 2 * self.num_kv_heads) * d * tp, hidden, tp, rank)
        self.bias = param((self.local_out(),), output_dim=0)


class RowParallelLinear(torch.nn.Module):
    def __init__(self, out, inp, tp, rank, dtype=torch.bfloat16, k_div=1):
        super().__init__()
        self.tp_rank, self.tp_size = rank, tp
        self.weight = param((out, inp // tp // k_div), dtype, output_dim=0, input_dim=1)
        self.bias = param((out,), output_dim=0)


class VocabParallelEmbedding(torch.nn.Module):
    def __init__(self, vocab, hidden, tp, rank, pad_to=64):
        super().__init__()
        per = -(-vocab // (pad_to * tp)) * pad_to  # padded rows per rank
        start, end = rank * per, min(vocab, (rank + 1) * per)
        self.tp_size, self.org_vocab_size = tp, vocab
        self.shard_indices = SimpleNamespace(org_vocab_start_index=start, org_vocab_end_index=end,
                                             padded_org_vocab_start_index=start)  # fmt: skip
        self.weight = param((per, hidden), output_dim=0)


class ParallelLMHead(VocabParallelEmbedding):
    pass


class FusedMoE(torch.nn.Module):
    """DeepSeek-style experts: w13 = [gate; up], quark MXFP4 (bytes + E8M0 scales), optional fused shared expert."""

    def __init__(self, experts, hidden, inter, tp, rank, ep=1, ep_rank=0, shared=0):
        super().__init__()
        self.moe_tp_size, self.moe_tp_rank, self.moe_ep_size, self.moe_ep_rank = tp, rank, ep, ep_rank
        self._num_local_routed = experts // ep
        self._expert_storage_rank = ep_rank
        self.intermediate_size_per_partition = inter // tp
        self.moe_runner_config = SimpleNamespace(gemm1_alpha=None)
        e, i = self._num_local_routed + shared, inter // tp
        u8 = torch.uint8
        self.w13_weight = param((e, 2 * i, hidden // 2), u8)
        self.w13_weight_scale = param((e, 2 * i, hidden // 32), u8)
        self.w2_weight = param((e, hidden, i // 2), u8)
        self.w2_weight_scale = param((e, hidden, i // 32), u8)
        self.w2_weight_bias = param((e, hidden), torch.float32)


def fill(module, prefix="m"):
    holder = torch.nn.Module()
    holder.m = module
    report = fill_report_(holder, SEED)
    return {k: v.clone() for k, v in holder.state_dict().items()}, report


# -- the loaders' narrowing, written like SGLang's (weight_loader / _load_w13 / _load_w2 / vocab shard) --------


def narrow_column(full, sizes, tp, rank, dim=0):
    """MergedColumn: each logical output's shard of the (full) tensor, concatenated."""
    units = full.shape[dim] / sum(sizes)
    parts, start = [], 0
    for s in sizes:
        n, a = int(s / tp * units), int(start * units)
        parts.append(full.narrow(dim, a + rank * n, n))
        start += s
    return torch.cat(parts, dim)


def narrow_qkv(full, d, heads, kv_heads, tp, rank):
    q, kv = heads * d, kv_heads * d
    hq, hk = heads // tp * d, max(1, kv_heads // tp) * d
    kv_rank = rank // max(1, tp // kv_heads)
    return torch.cat([full[rank * hq:(rank + 1) * hq], full[q + kv_rank * hk:q + (kv_rank + 1) * hk],
                      full[q + kv + kv_rank * hk:q + kv + (kv_rank + 1) * hk]])  # fmt: skip


def narrow_w13(full, tp, rank):
    i = full.shape[1] // 2 // tp
    gate, up = full[:, : full.shape[1] // 2], full[:, full.shape[1] // 2 :]
    return torch.cat([gate[:, rank * i : (rank + 1) * i], up[:, rank * i : (rank + 1) * i]], 1)


def test_column_merged_qkv_row_match_tp1():
    for tp in (2, 4):
        t1, _ = fill(MergedColumnParallelLinear([512, 512], 256, 1, 0))
        t1q, _ = fill(QKVParallelLinear(256, 64, 8, 2, 1, 0))
        t1r, _ = fill(RowParallelLinear(256, 512, 1, 0))
        t1c, _ = fill(ColumnParallelLinear(512, 256, 1, 0))
        for rank in range(tp):
            t, rep = fill(MergedColumnParallelLinear([512, 512], 256, tp, rank))
            assert torch.equal(t["m.weight"], narrow_column(t1["m.weight"], [512, 512], tp, rank))
            assert rep["tp_sharded"] == 1 and rep["tp_unmapped"] == []
            t, _ = fill(QKVParallelLinear(256, 64, 8, 2, tp, rank))  # tp 4 > 2 kv heads: replicated kv
            assert torch.equal(t["m.weight"], narrow_qkv(t1q["m.weight"], 64, 8, 2, tp, rank))
            t, _ = fill(RowParallelLinear(256, 512, tp, rank))
            n = 512 // tp
            assert torch.equal(t["m.weight"], t1r["m.weight"][:, rank * n : (rank + 1) * n])
            t, _ = fill(ColumnParallelLinear(512, 256, tp, rank))
            assert torch.equal(t["m.weight"], t1c["m.weight"][rank * 512 // tp : (rank + 1) * 512 // tp])


def test_packed_and_block_units_shard_with_their_rows():
    """fp8 block scales ([N/128, K/128]) and MXFP4 bytes / scales ([N, K/2], [N, K/32]) narrow in their own units."""
    sizes = [1024, 1024]
    full = MergedColumnParallelLinear(sizes, 1024, 1, 0, dtype=torch.uint8, k_div=2)
    full.weight_scale = param((2048, 1024 // 32), torch.uint8, output_dim=0, input_dim=1)
    full.weight_scale_inv = param((2048 // 128, 1024 // 128), torch.float32, output_dim=0, input_dim=1)
    t1, _ = fill(full)
    for rank in range(2):
        m = MergedColumnParallelLinear(sizes, 1024, 2, rank, dtype=torch.uint8, k_div=2)
        m.weight_scale = param((1024, 32), torch.uint8, output_dim=0, input_dim=1)
        m.weight_scale_inv = param((1024 // 128, 8), torch.float32, output_dim=0, input_dim=1)
        t, _ = fill(m)
        for k in ("m.weight", "m.weight_scale", "m.weight_scale_inv"):
            assert torch.equal(t[k], narrow_column(t1[k], sizes, 2, rank)), k
    r1, _ = fill(RowParallelLinear(256, 2048, 1, 0, dtype=torch.uint8, k_div=2))
    r, _ = fill(RowParallelLinear(256, 2048, 2, 1, dtype=torch.uint8, k_div=2))
    assert torch.equal(r["m.weight"], r1["m.weight"][:, 512:])


def test_row_parallel_std_uses_the_unsharded_fan_in():
    t1, _ = fill(RowParallelLinear(512, 4096, 1, 0))
    t8, _ = fill(RowParallelLinear(512, 4096, 8, 3))
    assert abs(t1["m.weight"].float().std().item() - t8["m.weight"].float().std().item()) < 0.1 / 64


def test_vocab_rows_are_global_ids():
    t1, _ = fill(ParallelLMHead(1000, 64, 1, 0))
    for rank in range(2):
        m = ParallelLMHead(1000, 64, 2, rank)
        t, _ = fill(m)
        si = m.shard_indices
        n = si.org_vocab_end_index - si.org_vocab_start_index
        assert torch.equal(t["m.weight"][:n], t1["m.weight"][si.org_vocab_start_index : si.org_vocab_end_index])


@pytest.mark.parametrize("tp,ep", [(2, 1), (1, 2), (4, 1)])
def test_moe_experts_match_tp1(tp, ep):
    t1, _ = fill(FusedMoE(8, 256, 512, 1, 0, shared=1))
    for rank in range(max(tp, ep)):
        m = FusedMoE(8, 256, 512, tp, rank if ep == 1 else 0, ep=ep, ep_rank=rank if ep > 1 else 0, shared=1)
        t, rep = fill(m)
        assert rep["tp_unmapped"] == []
        if ep > 1:  # routed experts [rank*4, rank*4+4) then the shared one (global id 8)
            ids = [*range(rank * 4, rank * 4 + 4), 8]
            for k in t:
                assert torch.equal(t[k], t1[k][ids]), k
            continue
        for k in ("m.w13_weight", "m.w13_weight_scale"):
            assert torch.equal(t[k], narrow_w13(t1[k], tp, rank)), k
        for k in ("m.w2_weight", "m.w2_weight_scale"):
            n = t1[k].shape[-1] // tp
            assert torch.equal(t[k], t1[k][..., rank * n : (rank + 1) * n]), k


class Mxfp4MoEMethod:
    def __init__(self, padded):
        self.intermediate_size_per_partition = padded


def gpt_oss_experts(experts, hidden, inter, tp, rank, align=64):
    """GPT-OSS MXFP4 experts: FusedMoE keeps I / tp, Mxfp4MoEMethod pads the buffers (triton_kernels: to 64)."""
    m = FusedMoE(experts, hidden, inter, tp, rank)
    m.moe_runner_config.gemm1_alpha = 1.702
    padded = -(-(inter // tp) // align) * align
    m.quant_method = Mxfp4MoEMethod(padded)
    u8 = torch.uint8
    m.w13_weight = param((experts, 2 * padded, hidden // 2), u8)
    m.w13_weight_scale = param((experts, 2 * padded, hidden // 32), u8)
    m.w2_weight = param((experts, hidden, padded // 2), u8)
    m.w2_weight_scale = param((experts, hidden, padded // 32), u8)
    return m


@pytest.mark.parametrize("tp", [2, 8])
def test_gpt_oss_experts_match_tp1_as_its_loader_narrows(tp):
    """models/gpt_oss.py: per-rank I = ceil(I / 32 / tp) * 32 (2880 over 8: 7 x 384 + 192), interleaved gate/up
    rows 2*start:2*end, copied into the leading part of the padded buffer; the padding stays zero."""
    inter, per = 2880, -(-2880 // (32 * tp)) * 32
    t1, rep1 = fill(gpt_oss_experts(2, 64, inter, 1, 0, align=256))  # buffers padded 2880 -> 3072
    assert rep1["tp_unmapped"] == [] and t1["m.w13_weight"][:, 2 * inter :].count_nonzero() == 0
    assert t1["m.w2_weight"][..., inter // 2 :].count_nonzero() == 0 and t1["m.w13_weight"].count_nonzero() > 0
    for rank in range(tp):
        start, end = rank * per, min((rank + 1) * per, inter)
        t, rep = fill(gpt_oss_experts(2, 64, inter, tp, rank))
        assert rep["tp_unmapped"] == []
        for k, (dim, per_row) in {"m.w13_weight": (1, 2), "m.w13_weight_scale": (1, 2), "m.w2_weight": (2, 1 / 2),
                                  "m.w2_weight_scale": (2, 1 / 32)}.items():  # fmt: skip
            a, b = int(start * per_row), int(end * per_row)
            want = torch.zeros_like(t[k])
            want.narrow(dim, 0, b - a).copy_(t1[k].narrow(dim, a, b - a))
            assert torch.equal(t[k], want), (k, rank)


def test_unknown_layouts_are_reported_not_guessed():
    m = FusedMoE(8, 256, 512, 2, 1)
    m.moe_runner_config.gemm1_alpha = 1.702  # fused interleaved gate_up without the MXFP4 loader: not known
    _, rep = fill(m)
    assert "m.w13_weight" in rep["tp_unmapped"] and "m.w2_weight" in rep["tp_unmapped"]
    assert global_view(m, "w13_weight", m.w13_weight) is None
    assert global_view(FusedMoE(8, 256, 512, 1, 0), "w13_weight", m.w13_weight).index == {}


def test_plain_fill_without_view_is_the_tp1_fill():
    t1, _ = fill(RowParallelLinear(64, 128, 1, 0))
    w = torch.zeros(64, 128, dtype=torch.bfloat16)
    fill_("m.weight", w, SEED)
    assert torch.equal(w, t1["m.weight"])


# -- the attributes shard.py reads, as SGLang 0.5.17 sets them ---------------------------------------------------

SOURCE_FACTS = {
    "layers/linear.py": [r"class ColumnParallelLinear\(", r"class MergedColumnParallelLinear\(ColumnParallelLinear\)",
                         r"class QKVParallelLinear\(ColumnParallelLinear\)", r"class RowParallelLinear\(",
                         r"self\.tp_rank, self\.tp_size = tp_rank, tp_size", r"self\.output_sizes = output_sizes",
                         r"self\.num_kv_head_replicas = ", r"self\.total_num_kv_heads = ", r"self\.v_head_size = ",
                         r"shard_offset = sum\(self\.output_sizes\[:loaded_shard_id\]\) // self\.tp_size",
                         r"shard_id = self\.tp_rank // self\.num_kv_head_replicas"],
    "layers/parameter.py": [r"def output_dim\(self\)", r"def input_dim\(self\)"],
    "layers/vocab_parallel_embedding.py": [r"class ParallelLMHead\(VocabParallelEmbedding\)",
                                           r"self\.shard_indices = ", r"org_vocab_start_index: int",
                                           r"padded_org_vocab_start_index: int", r"self\.org_vocab_size = "],
    "layers/moe/fused_moe_triton/layer.py": [r"class FusedMoE\(", r"self\.moe_tp_rank = ", r"self\.moe_ep_rank = ",
                                              r"self\.intermediate_size_per_partition = ",
                                              r"self\._num_local_routed = ",
                                              r"self\._expert_storage_rank = ",
                                              r"return expert_id - self\._num_global_routed \+ self\._num_local_routed",
                                              r"gemm1_alpha=gemm1_alpha"],
    "layers/quantization/quark/schemes/quark_w4a4_mxfp4.py": [r"input_dim=1,", r"output_dim=0,"],
    "layers/quantization/mxfp4.py": [r"class Mxfp4MoEMethod\(",
                                     r"self\.intermediate_size_per_partition = intermediate_size_per_partition_after",
                                     r"2 \* intermediate_size_per_partition_after_pad"],
    "models/gpt_oss.py": [r"per_rank_intermediate_size_block = math\.ceil\(",
                          r"moe_tp_rank_start = moe_tp_rank \* per_rank_intermediate_size",
                          r"2 \* moe_tp_rank_start : 2 \* moe_tp_rank_end",
                          r"moe_tp_rank_start // 2 : moe_tp_rank_end // 2",
                          r"moe_tp_rank_start // mxfp4_block : moe_tp_rank_end // mxfp4_block"],
}  # fmt: skip


def test_the_attributes_read_are_sglang_0517s():
    root = sglang_root()
    if root is None:
        pytest.skip("sglang not installed")
    for rel, facts in SOURCE_FACTS.items():
        src = (root / "srt" / rel).read_text()
        for fact in facts:
            assert re.search(fact, src), f"{rel}: /{fact}/"
