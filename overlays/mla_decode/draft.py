"""Speculative decoding with `speedrun_mla`: the EAGLE/MTP draft model runs SGLang's triton MLA backend.

SGLang 0.5.17 picks the draft backend from dict literals inside `DraftBackendFactory`; patch 0001 of our
series (`speedrun patch apply`) adds `DRAFT_BACKEND_ALIASES`, which this fills. Without the patch only
speculative runs are affected, and the report says so (non-speculative serving needs nothing here)."""

from __future__ import annotations

from speedrun.overlays import report

DRAFT_BACKEND = "triton"


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
    aliases["speedrun_mla"] = DRAFT_BACKEND
