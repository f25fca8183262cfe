"""SGLang binding of the MLA decode overlay: registers the `speedrun_mla` attention backend.

`register_backend()` (TABLE row, kind "registry", every process) adds the backend factory to
ATTENTION_BACKENDS and the name to the CLI choices, so `--attention-backend speedrun_mla` and
`--decode-attention-backend speedrun_mla` parse and build. The factory (scheduler processes) also registers
the DeepSeek forward-method handler and builds `backend.SpeedrunMLABackend` (stock TritonAttnBackend with our
decode call). Nothing here imports CUDA code until a backend is built.

`alias_draft_backend()` (TABLE row, speculative decoding): the EAGLE/MTP draft model runs SGLang's triton MLA
backend. SGLang 0.5.17 picks the draft backend from dict literals inside `DraftBackendFactory`; patch 0001 of our
series (`speedrun patch apply`) adds `DRAFT_BACKEND_ALIASES`, which this fills. Without the patch only
speculative runs are affected, and the report says so (non-speculative serving needs nothing here).
"""

from __future__ import annotations

from typing import Any

from speedrun.overlays import report

NAME = "speedrun_mla"
DRAFT_BACKEND = "triton"
# The SGLang attributes this binding relies on (checked against SGLang's source by the CPU tests).
SGLANG_API = {
    "sglang/srt/layers/attention/attention_registry.py": ["ATTENTION_BACKENDS", "register_attention_backend"],
    "sglang/srt/server_args.py": ["ATTENTION_BACKEND_CHOICES", "add_attention_backend_choices"],
    "sglang/srt/models/deepseek_common/attention_backend_handler.py": [
        "AttentionBackendRegistry",
        "handle_attention_triton",
    ],
    "sglang/srt/layers/attention/triton_backend.py": [
        "TritonAttnBackend",
        "decode_attention_fwd",
        "init_cuda_graph_state",
        "init_forward_metadata_out_graph",
        "cuda_graph_attn_logits",
        "cuda_graph_attn_lse",
        "device_core_count",
        "num_head",
    ],
}


def register_backend() -> None:
    """Add `speedrun_mla` to SGLang's attention backend registry and CLI choices (idempotent)."""
    from sglang.srt import server_args
    from sglang.srt.layers.attention import attention_registry

    attention_registry.register_attention_backend(NAME)(create_backend)
    if NAME not in server_args.ATTENTION_BACKEND_CHOICES:
        server_args.add_attention_backend_choices([NAME])


def create_backend(runner: Any) -> Any:
    """ATTENTION_BACKENDS factory: our backend on MLA models, stock Triton (reported) otherwise."""
    if not getattr(runner, "use_mla_backend", False):
        from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

        report.fallback("mla_decode", "mla_decode/create_backend", "not an MLA model: stock triton backend")
        return TritonAttnBackend(runner)
    register_deepseek_handler()
    from speedrun.overlays.mla_decode.backend import SpeedrunMLABackend

    return SpeedrunMLABackend(runner)


def register_deepseek_handler() -> None:
    """DeepSeek picks its forward method per backend name; ours must behave exactly like `triton`."""
    from sglang.srt.models.deepseek_common.attention_backend_handler import AttentionBackendRegistry

    AttentionBackendRegistry.register(NAME, deepseek_handler)


def deepseek_handler(attn: Any, forward_batch: Any) -> Any:
    """Same method as for `triton`. The layer's backend name is also set to `triton`, because DeepSeek's
    MLA code branches on it: with SGLANG_USE_AITER=1 on gfx95 it skips RoPE for any name but `triton`
    (expecting aiter's fused rope kernel), which would silently corrupt our decode on MI355X."""
    from sglang.srt.models.deepseek_common.attention_backend_handler import handle_attention_triton

    attn.current_attention_backend = "triton"
    return handle_attention_triton(attn, forward_batch)


def alias_draft_backend() -> None:
    from sglang.srt.speculative import draft_utils

    aliases = getattr(draft_utils, "DRAFT_BACKEND_ALIASES", None)
    if aliases is None:
        report.fallback(
            "mla_decode",
            "mla_decode/draft_alias",
            "patch 0001 not applied: EAGLE/MTP drafts cannot be built with speedrun_mla "
            "(run `speedrun patch apply`, or pass --speculative-draft-attention-backend)",
        )
        return
    aliases[NAME] = DRAFT_BACKEND
