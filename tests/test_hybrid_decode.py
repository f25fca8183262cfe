"""Overlays replace decode only: the overlay side serves `--prefill-attention-backend <stock best>
--decode-attention-backend speedrun_mla`. What that relies on in SGLang 0.5.17's source, that our decode kernel
serves FlashMLA's page size (64) with FP8 KV, and how a lock wires the stock prefill backend into the overlay side."""

from __future__ import annotations

import ast
import os

import pytest
import torch

from speedrun.eval import lock as locks
from speedrun.launch.command import build
from speedrun.recipe import Side, load_recipe
from speedrun.sglang_source import sglang_root

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SRT = (sglang_root() / "srt") if sglang_root() else None
needs_sglang = pytest.mark.skipif(SRT is None, reason="SGLang 0.5.17's source is not installed")


def function_source(rel: str, name: str) -> str:
    """The source of function/method `name` (first match) in sglang/srt/`rel`."""
    text = (SRT / rel).read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node) or ""
    raise AssertionError(f"{name} not in {rel}")


@needs_sglang
def test_sglang_builds_a_plugin_decode_backend_under_the_hybrid_path():
    build_src = function_source("model_executor/model_runner_components/attention_backend_setup.py",
                                "_build_resolved_backend")  # fmt: skip
    assert "resolved.decode != resolved.prefill" in build_src and "HybridAttnBackend(" in build_src
    by_name = function_source("model_executor/model_runner_components/attention_backend_setup.py",
                              "_build_full_attention_backend_from_str")  # fmt: skip
    assert "ATTENTION_BACKENDS[backend_str](model_runner)" in by_name  # our registry entry builds the decode side
    select = function_source("layers/attention/hybrid_attn_backend.py", "_select_backend")
    assert "is_decode_or_idle()" in select and "return self.decode_backend" in select
    graphs = function_source("layers/attention/hybrid_attn_backend.py", "init_cuda_graph_state")
    assert "self.decode_backend.init_cuda_graph_state" in graphs  # decode graphs capture our backend
    # DeepSeek picks the forward method by the per-mode backend name: ours (registered) for decode, stock's for prefill
    dispatch = function_source("models/deepseek_v2.py", "dispatch_attn_forward_method")
    assert "decode_backend_str" in dispatch and "AttentionBackendRegistry.get_handler(attention_backend)" in dispatch


@needs_sglang
def test_flashmla_page_size_is_only_forced_for_the_decode_or_main_backend():
    """SGLang snaps page_size to 64 only when attention_backend or decode_attention_backend is flashmla; with
    flashmla as prefill only, the page size must be given, so the overlay side keeps attention_backend=flashmla
    and page_size=64 from the lock (and TritonAttnBackend hands that page size to our decode call)."""
    snap = function_source("arg_groups/overrides.py", "_mla_backend_page_constraints")
    tests = [ast.unparse(n.test) for n in ast.walk(ast.parse(snap)) if isinstance(n, ast.If)]
    (cond,) = [t for t in tests if "'flashmla'" in t]
    assert "view.decode_attention_backend == 'flashmla'" in cond and "prefill_attention_backend" not in cond
    assert "page_size=self.page_size" in function_source("layers/attention/triton_backend.py", "forward_decode")


def lock_with(best: dict, recipe) -> locks.BaselineLock:
    cand = locks.CandidateResult(label="best", stage="attention", status="ok", server=best, output_throughput=1.0)
    return locks.BaselineLock(recipe=recipe.name, fingerprint=locks.fingerprint(recipe, None), arch="sm90",
                              created="now", probe={}, best=cand, candidates=[cand])  # fmt: skip


def flags(argv: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(argv, argv[1:], strict=False) if a.startswith("--")}


@pytest.mark.parametrize("name", ["synth-deepseek-mxfp4-l30-h100", "synth-deepseek-mxfp4-l30-fp8kv-h100"])
def test_lock_keeps_the_stock_prefill_backend_on_the_overlay_side(name):
    r = load_recipe(name)
    applied = locks.apply(r, lock_with({"attention_backend": "flashmla", "page_size": 64}, r))
    over = flags(build(applied, side=Side.OVERLAY, port=1).argv)
    base = flags(build(applied, side=Side.BASELINE, port=1).argv)
    assert (base["--attention-backend"], base["--page-size"]) == ("flashmla", "64")
    assert "--decode-attention-backend" not in base
    assert over["--attention-backend"] == over["--prefill-attention-backend"] == "flashmla"
    assert (over["--decode-attention-backend"], over["--page-size"]) == ("speedrun_mla", "64")
    fa3 = locks.apply(r, lock_with({"attention_backend": "fa3"}, r))  # a best without a page size of its own
    over = flags(build(fa3, side=Side.OVERLAY, port=1).argv)
    assert over["--prefill-attention-backend"] == "fa3" and over["--decode-attention-backend"] == "speedrun_mla"


def test_lock_leaves_recipes_without_our_decode_alone():
    r = load_recipe("synth-gpt-oss-h100")  # MoE overlay only
    applied = locks.apply(r, lock_with({"attention_backend": "flashinfer"}, r))
    assert applied.overlays.server == r.overlays.server and applied.server.attention_backend == "flashinfer"


def test_speedrun_mla_serves_flashmla_page_size_with_fp8_kv():
    """Page size 64 and FP8 e4m3 KV (the FlashMLA baseline's settings) with SGLang's token-slot kv_indices, on the
    3-D pool TritonAttnBackend passes and on a 4-D paged view: same numbers as the torch reference."""
    from speedrun.overlays.mla_decode import api
    from speedrun.overlays.mla_decode.reference import mla_decode_reference
    from speedrun.overlays.mla_decode.test_mla_decode import DEV, decode, make_batch

    if DEV == "cpu":
        from speedrun.overlays import interpreter

        interpreter.patch()
    b = make_batch(16, [130, 0, 65, 1], torch.float8_e4m3fn, 64, seed=3)
    assert b["kv"].dim() == 3  # [slots, 1, 576]: SGLang's MLA pool, page size only in the addressing
    for kv in (b["kv"], b["kv"].view(-1, 64, 1, 576)):
        o = torch.full((4, 16, 512), float("nan"), dtype=torch.float32, device=DEV)
        args = (b["q"], kv, o, b["kv_indptr"], b["kv_indices"], 0.09)
        # a16: the addressing under test, at the reference's precision (a8w8 has its own tests and reference)
        decode(*args, k_scale=1.5, v_scale=0.75, page_size=64, config=api.config_for(16, "sm90"), programs=4,
               arch="cpu", compute="a16")  # fmt: skip
        ref = mla_decode_reference(b["q"], kv, b["kv_indptr"], b["kv_indices"], 0.09, 1.5, 0.75, 64)
        assert torch.isfinite(o).all() and (o[1] == 0).all()
        assert (o - ref).abs().max().item() <= 4e-3 * max(1.0, ref.abs().max().item())
