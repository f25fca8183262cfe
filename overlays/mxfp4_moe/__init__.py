"""mxfp4_moe overlay: MXFP4 expert MoE for GPT-OSS (w4a16, SwiGLU-OAI, biases) and quark DeepSeek-R1 (w4a4,
SiLU-gated) on our Triton kernels.

sort.py (GPU routing sort, no host sync) -> gemm.py (GEMM1: gather + gate/up + activation [+ MXFP4 requant];
GEMM2: down + bias + routing weight + fp32 scatter-add) driven by moe.py (configs by tokens per expert);
hook.py binds it to SGLang; reference.py is the torch truth; baselines.py/bench.py compare against SGLang's paths.
"""
