"""`speedrun_mla`: SGLang's TritonAttnBackend with our MLA decode kernel in place of its decode callable.

TritonAttnBackend calls `self.decode_attention_fwd(q, k_buffer, v_buffer, o, kv_indptr, kv_indices,
attn_logits, attn_lse, num_kv_splits, max_kv_splits, sm_scale, k_scale, v_scale, ...)` from forward_decode,
eager and under CUDA graphs, with its own metadata. Swapping that one callable keeps stock prefill and
graph metadata; our kernel reuses attn_logits/attn_lse as its split workspace when they are
large enough (they are sized for the graph's max batch), else a buffer sized once in init_cuda_graph_state.
An fp8 cache's decode-step KV write is ours too (`forward_decode`: one launch a layer where stock takes three;
the bytes are the same).
Imports sglang at module import: only `sglang_hook.create_backend` imports this module, inside SGLang.
The plan (config, knobs, split width) is built once per (q dtype, KV dtype, page size); a decode step only
looks it up and launches.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

from speedrun.overlays import environ, report
from speedrun.overlays.hooks import Unsupported, around, require_aiter
from speedrun.overlays.mla_decode import api
from speedrun.overlays.mla_decode.api import Compute, MlaDecodePlan
from speedrun.overlays.mla_decode.kernels import D_LATENT, D_QK


class SpeedrunMLABackend(TritonAttnBackend):
    def __init__(self, model_runner: Any, **kwargs: Any) -> None:
        super().__init__(model_runner, **kwargs)
        self.impl = environ.settings().backends["mla_decode"]
        if self.impl == "aiter":
            require_aiter("mla_decode")
        self.arch = api.current_arch()
        # fp8 caches: a8w8 | a16 from the recipe (settings mla_decode_compute), else the bucket's fp8_compute.
        # A request that cannot run (a8w8 on a 16-bit cache, or with aiter) stops the server here, never a16.
        self.compute_req = environ.settings().mla_decode_compute
        if self.compute_req == Compute.A8W8 and self.impl == "aiter":
            raise RuntimeError("mla_decode compute a8w8 runs on the triton or reference backend, not aiter")
        self.plans: dict[tuple, MlaDecodePlan] = {}
        kv_dtype = getattr(model_runner, "kv_cache_dtype", None)
        q_dtype = getattr(model_runner, "dtype", None)
        q_dtype = q_dtype if q_dtype in api.Q_DTYPES else torch.bfloat16
        # The model's own dtypes: an impossible compute request fails here, at load.
        self.init_plan = self._plan(q_dtype, kv_dtype if kv_dtype in api.KV_DTYPES else torch.bfloat16, 1)
        self.compute = self.init_plan.compute if kv_dtype is not None else None
        # Which partial kernel serves the model's cache: the per-process report (and its routes column) says it.
        plan = self.init_plan
        kernel = self.impl if self.impl != "triton" else api.engine(plan.cfg, plan.kv_dtype).value
        route = f"MLA decode: {kernel} kernel, {self.compute or 'a16'} on {kv_dtype} KV"
        why = _fused_store_refusal(self)
        self.fused_store = why is None
        store = "KV store: ours, one launch a layer" if why is None else f"KV store: stock ({why})"
        report.record(mla_decode_compute=self.compute, mla_decode_kv_cache_dtype=str(kv_dtype),
                      mla_decode_kernel=kernel, mla_decode_routes=[route, store])  # fmt: skip
        self.programs = self.init_plan.programs  # the split width: one for every dtype and page size of the model
        self.own_ws: tuple[torch.Tensor, torch.Tensor] | None = None
        self.aiter_bufs: dict[str, torch.Tensor] = {}
        stock = self.decode_attention_fwd
        self.decode_attention_fwd = torch.compiler.disable(functools.partial(around("mla_decode", self.decode), stock))

    def _plan(self, q_dtype: torch.dtype, kv_dtype: torch.dtype, page_size: int) -> MlaDecodePlan:
        """One plan per (q dtype, KV dtype, page size), built on first use (config, knobs, split width)."""
        key = (q_dtype, kv_dtype, page_size)
        if key not in self.plans:
            self.plans[key] = api.make_plan(self.num_head, q_dtype, kv_dtype, device=self.device,
                                            page_size=page_size, arch=self.arch, compute=self.compute_req,
                                            programs=getattr(self, "programs", None))  # fmt: skip
        return self.plans[key]

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int, *args: Any, **kwargs: Any) -> None:
        super().init_cuda_graph_state(max_bs, max_num_tokens, *args, **kwargs)
        # Size our workspace now (outside capture) when SGLang's split buffers cannot hold it.
        if not self._fits(self.cuda_graph_attn_logits, self.cuda_graph_attn_lse, max_num_tokens):
            self.own_ws = api.alloc_workspace(max_num_tokens, self.num_head, self.programs, self.device)
        if self.impl == "aiter":
            self._aiter_buffers(max_num_tokens)

    def init_forward_metadata_out_graph(self, forward_batch: Any, in_capture: bool = False) -> None:
        """SGLang's replay prep (DecodeCudaGraphRunner calls it before each replay): counted, so the process
        report shows our kernel serving replays too, not only the captures that went through `decode`."""
        super().init_forward_metadata_out_graph(forward_batch, in_capture=in_capture)
        if not in_capture and getattr(self, "graphs_run_ours", False) and forward_batch.forward_mode.is_decode():
            report.called("mla_decode/graph_replay")

    def forward_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, forward_batch: Any,
                       save_kv_cache: bool = True, **kwargs: Any) -> torch.Tensor:  # fmt: skip
        """Stock forward_decode, with the step's latent rows stored into an fp8 cache by our one-launch store."""
        if save_kv_cache and self.fused_store and k is not None and k.shape[-1] == D_QK and k.stride(-1) == 1:
            cache = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
            api.store_kv(k, forward_batch.out_cache_loc, cache, layer.k_scale)
            report.called("mla_decode/kv_store")  # eager calls and graph captures (replays run it uncounted)
            save_kv_cache = False
        return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)

    def _fits(self, logits: torch.Tensor | None, lse: torch.Tensor | None, bs: int) -> bool:
        return self.init_plan.fits(logits, lse, bs)  # the workspace depends on heads and the split width only

    def _workspace(self, bs: int, logits: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._fits(logits, lse, bs):
            return logits.view(-1), lse.view(-1)
        own = self.own_ws
        if own is None or not self.init_plan.fits(*own, bs):
            if torch.cuda.is_current_stream_capturing():
                raise Unsupported(f"workspace for bs={bs} was not sized before CUDA-graph capture")
            own = self.own_ws = api.alloc_workspace(bs, self.num_head, self.programs, self.device)
        return own

    def decode(self, original: Any, q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
               o: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor, attn_logits: torch.Tensor,
               attn_lse: torch.Tensor, num_kv_splits: torch.Tensor, max_kv_splits: int, sm_scale: float,
               k_scale: float, v_scale: float, logit_cap: float = 0.0, sinks: Any = None,
               xai_temperature_len: int = -1, has_mla: bool = False, use_pdl: bool = False, page_size: int = 1,
               score_mod: Any = None, aux_tensors: Any = None) -> torch.Tensor:  # fmt: skip
        """Same signature as SGLang's decode_attention_fwd (after `original`); Unsupported -> stock kernel."""
        if not has_mla:
            raise Unsupported("not the absorbed-MLA decode call (MHA model or DCP path)")
        if logit_cap and logit_cap > 0:
            raise Unsupported("logit cap")
        if sinks is not None or score_mod is not None or (xai_temperature_len or -1) > 0:
            raise Unsupported("attention sinks / score_mod / xai temperature")
        if v_buffer.data_ptr() != k_buffer.data_ptr() or v_buffer.shape[-1] != D_LATENT:
            raise Unsupported("V is not the first 512 dims of the latent KV buffer")
        if q.dtype not in api.Q_DTYPES or k_buffer.dtype not in api.KV_DTYPES:
            raise Unsupported(f"dtypes q={q.dtype} kv={k_buffer.dtype} not served")
        plan = self._plan(q.dtype, k_buffer.dtype, page_size)
        report.called(f"mla_decode/compute={plan.compute}")
        if self.impl == "triton":  # the call checks its inputs against the plan, once
            ws = self._workspace(q.shape[0], attn_logits, attn_lse)
            api.mla_decode(q, k_buffer, o, kv_indptr, kv_indices, plan, sm_scale=sm_scale, k_scale=k_scale,
                           v_scale=v_scale, workspace=ws)  # fmt: skip
            if torch.cuda.is_current_stream_capturing():
                self.graphs_run_ours = True  # captured graphs replay our kernel: count their replays
            return o
        api.check_inputs(q, k_buffer, o, plan)
        if self.impl == "reference":
            pv = plan.cfg.a8w8.pv if plan.compute == Compute.A8W8 else None
            return _reference(q, k_buffer, o, kv_indptr, kv_indices, sm_scale, k_scale, v_scale, page_size, pv)
        return self._aiter(q, k_buffer, o, kv_indptr, kv_indices, sm_scale, k_scale)

    # ------------------------------------------------------------------ ROCm: aiter (UNEXECUTED here)
    def _aiter_buffers(self, bs: int) -> dict[str, torch.Tensor]:
        if self.aiter_bufs.get("qo_indptr") is None or self.aiter_bufs["qo_indptr"].numel() < bs + 1:
            self.aiter_bufs = {
                "qo_indptr": torch.arange(bs + 1, dtype=torch.int32, device=self.device),
                "last_page_len": torch.ones(bs, dtype=torch.int32, device=self.device),
            }
        return self.aiter_bufs

    def _aiter(self, q, kv, o, kv_indptr, kv_indices, sm_scale, k_scale):
        """UNEXECUTED (no ROCm here): aiter's MLA decode as SGLang's aiter backend calls it, bf16 KV only."""
        from aiter.mla import mla_decode_fwd

        if kv.dtype != torch.bfloat16 or k_scale != 1.0:
            raise Unsupported("aiter dispatch is wired for bf16 KV only")
        bs = q.shape[0]
        bufs = self._aiter_buffers(bs)
        mla_decode_fwd(q, kv.view(-1, 1, 1, kv.shape[-1]), o, qo_indptr=bufs["qo_indptr"][: bs + 1],
                       kv_indptr=kv_indptr, kv_indices=kv_indices.to(torch.int32),
                       kv_last_page_lens=bufs["last_page_len"][:bs], max_seqlen_q=1, sm_scale=sm_scale,
                       logit_cap=0.0)  # fmt: skip
        return o


def _fused_store_refusal(backend: SpeedrunMLABackend) -> str | None:
    """Why the decode step's KV store stays stock's (None: ours serves it). Ours writes what SGLang's
    MLATokenToKVPool.set_kv_buffer writes for an fp8 cache (rows at forward_batch.out_cache_loc), so it serves
    exactly that pool class, without decode context parallelism."""
    from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool

    pool = backend.token_to_kv_pool
    if environ.settings().mla_decode_kv_store == "stock":
        return "setting mla_decode_kv_store stock"
    if not backend.use_mla or type(pool) is not MLATokenToKVPool:
        return f"pool {type(pool).__name__} is not SGLang's MLATokenToKVPool"
    if pool.dtype not in api.FP8_KV_DTYPES:
        return f"{pool.dtype} cache: stock's store is one launch already"
    if pool.dtype not in api.STORE_DTYPES:
        return f"{pool.dtype} cache: the fused store writes float8_e4m3fn only"
    if getattr(backend, "dcp_size", 1) != 1:
        return "decode context parallelism"
    return None


def _reference(q, kv, o, kv_indptr, kv_indices, sm_scale, k_scale, v_scale, page_size, a8w8_pv=None):
    """The float32 torch reference (host loop: eager only, not CUDA-graph safe); a8w8_pv "fp8" | "f16": the
    a8w8 kernel's semantics with that PV operand type."""
    from speedrun.overlays.mla_decode.reference import mla_decode_a8w8_reference, mla_decode_reference

    if torch.cuda.is_current_stream_capturing():
        raise Unsupported("reference backend cannot run under CUDA-graph capture (use --disable-cuda-graph)")
    args = (q, kv, kv_indptr, kv_indices, sm_scale, k_scale, v_scale, page_size)
    ref = mla_decode_a8w8_reference(*args, pv=a8w8_pv) if a8w8_pv else mla_decode_reference(*args)
    return o.copy_(ref.to(o.dtype))
