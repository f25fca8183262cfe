"""SGLang binding: AROUND hooks on GPT-OSS `Mxfp4MoEMethod` and quark `QuarkW4A4MXFp4MoE`.

process_weights_after_loading: if we serve the layer, re-lay the experts out as `MoeWeights` (GPT-OSS:
de-interleave gate/up rows, fp32 biases; quark: as loaded; then on CUDA the values in mx.layout's swz128 layout,
unless the mxfp4_moe_layout setting is plain) and skip the stock processing (which on CUDA would
dequantize GPT-OSS experts to bf16 or swizzle them for triton_kernels, and cannot run quark at all). If we do
not serve it (`Unsupported`), stock processing runs and `apply` falls back too: the two decisions are tied
by `layer._speedrun_moe`.

The layer's plan (`api.make_plan`: every config bucket resolved for these weights) and the backend are fixed
then too (`layer._speedrun_plan`, `layer._speedrun_backend`): apply reads no environment and no config file.

apply / apply_weights: standard top-k output (also the triton_kernels routing format, converted on the GPU,
and the bypassed format), no EP dispatcher beyond local-id mapping (-1 ids are skipped).
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from typing import Any

import torch

from speedrun.overlays import environ, report
from speedrun.overlays.hooks import Unsupported, around, require_aiter
from speedrun.overlays.mxfp4_moe import stock_fp8
from speedrun.overlays.mxfp4_moe.api import OP, Act, MoePlan, MoeWeights, fused_moe, make_plan, plain, swizzled
from speedrun.overlays.mxfp4_moe.config import CUDA_LAYOUT, Layout
from speedrun.overlays.warmup import bucket_ms, max_tokens, warm

SERVED_RUNNERS = ("auto", "triton", "triton_kernel", "triton_kernels")


def _check_serving(self: Any) -> None:
    backend = environ.settings().backends[OP]
    if backend == "aiter":  # on ROCm, stock SGLang's own aiter path is the aiter dispatch: fused_moe per_1x32
        require_aiter(OP)  # with its e8m0/weight shuffles done once at load (mx/aiter_layouts.py)
        raise Unsupported("backend aiter: stock SGLang's aiter fused_moe (per_1x32) serves this layer")
    if not torch.cuda.is_available():
        raise Unsupported("no GPU")
    from sglang.srt.layers.moe import get_moe_a2a_backend, get_moe_runner_backend

    if not get_moe_a2a_backend().is_none():
        raise Unsupported(f"moe a2a backend {get_moe_a2a_backend()} (we take the standard dispatcher only)")
    runner = str(getattr(get_moe_runner_backend(), "value", get_moe_runner_backend()))
    if runner not in SERVED_RUNNERS:
        raise Unsupported(f"moe runner backend {runner!r} (we serve {SERVED_RUNNERS})")
    cfg = getattr(self, "moe_runner_config", None)
    if cfg is not None and (cfg.no_combine or cfg.apply_router_weight_on_input or not cfg.is_gated):
        raise Unsupported("no_combine / apply_router_weight_on_input / non-gated experts")
    if cfg is not None and cfg.activation != "silu":
        raise Unsupported(f"activation {cfg.activation!r}")
    if cfg is not None and cfg.gemm1_alpha is None and (cfg.gemm1_clamp_limit or cfg.swiglu_limit):
        raise Unsupported("clamped SiLU without alpha (not GPT-OSS / DeepSeek-R1 experts)")


def _set(layer: torch.nn.Module, name: str, value: torch.Tensor) -> torch.Tensor:
    setattr(layer, name, torch.nn.Parameter(value, requires_grad=False))
    return getattr(layer, name)


def weight_layout() -> Layout:
    """The value layout experts are stored in: on CUDA config.CUDA_LAYOUT (mx.layout's swz128, 16-byte fragment
    loads, rows in groups of 64), on HIP plain; the settings' mxfp4_moe_layout overrides."""
    v = environ.settings().mxfp4_moe_layout
    if v is not None:
        return Layout(v)
    return Layout.PLAIN if torch.version.hip is not None else CUDA_LAYOUT


def _finish(layer: torch.nn.Module, w: MoeWeights) -> None:
    """Store the experts in the serving layout (the layer's parameters are replaced, the plain copies freed), with
    their plan and the backend that serves them."""
    layout = weight_layout()
    if layout.swz:
        if w.w13.shape[1] % layout.row_group or w.w2.shape[1] % layout.row_group:  # rows must fill the groups
            report.record(mxfp4_moe_layout_note=f"{layout} needs rows in multiples of {layout.row_group}: swz")
            layout = Layout.SWZ
        w = swizzled(w, layout=layout)
        for name, t in (("w13_weight", w.w13), ("w13_weight_scale", w.w13_scale), ("w2_weight", w.w2),
                        ("w2_weight_scale", w.w2_scale)):  # fmt: skip
            _set(layer, name, t)
    layer._speedrun_plan = plan = make_plan(w)
    layer._speedrun_backend = environ.settings().backends[OP]
    if plan.stock:  # large M goes to stock's FP8 MoE; its experts exist before SGLang sizes the KV cache
        w = _stock_fp8_experts(w)
    layer._speedrun_moe = w
    _warm_up(layer, w, plan)


def _warm_up(layer: torch.nn.Module, w: MoeWeights, plan: MoePlan) -> None:
    """Compile every kernel the plan can launch now, once per process and distinct plan (overlays.warmup): a call
    of zeros at both ends of each bucket's M range, routed round-robin over the experts."""
    topk, e = getattr(layer, "top_k", None), w.num_experts
    if not w.w13.is_cuda or not topk or plan.buckets is None:
        return
    h, dev = getattr(layer, "hidden_size", w.hidden), w.w13.device
    experts = getattr(layer, "num_experts", None)

    def call(m: int) -> None:
        x = torch.zeros(m, h, dtype=torch.bfloat16, device=dev)
        ids = (torch.arange(m * topk, dtype=torch.int32, device=dev) % e).view(m, topk)
        fused_moe(x, w, ids, torch.full((m, topk), 1.0 / topk, device=dev), plan, 1.0, experts)

    key = (OP, w.fmt, w.layout, e, h, w.inter, topk, dev)
    warm(key, OP, bucket_ms(plan.buckets, topk / e, max_tokens()), call)


def _stock_fp8_experts(w: MoeWeights) -> MoeWeights:
    """The large-M route's FP8 experts at load time: one scratch per device sized for the largest layer (converted
    into per call), or with setting mxfp4_moe_stock_fp8 resident this layer's own copy, converted now."""
    if environ.settings().mxfp4_moe_stock_fp8 == "resident":
        w = replace(w, fp8=stock_fp8.resident(w, w.hidden, asm=torch.version.hip is None))
        report.record(mxfp4_moe_resident_fp8_gb=stock_fp8.RESIDENT.gib)
    else:
        stock_fp8.SCRATCH.reserve(w.w13.device, stock_fp8.layer_bytes(w, w.hidden))
    return w


def _deinterleave(t: torch.Tensor, n: int) -> torch.Tensor:
    """[E, 2*N_pad, ...] interleaved (g0, u0, g1, u1, ...) -> [E, 2n, ...] = [gate[:n] ; up[:n]]."""
    return torch.cat((t[:, 0::2][:, :n], t[:, 1::2][:, :n]), dim=1).contiguous()


def _used_inter(layer: torch.nn.Module, padded: int) -> int:
    """The unpadded intermediate size when it keeps whole MXFP4 blocks, else the padded one (zeros add 0)."""
    real = getattr(layer, "intermediate_size_per_partition", padded)
    return real if real <= padded and real % 32 == 0 else padded


def _gptoss_process_weights(original: Any, self: Any, layer: torch.nn.Module) -> None:
    _check_serving(self)
    cfg = self.moe_runner_config
    n = _used_inter(layer, layer.w13_weight.shape[1] // 2)
    interleaved = getattr(cfg, "gate_up_interleaved", True)
    fix = (lambda t: _deinterleave(t, n)) if interleaved else (lambda t: t.contiguous())
    w13 = _set(layer, "w13_weight", fix(layer.w13_weight.data))
    s13 = _set(layer, "w13_weight_scale", fix(layer.w13_weight_scale.data))
    w2 = _set(layer, "w2_weight", layer.w2_weight.data[:, :, : n // 2].contiguous())
    s2 = _set(layer, "w2_weight_scale", layer.w2_weight_scale.data[:, :, : n // 32].contiguous())
    b13 = b2 = None
    if getattr(layer, "w13_weight_bias", None) is not None:
        b13 = _set(layer, "w13_weight_bias", fix(layer.w13_weight_bias.data.float()))
        b2 = _set(layer, "w2_weight_bias", layer.w2_weight_bias.data.float().contiguous())
    act = Act.SWIGLU_OAI if cfg.gemm1_alpha is not None else Act.SILU
    w = MoeWeights(w13, s13, w2, s2, b13, b2, a4=False, act=act, alpha=cfg.gemm1_alpha or 1.702,
                   limit=cfg.gemm1_clamp_limit or 7.0)  # fmt: skip
    _finish(layer, w)
    torch.cuda.empty_cache()


def _quark_process_weights(original: Any, self: Any, layer: torch.nn.Module) -> None:
    _check_serving(self)
    if not getattr(self, "is_checkpoint_mxfp4_serialized", True) or getattr(self, "dequantization_config", None):
        raise Unsupported("online-quantized quark experts (ROCm-only loaders)")
    w13, w2 = layer.w13_weight.data, layer.w2_weight.data
    if w13.dtype != torch.uint8 or w13.shape[1] != 2 * w2.shape[2] * 2:
        raise Unsupported(f"unexpected quark expert shapes w13 {tuple(w13.shape)} w2 {tuple(w2.shape)}")
    w = MoeWeights(
        _set(layer, "w13_weight", w13.contiguous()),
        _set(layer, "w13_weight_scale", layer.w13_weight_scale.data.contiguous()),
        _set(layer, "w2_weight", w2.contiguous()),
        _set(layer, "w2_weight_scale", layer.w2_weight_scale.data.contiguous()),
        a4=True,
        act=Act.SILU,
    )
    _finish(layer, w)
    torch.cuda.empty_cache()


def _triton_kernels_to_standard(topk_output: Any, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TritonKernelTopKOutput (expert-sorted gate scales + combine index) -> (weights, ids) [M, topk], on GPU."""
    routing, gather, _ = topk_output
    k = routing.n_expts_act
    combine = gather.src_indx.long()  # sorted position -> flat slot t*k + j
    ends = torch.cumsum(routing.expt_hist, 0)
    pos = torch.arange(combine.numel(), device=combine.device)
    experts = torch.searchsorted(ends, pos, right=True).to(torch.int32)
    ids = torch.empty(num_tokens * k, dtype=torch.int32, device=combine.device).scatter_(0, combine, experts)
    weights = torch.empty(num_tokens * k, dtype=torch.float32, device=combine.device)
    weights.scatter_(0, combine, routing.gate_scal.float())
    return weights.view(num_tokens, k), ids.view(num_tokens, k)


def _standard_topk(topk_output: Any, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sglang.srt.layers.moe.topk import TopKOutputChecker

    if TopKOutputChecker.format_is_triton_kernels(topk_output):
        return _triton_kernels_to_standard(topk_output, num_tokens)
    if TopKOutputChecker.format_is_bypassed(topk_output):
        topk_output = topk_output.to_standard()
    return topk_output.topk_weights, topk_output.topk_ids


_noted: set[tuple[int, int]] = set()
_routes: list[str] = []


def note_route(plan: MoePlan, topk: int) -> None:
    """Record how this plan routes calls in the per-process report, as `mxfp4_moe_routes` (each distinct line
    once: every DeepSeek layer has the same one)."""
    if (id(plan), topk) in _noted:
        return
    _noted.add((id(plan), topk))
    line = plan.route_line(topk)
    if line not in _routes:
        _routes.append(line)
        report.record(mxfp4_moe_routes=list(_routes))


@functools.cache
def _experts_apply_scaling() -> bool:
    """DeepSeek leaves routed_scaling_factor to the experts on CUDA and with aiter; else the model applies it."""
    if torch.version.hip is None:
        return True
    return os.environ.get("SGLANG_USE_AITER", "0").lower() in ("1", "true", "yes")


def _run(self: Any, layer: torch.nn.Module, dispatch_output: Any) -> Any:
    w: MoeWeights | None = getattr(layer, "_speedrun_moe", None)
    if w is None:
        raise Unsupported("experts not prepared by speedrun (process_weights fell back to stock)")
    from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

    x = dispatch_output.hidden_states
    topk_weights, topk_ids = _standard_topk(dispatch_output.topk_output, x.shape[0])
    cfg = getattr(self, "moe_runner_config", None) or layer.moe_runner_config
    rsf = (cfg.routed_scaling_factor or 1.0) if _experts_apply_scaling() else 1.0
    if layer._speedrun_backend == "reference":
        from speedrun.overlays.mxfp4_moe.reference import moe_reference

        w = plain(w, w.w13.shape[2] * 8, w.inter)  # swz128 -> plain (K of w13 as padded)
        pad = w.w13.shape[2] * 2 - x.shape[1]  # hidden padding of aiter layouts (or of swz128)
        out = moe_reference(torch.nn.functional.pad(x, (0, pad)), w.w13, w.w13_scale, w.w2, w.w2_scale, topk_ids,
                            topk_weights, b13=w.b13, b2=w.b2, a4=w.a4, act=w.act, alpha=w.alpha, limit=w.limit,
                            routed_scaling_factor=rsf)[:, : x.shape[1]]  # fmt: skip
    else:
        plan: MoePlan = layer._speedrun_plan
        note_route(plan, topk_ids.shape[1])
        if plan.launch(*topk_ids.shape).stock_fp8:
            report.called(f"{OP}/stock_fp8")  # how many calls the large-M route served
        out = fused_moe(x, w, topk_ids, topk_weights, plan, rsf, getattr(layer, "num_experts", None))
    return StandardCombineInput(hidden_states=out)


def _gptoss_apply(original: Any, self: Any, layer: torch.nn.Module, dispatch_output: Any, *args: Any) -> Any:
    return _run(self, layer, dispatch_output)


def _quark_apply(original: Any, self: Any, layer: torch.nn.Module, dispatch_output: Any, *args: Any) -> Any:
    return _run(self, layer, dispatch_output)


gptoss_process_weights = around(OP, _gptoss_process_weights)
gptoss_apply = around(OP, _gptoss_apply)
quark_process_weights = around(OP, _quark_process_weights)
quark_apply = around(OP, _quark_apply)
