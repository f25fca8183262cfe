"""GEMM shapes (M, N, K) the MXFP4 linear layers see: the brief's list and DeepSeek-R1 (TP=1) linears."""

from __future__ import annotations

BRIEF = [(4, 2880, 512), (16, 2112, 7168), (32, 4096, 512), (32, 2880, 512), (64, 7168, 2048), (256, 3072, 1536)]

# DeepSeek-R1 / V3 at TP=1: (N, K) of each quark MXFP4 linear (hidden 7168, q_lora 1536, kv_lora 512, 128 heads).
DEEPSEEK_NK = {
    "fused_qkv_a": (2112, 7168),  # q_a (1536) + kv_a_with_mqa (576)
    "q_b": (24576, 1536),  # 128 heads x 192
    "kv_b": (32768, 512),  # 128 heads x (128 nope + 128 v); prefill (MHA) path only
    "o_proj": (7168, 16384),
    "shared_gate_up": (4096, 7168),  # 2 x moe_intermediate 2048
    "shared_down": (7168, 2048),
    "dense_gate_up": (36864, 7168),  # first 3 layers, 2 x 18432
    "dense_down": (7168, 18432),
}

PREFILL_M = (4096, 16384)
PREFILL_NK = [DEEPSEEK_NK["fused_qkv_a"], DEEPSEEK_NK["q_b"], DEEPSEEK_NK["o_proj"]]
