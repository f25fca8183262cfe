"""SGLang binding of the MXFP4 GEMM (quark `w_mxfp4_a_mxfp4` linear layers), and what CUDA needs on that path.

Stock SGLang 0.5.17 cannot run a quark MXFP4 DeepSeek-V3 on CUDA:
1. QuarkW4A4MXFP4.apply_weights calls aiter (gemm_afp4wfp4 / dynamic_mxfp4_quant), only imported on ROCm
   -> NameError. `apply_weights` below serves every input form SGLang passes (plain tensor, (x_fp4, x_scale),
   (x, None, y)); the 5-tuple split-cat form (ROCm-only MHA path) falls back.
2. DeepSeek's post_load_weights splits kv_b_proj into w_kc / w_vc for the absorbed MLA bmm; with packed uint8
   weights it yields uint8 w_kc / w_vc and sets w_scale to the E8M0 bytes (torch.bmm then fails). Only gfx950
   re-quantizes them (aiter). `deepseek_post_load_weights` rebuilds them in bf16 from the dequantized weight.
QuarkConfig / scheme selection / create_weights / capability checks (min capability 70) already pass on sm90;
online quantization (`--quantization quark_mxfp4`, an unquantized checkpoint) stays ROCm-only (mxfp_supported()).

The backend (the settings' backends, read once at registration: overlays/environ.py), the weight layout and
the layer's plan (`api.make_plan`) are fixed at load (`layer._speedrun_backend`, `speedrun_w_layout`,
`_speedrun_plan`); a layer that did not go through process_weights gets its plan at its first call. Each distinct
plan's routing (`GemmPlan.route_line`: where large M goes to stock's FP8 block GEMM, or why not) is recorded in the
per-process report as `mxfp4_gemm_routes`; a plan with that route reserves its FP8 scratch when it is made.
"""

from __future__ import annotations

from typing import Any

import torch

from speedrun.overlays import environ, report
from speedrun.overlays.hooks import Unsupported, around, require_aiter
from speedrun.overlays.mxfp4_gemm.config import Layout
from speedrun.overlays.warmup import bucket_ms, max_tokens, warm

OP = "mxfp4_gemm"


def run_backend(backend: str, x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, x_scale: torch.Tensor | None,
                out: torch.Tensor | None, out_dtype: torch.dtype, layer: torch.nn.Module) -> torch.Tensor:  # fmt: skip
    """One GEMM through the selected backend (triton | reference | aiter)."""
    if backend == "reference":
        from speedrun.overlays.mxfp4_gemm.reference import mxfp4_gemm_ref

        y = mxfp4_gemm_ref(x, w, w_scale, a_scale=x_scale, out_dtype=out_dtype)
        return out.copy_(y) if out is not None else y
    if backend == "aiter":
        from speedrun.overlays.mxfp4_gemm.aiter_backend import aiter_gemm

        return aiter_gemm(x, w, w_scale, a_scale=x_scale, out=out, out_dtype=out_dtype, layer=layer)
    from speedrun.overlays.mxfp4_gemm.api import mxfp4_gemm

    plan = layer_plan(layer)
    return mxfp4_gemm(x, w, w_scale, plan, a_scale=x_scale, out=out, out_dtype=out_dtype,
                      fp8=getattr(layer, "_speedrun_fp8", None))  # fmt: skip


def layer_plan(layer: torch.nn.Module) -> Any:
    """The layer's plan (built at load; else now, once): Unsupported where the arch has no config."""
    from speedrun.overlays.mxfp4_gemm.api import make_plan

    w = layer.weight
    n, k = w.shape[0], w.shape[1] * 2
    layout = Layout(getattr(layer, "speedrun_w_layout", Layout.PLAIN))
    plan = getattr(layer, "_speedrun_plan", None)
    if plan is None or (plan.n, plan.k, plan.layout) != (n, k, layout):
        try:
            plan = make_plan(n, k, layout, device=w.device)
        except NotImplementedError as why:  # e.g. an AMD arch without scaled MFMA
            raise Unsupported(str(why)) from why
        layer._speedrun_plan = plan
        note_route(plan)
        if plan.stock:  # before SGLang sizes the KV cache from the memory left after loading
            _stock_fp8_weight(layer, layout)
    return plan


def _stock_fp8_weight(layer: torch.nn.Module, layout: Layout) -> None:
    """The large-M route's FP8 weight at load time: the device's one scratch grown for this linear (converted into
    per call), or with setting mxfp4_gemm_stock_fp8 resident the layer's own copy, converted now."""
    from speedrun.overlays.mxfp4_gemm import stock_fp8

    w = layer.weight
    if environ.settings().mxfp4_gemm_stock_fp8 == "resident":  # a plan rebuilt for a new layout replaces the copy
        layer._speedrun_fp8 = stock_fp8.resident(w, layer.weight_scale, layout, asm=torch.version.hip is None)
        report.record(mxfp4_gemm_resident_fp8_gb=stock_fp8.RESIDENT.gib)
    else:
        stock_fp8.reserve(w.device, w.shape[0], w.shape[1] * 2)


_routes: list[str] = []


def note_route(plan: Any) -> None:
    """Record how this plan routes calls in the per-process report, as `mxfp4_gemm_routes` (each distinct line
    once: the linears of a model share it)."""
    line = plan.route_line()
    if line not in _routes:
        _routes.append(line)
        report.record(mxfp4_gemm_routes=list(_routes))


def _backend(layer: torch.nn.Module) -> str:
    return getattr(layer, "_speedrun_backend", None) or environ.settings().backends[OP]


def _unpack_input(x: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(x, x_scale, y_out) from the forms QuarkW4A4MXFP4.apply_weights accepts."""
    if not isinstance(x, tuple):
        return x, None, None
    if len(x) == 2:
        return x[0], x[1], None
    if len(x) == 3:
        return x[0], x[1], x[2]
    raise Unsupported(f"tuple input of length {len(x)} (fused gemm + split-cat form)")


def _apply_weights(original: Any, self: Any, layer: torch.nn.Module, x: Any, bias: torch.Tensor | None = None) -> Any:
    x, x_scale, y = _unpack_input(x)
    w, w_scale = layer.weight, getattr(layer, "weight_scale", None)
    if w.dtype != torch.uint8 or w_scale is None or w_scale.dtype != torch.uint8:
        raise Unsupported(f"weight {w.dtype} / scale {getattr(w_scale, 'dtype', None)} is not packed MXFP4")
    n, k = w.shape[0], w.shape[1] * 2
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x_scale is not None:
        x2, x_scale = x2.view(torch.uint8), x_scale.reshape(-1, x_scale.shape[-1]).view(torch.uint8)
        if x2.shape[1] * 2 != k or x_scale.shape[1] * 32 != k:
            raise Unsupported(f"pre-quantized input {tuple(x2.shape)} / {tuple(x_scale.shape)} for K={k}")
        out_dtype = self.out_dtype
    else:
        if x2.dtype not in (torch.bfloat16, torch.float16) or x2.shape[1] != k or k % 32:
            raise Unsupported(f"input {x2.dtype} {tuple(x2.shape)} for K={k}")
        out_dtype = x2.dtype if y is not None else self.out_dtype  # stock returns y.to(x.dtype) in that form
    # A caller-provided y (SGLang's zeroed bump buffer, fp32 there) is only an output slot: use it when it fits.
    out = y if y is not None and y.dtype == out_dtype and tuple(y.shape) == (x2.shape[0], n) else None
    layout = getattr(layer, "speedrun_w_layout", Layout.PLAIN)
    backend = _backend(layer)
    if layout != Layout.PLAIN and backend != "triton":  # re-laid out at load for our kernels only
        raise Unsupported(f"{layout} weights need the triton backend, not {backend}")
    result = run_backend(backend, x2, w, w_scale, x_scale, out, out_dtype, layer)
    if bias is not None:
        result = result + bias
    return result.view(*lead, n)


def _process_weights(original: Any, self: Any, layer: torch.nn.Module) -> None:
    backend = layer._speedrun_backend = environ.settings().backends[OP]
    if backend == "aiter":
        require_aiter(OP)  # at load time, not at the first forward
    original(self, layer)
    if backend == "aiter":
        from speedrun.overlays.mxfp4_gemm.aiter_backend import aiter_kernel, preshuffle

        if aiter_kernel() == "a4w4":
            preshuffle(layer)
    # Allocate the split-K arrival counters now, outside any CUDA-graph capture; fix the layout and the plan.
    if layer.weight.is_cuda and backend == "triton":
        from speedrun.overlays.buffers import splitk_counters
        from speedrun.overlays.mxfp4_gemm.api import config_arch, weight_layout

        splitk_counters(layer.weight.device, 0)
        layout = weight_layout(config_arch(layer.weight.device))
        if layout != Layout.PLAIN:
            relayout(layer, layout)
        if layer.weight.dtype == torch.uint8:
            _warm_up(layer, layer_plan(layer))


def _warm_up(layer: torch.nn.Module, plan: Any) -> None:
    """Compile every kernel the plan can launch now (bf16 activations, the served path), once per process and
    distinct plan (overlays.warmup): a call of zeros at both ends of each M bucket."""
    from speedrun.overlays.mxfp4_gemm.api import mxfp4_gemm

    w, dev = layer.weight, layer.weight.device
    if plan.buckets is None:
        return

    def call(m: int) -> None:
        a = torch.zeros(m, plan.k, dtype=torch.bfloat16, device=dev)
        mxfp4_gemm(a, w, layer.weight_scale, plan, fp8=getattr(layer, "_speedrun_fp8", None))

    warm((OP, plan.n, plan.k, plan.layout, dev), OP, bucket_ms(plan.buckets, 1.0, max_tokens()), call)


def relayout(layer: torch.nn.Module, layout: Layout = Layout.SWZ128) -> Layout:
    """Re-lay a packed MXFP4 layer's codes out in place as swz128 (`layout`: its row grouping; api.relayout_weight;
    same shape when K % 128 == 0, else left plain) and record the layout on the layer; returns it. Runs after
    SGLang's post_load_weights (DeepSeek's w_kc / w_vc were built from the plain weights already)."""
    from speedrun.overlays.mxfp4_gemm.api import relayout_weight

    w, s = layer.weight, getattr(layer, "weight_scale", None)
    current = Layout(getattr(layer, "speedrun_w_layout", Layout.PLAIN))
    packed = w.dtype == torch.uint8 and s is not None and s.dtype == torch.uint8
    if current != Layout.PLAIN or not packed or (w.shape[1] * 2) % 128:
        return current
    w_swz, s_pad, layout = relayout_weight(w.data, s.data, layout)
    w.data.copy_(w_swz)
    if s_pad.shape == s.shape:
        s.data.copy_(s_pad)
    else:
        layer.weight_scale = torch.nn.Parameter(s_pad, requires_grad=False)
    layer.speedrun_w_layout = layout
    return layout


def fix_mla_absorbed_weights(model: torch.nn.Module) -> int:
    """bf16 w_kc / w_vc for every MLA attention whose kv_b_proj is packed MXFP4 and was left in uint8."""
    from speedrun.overlays.mx.format import dequant_mxfp4
    from speedrun.overlays.mxfp4_gemm.api import plain_weight

    fixed = 0
    for mod in model.modules():
        kv = getattr(mod, "kv_b_proj", None)
        w, s = getattr(kv, "weight", None), getattr(kv, "weight_scale", None)
        if w is None or s is None or w.dtype != torch.uint8 or s.dtype != torch.uint8:
            continue
        w_kc = getattr(mod, "w_kc", None)
        if getattr(mod, "w_scale_k", None) is not None or (w_kc is not None and w_kc.dtype != torch.uint8):
            continue  # gfx950's own MXFP4 re-quantization, or already usable
        nope, vdim = mod.qk_nope_head_dim, mod.v_head_dim
        w, s = plain_weight(w, s, getattr(kv, "speedrun_w_layout", Layout.PLAIN))
        wf = dequant_mxfp4(w, s, torch.bfloat16)
        kc, vc = wf.unflatten(0, (-1, nope + vdim)).split([nope, vdim], dim=1)
        mod.w_kc = kc.transpose(1, 2).contiguous().transpose(1, 2)  # the layout stock gives bf16 weights
        mod.w_vc = vc.contiguous().transpose(1, 2)
        mod.w_scale = None
        fixed += 1
    return fixed


def _deepseek_post_load_weights(original: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    result = original(self, *args, **kwargs)
    fix_mla_absorbed_weights(self)
    return result


apply_weights = around(OP, _apply_weights)
process_weights = around(OP, _process_weights)
deepseek_post_load_weights = around(OP, _deepseek_post_load_weights)
