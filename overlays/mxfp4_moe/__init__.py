"""mxfp4_moe overlay: MXFP4 expert MoE for GPT-OSS (w4a16, SwiGLU-OAI, biases) and quark DeepSeek-R1 (w4a4,
SiLU-gated) on our Triton kernels.

api.py (a plan per layer: config buckets by tokens per expert; one call) drives sort.py (GPU routing sort, no host
sync) and kernels.py (every Triton kernel: GEMM1: gather + gate/up + activation [+ MXFP4 requant]; GEMM2: down +
bias + routing weight; combine; the routing sort's phases); config.py types configs/; sglang_hook.py binds it to
SGLang; reference.py is the torch truth. stock_fp8.py: the large-M route (quark w4a4 on CUDA, buckets with route
stock_fp8): experts converted to FP8 128x128 blocks per call, then stock SGLang's FP8 block fused MoE. The
benchmark against SGLang's paths and the AOT compile specs live in eval/kernels/mxfp4_moe_*.py.
"""
