"""CPU tests of the a8w8 MLA decode path (fp8 KV, q quantized to fp8, fp8 MMAs): the kernel under the Triton
interpreter against the same-semantics torch reference, its quantization pieces bit for bit, the accuracy of the
per-row q scale against SGLang's per-tensor one, the compute knobs, and the recipe -> env -> backend option.
The interpreter runs fp8 tl.dot through f16 (exact for e4m3 operands); the sm90/gfx950 fp8 MMA instructions
themselves are checked by the AOT compile (test_mla_decode.py) and on the GPU (test_mla_decode_gpu.py)."""

from __future__ import annotations

import os
import re

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton
import triton.language as tl

from speedrun.overlays import environ
from speedrun.overlays.mla_decode import api, kernels
from speedrun.overlays.mla_decode.config import Compute, MlaBucket
from speedrun.overlays.mla_decode.reference import (
    a8w8_p_rounding_bound,
    mla_decode_a8w8_reference,
    mla_decode_reference,
    quantize_q,
)
from speedrun.overlays.mla_decode.test_mla_decode import DEV, decode, make_batch

FP8 = torch.float8_e4m3fn


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    if DEV == "cpu":
        from speedrun.overlays import interpreter

        interpreter.patch()


def a8w8_config(mma_m: str, pv: str, **over) -> MlaBucket:
    cfg = api.config_for(16, "sm90").replace(min_chunk=16, **over)
    a8w8 = cfg.a8w8.replace(mma_m=mma_m, pv=pv, BLOCK_N=64 if mma_m == "tokens" else 32, engine="triton")
    return cfg.replace(a8w8=a8w8)  # the Triton a8w8 kernel (the interpreter cannot run the Gluon one)


CASES = {
    # name: mma_m, pv, heads, lens (mixed, with empty sequences), page size, programs, config override
    "tokens-fp8-ps1-split": ("tokens", "fp8", 16, [70, 0, 5, 130], 1, 4, {}),
    "tokens-f16-ps16-split": ("tokens", "f16", 16, [200, 3, 0], 16, 3, {}),
    "heads-fp8-ps16-split": ("heads", "fp8", 16, [70, 0, 5, 130], 16, 6, {}),
    "heads-f16-ps1-one-program": ("heads", "f16", 16, [9, 40], 1, 1, {}),
    "tokens-fp8-8heads-padded": ("tokens", "fp8", 8, [33, 17], 1, 2, {}),
    "heads-fp8-32heads-2groups": ("heads", "fp8", 32, [50, 0, 20], 1, 3, {"BLOCK_H": 16}),
    "tokens-f16-ps16-empty": ("tokens", "f16", 16, [130, 0, 5, 64], 16, 6, {}),
    "heads-fp8-snap-uniform": ("heads", "fp8", 16, [80, 80, 80, 80], 1, 4, {"snap": True}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a8w8_kernel_matches_its_reference(name: str) -> None:
    """Same q codes (power-of-two row scale), integer running max: the kernel's P codes are the reference's
    whatever the tiling and split, so the two agree to fp32 rounding, far below the fp8 error."""
    mma_m, pv, heads, lens, ps, programs, over = CASES[name]
    b = make_batch(heads, lens, FP8, ps, seed=7)
    kv = b["kv"].view(-1, ps, 1, 576) if ps > 1 else b["kv"]
    o = torch.full((len(lens), heads, 512), float("nan"), dtype=torch.float32, device=DEV)
    args = (b["q"], kv, o, b["kv_indptr"], b["kv_indices"], 0.09)
    cfg = a8w8_config(mma_m, pv, **over)
    decode(*args, 1.5, 0.75, page_size=ps, config=cfg, programs=programs, arch="cpu", compute="a8w8")
    ref = mla_decode_a8w8_reference(b["q"], kv, b["kv_indptr"], b["kv_indices"], 0.09, 1.5, 0.75, ps, pv=pv)
    exact = mla_decode_reference(b["q"], kv, b["kv_indptr"], b["kv_indices"], 0.09, 1.5, 0.75, ps)
    assert torch.isfinite(o).all()
    assert (o - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
    assert (o - exact).abs().max().item() > 1e-3  # it really is fp8 (the bf16-q reference is visibly different)
    assert (o - exact).abs().max().item() <= 0.1 * max(1.0, exact.abs().max().item())
    if 0 in lens:
        assert (o[lens.index(0)] == 0).all()


def test_fp8_p_rounding_bound_covers_score_rounding_and_not_a_lost_token() -> None:
    """The GPU's QK sum is not the reference's (order; sm90's fp8 wgmma keeps ~14 bits of its running sum), so
    a P element near an e4m3 rounding midpoint can round the other way there: with fp8 P that moves whole output
    rows past rtol = atol = 1e-2 (the first H100 run: 10 of 32768 elements at bs 4 kv 1k), with f16 P it does
    not. Modelled here by scaling the scores by 1 + 2^-14: the fp8-P outputs must stay within 1e-2 plus
    a8w8_p_rounding_bound (one e4m3 ulp of the two heaviest contributions), the f16-P ones within 1e-2; and a
    token read from the wrong slot must still fail that bound."""
    b = make_batch(16, [1024] * 4 + [300, 5], FP8, 1, seed=11)
    args = (b["q"], b["kv"], b["kv_indptr"], b["kv_indices"])
    sm = 192**-0.5
    out = {}
    for pv in ("f16", "fp8"):
        out[pv] = (mla_decode_a8w8_reference(*args, sm, 2.0, 2.0, pv=pv),
                   mla_decode_a8w8_reference(*args, sm * (1 + 2**-14), 2.0, 2.0, pv=pv))  # fmt: skip
    tol = {pv: 1e-2 + 1e-2 * o.abs() for pv, (o, _) in out.items()}
    bound = a8w8_p_rounding_bound(*args, sm, 2.0, 2.0)
    assert ((out["f16"][1] - out["f16"][0]).abs() <= tol["f16"]).all()
    moved = (out["fp8"][1] - out["fp8"][0]).abs()
    assert (moved > tol["fp8"]).sum() > 10  # the H100 failure: P codes flipped by one ulp
    assert (moved <= tol["fp8"] + bound).all()
    # sequence 0 reads a slot of sequence 1 instead of its heaviest token: that must not pass
    rows = b["kv"].reshape(-1, 576).float()
    idx = b["kv_indices"].clone()
    idx[int((b["q"][0].float() @ rows[idx[:1024]].T).amax(0).argmax())] = idx[1500]
    wrong = mla_decode_a8w8_reference(b["q"], b["kv"], b["kv_indptr"], idx, sm, 2.0, 2.0, pv="fp8")
    assert ((wrong - out["fp8"][0]).abs() > tol["fp8"] + bound).any()


@triton.jit
def _quantize_rows(Q, OUT, MUL, H: tl.constexpr, Q_EXP: tl.constexpr):
    """The kernel's q quantization on its own: [H, 576] rows -> fp8 codes and multipliers."""
    offs_h = tl.arange(0, H)
    q_row = Q + offs_h[:, None] * 576
    mask_h = offs_h < H
    mul = kernels._q_fp8_mul(q_row, mask_h, 512, 64, Q_EXP)
    lat = kernels._q8_tile(q_row, 0, mask_h, 512, mul, OUT.dtype.element_ty)
    rope = kernels._q8_tile(q_row, 512, mask_h, 64, mul, OUT.dtype.element_ty)
    tl.store(OUT + offs_h[:, None] * 576 + tl.arange(0, 512)[None, :], lat)
    tl.store(OUT + offs_h[:, None] * 576 + 512 + tl.arange(0, 64)[None, :], rope)
    tl.store(MUL + offs_h, mul)


def test_q_quantization_is_bit_exact_with_the_reference() -> None:
    """Rows of very different magnitudes (absorbed q: per-head scales vary), an all-zero row, huge values."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(16, 576, generator=g) * torch.logspace(-6, 5, 16)[:, None]
    q[3] = 0.0
    q = q.to(torch.bfloat16).to(DEV)
    codes = torch.empty(16, 576, dtype=FP8, device=DEV)
    mul = torch.empty(16, dtype=torch.float32, device=DEV)
    _quantize_rows[(1,)](q, codes, mul, H=16, Q_EXP=api.q_exp(FP8))
    ref_codes, ref_mul = quantize_q(q[None], FP8)
    assert torch.equal(mul, ref_mul.view(-1))
    assert torch.equal(codes.view(torch.uint8), ref_codes[0].view(torch.uint8))
    amax = (codes.float().abs().amax(dim=-1))[torch.arange(16) != 3]
    assert (amax >= 128).all() and (amax <= 256).all()  # each row's max lands in [2^7, 2^8]


def test_per_row_q_scale_is_at_least_as_accurate_as_per_tensor() -> None:
    """The kernel's per-(sequence, head) power-of-two scale vs SGLang's dynamic per-tensor one (max|q| -> 448).
    Output vs the bf16-q reference: no worse. q itself (what the scores see): each row's relative error no worse,
    and far better for rows much smaller than the largest (per-tensor pushes them into e4m3's subnormals)."""
    b = make_batch(16, [300, 64, 1000], FP8, 1, seed=5)
    args = (b["q"], b["kv"], b["kv_indptr"], b["kv_indices"], 0.09)
    exact = mla_decode_reference(*args)
    err = {s: (mla_decode_a8w8_reference(*args, pv="f16", q_scale=s) - exact).abs() for s in ("row", "tensor")}
    print(f"output vs bf16 q: max err row {err['row'].max():.2e} tensor {err['tensor'].max():.2e}, "
          f"mean row {err['row'].mean():.2e} tensor {err['tensor'].mean():.2e}")  # fmt: skip
    assert err["row"].mean() <= err["tensor"].mean() * 1.05 and err["row"].max() <= err["tensor"].max() * 1.1
    g = torch.Generator().manual_seed(6)
    q = (torch.randn(4, 16, 576, generator=g) * torch.logspace(-6, 0, 16)[:, None]).to(torch.bfloat16)
    rel = {}
    for s in ("row", "tensor"):
        codes, mul = quantize_q(q, FP8, s)
        rel[s] = ((codes.float() / mul - q.float()).norm(dim=-1) / q.float().norm(dim=-1)).mean(dim=0)  # per head
    print("q relative error per head, row:", [f"{x:.3f}" for x in rel["row"]])
    print("q relative error per head, tensor:", [f"{x:.3f}" for x in rel["tensor"]])
    assert (rel["row"] <= rel["tensor"] * 1.15).all() and rel["row"].max() < 0.05
    assert rel["tensor"][0] > 5 * rel["row"][0]  # 1e-6 of the largest row: below e4m3 per tensor


def test_compute_selection_and_knobs() -> None:
    cfg = api.config_for(16, "sm90")
    # sm90 (H100, round 8): the Gluon a8w8 kernel at 16 heads (0.78-0.88x the a16 path's time); the Triton a8w8
    # kernel was 0.71-0.87x as fast as a16 (round 4), so more heads keep a16; gfx950 computes a8w8 (aiter's reference)
    assert cfg.fp8_compute == Compute.A8W8 and api.gluon_engine(api.kv_config(cfg, FP8), FP8)
    for heads in (32, 128):
        assert api.config_for(heads, "sm90").fp8_compute == Compute.A16
    for heads in (16, 32, 128):
        assert api.config_for(heads, "gfx950").fp8_compute == Compute.A8W8
    for other in ("sm80", "sm100", "cpu"):  # sm90's table elsewhere: without the Gluon kernel (wgmma, sm90 only)
        o = api.config_for(16, other)
        knobs = (o.fp8_compute, o.a8w8.engine, o.a8w8.programs_per_sm, o.kv16_engine)
        assert knobs == ("a16", "triton", None, "triton")
        assert api.make_plan(16, torch.bfloat16, FP8, device="cpu", arch=other).kernel is kernels._mla_partial_kernel
        a8 = api.make_plan(16, torch.bfloat16, FP8, device="cpu", arch=other, compute="a8w8")
        assert a8.kernel is kernels._mla_partial_kernel and a8.compute == Compute.A8W8
    assert api.kv_config(cfg, FP8).fp8_compute == Compute.A8W8  # the bucket's choice
    a8 = api.kv_config(cfg, FP8, "a8w8")
    assert (a8.BLOCK_N, a8.num_warps, a8.num_stages) == (cfg.a8w8.BLOCK_N, cfg.a8w8.num_warps, cfg.a8w8.num_stages)
    # a8w8 sets its own split width (one Gluon CTA per SM); bf16 caches keep the bucket's
    assert (a8.programs_per_sm, cfg.programs_per_sm, a8.split_d) == (1, 2, cfg.split_d)
    assert api.kv_config(cfg, torch.bfloat16).programs_per_sm == 2
    assert api.num_programs(16, a8, 132) == 132 and api.num_programs(16, cfg, 132) == 264
    tri = api.kv_config(cfg.replace(a8w8={**cfg.a8w8.entry(), "engine": "triton"}), FP8)
    k = api.kernel_constexprs(tri, torch.bfloat16, FP8, "sm90")
    assert tri.fp8_compute == Compute.A8W8 and k["A8W8"] and k["TOKENS_M"] and k["Q_EXP"] == 8
    assert k["PV_FP8"] == (cfg.a8w8.pv == "fp8")
    g = api.kernel_constexprs(api.kv_config(api.config_for(16, "gfx950"), FP8), torch.bfloat16, FP8, "gfx950")
    assert g["A8W8"] and not g["TOKENS_M"] and g["PV_FP8"]  # MFMA takes M = 16 heads; LDS transposes fp8 V
    a16 = api.kv_config(cfg, FP8, "a16")
    assert a16.fp8_compute == Compute.A16 and not api.kernel_constexprs(a16, torch.bfloat16, FP8, "sm90")["A8W8"]
    assert a16.BLOCK_N == cfg.fp8.BLOCK_N  # a16 on fp8 caches: the bucket's "fp8" knobs
    assert api.kv_config(cfg, torch.bfloat16) is cfg and api.compute_for(cfg, torch.bfloat16) == "a16"
    assert api.q_exp(torch.float8_e4m3fnuz) == 7
    with pytest.raises(ValueError, match="a8w8 needs an fp8 KV cache"):
        api.kv_config(cfg, torch.bfloat16, "a8w8")
    with pytest.raises(ValueError, match="no a8w8 knobs"):
        api.kv_config(cfg.replace(a8w8=None, fp8_compute="a16"), FP8, "a8w8")
    with pytest.raises(ValueError, match="expected one of"):
        api.compute_for(cfg, FP8, "a4w4")


def test_sweep_variants_compute_what_they_name() -> None:
    """The bench's a8w8 variants run a8w8 on fp8 caches whatever the table's fp8_compute (sm90 now picks a16), the
    a16 one a16, and the others what the table picks: a sweep row labelled a8w8 is never the upcast path."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    shipped = api.config_for(bench.HEADS).fp8_compute
    for name, knobs in bench.VARIANTS.items():
        want = Compute.A8W8 if name.startswith("a8w8") else knobs.get("fp8_compute", shipped)
        assert api.kv_config(bench.variant_config(name), FP8).fp8_compute == want, name


# A variant name's tokens and the knob each one names: s4 split_d, n64 BLOCK_N, w8 num_warps, st3 num_stages,
# r168 maxnreg, pps1 programs_per_sm.
NAME_KNOBS = {"s": "split_d", "n": "BLOCK_N", "w": "num_warps", "st": "num_stages", "r": "maxnreg",
              "pps": "programs_per_sm"}  # fmt: skip


@pytest.mark.parametrize("variant", ["fp8_n64_w8", "fp8_r168_st3", "a8w8_n128_pv_f16", "s4_n64_w4_st3",
                                     "s4_n32_w4_pps1", "a8w8_pv_fp8", "a8w8_pv_f16",
                                     "a8w8_gluon_pps1_st3"])  # fmt: skip
def test_sweep_variants_run_the_knobs_they_name(variant: str) -> None:
    """Each knob a variant's name states is what runs on the caches it is for (a8w8_*: the a8w8 knobs; fp8_*: the
    fp8 overrides, and on bf16 caches the very kernels of `default`; others: both caches), launch options included
    (r168: maxnreg reaches the sm90 launch)."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    cfg = bench.variant_config(variant)
    named = {NAME_KNOBS[k]: int(v) for k, v in re.findall(r"(?:^|_)(pps|st|s|n|w|r)(\d+)(?=_|$)", variant)}
    assert named or "pv" in variant, variant
    caches = [FP8] if variant.startswith(("fp8_", "a8w8_")) else [FP8, torch.bfloat16]
    for kv in caches:
        plan = api.make_plan(16, torch.bfloat16, kv, device="cpu", arch="sm90", config=cfg)
        runs = {**plan.cfg.model_dump(), **plan.partial_opts}
        assert {k: runs.get(k) for k in named} == named, (variant, kv)
        if "gluon" in variant:  # its own kernel and constexprs: the stages and warpgroups it is named with
            assert plan.kernel.fn.__name__ == "mla_partial_sm90"
            assert (plan.partial[False]["STAGES"], plan.partial[False]["WARPS"]) == (named["num_stages"], 8)
            continue
        assert plan.partial[False]["SPLIT_D"] == named.get("split_d", plan.cfg.split_d)
    if variant.startswith("a8w8_") and "gluon" not in variant:
        pv = api.kernel_constexprs(api.kv_config(cfg, FP8), torch.bfloat16, FP8, "sm90")["PV_FP8"]
        assert pv == variant.startswith("a8w8_pv_fp8")
    if variant.startswith(("fp8_", "a8w8_")):  # bf16 caches: nothing changes
        assert bench.kernels_of(cfg, torch.bfloat16, "sm90") == bench.kernels_of(
            bench.variant_config("default"), torch.bfloat16, "sm90")  # fmt: skip


def test_a8w8_on_a_bf16_cache_fails_loudly() -> None:
    b = make_batch(16, [5], torch.bfloat16, 1)
    o = torch.empty(1, 16, 512, device=DEV)
    with pytest.raises(ValueError, match="a8w8 needs an fp8 KV cache"):
        decode(b["q"], b["kv"], o, b["kv_indptr"], b["kv_indices"], 0.1, arch="cpu", compute="a8w8")


@pytest.mark.parametrize(
    "bad,field",
    [({"fp8_compute": "a4"}, "fp8_compute"), ({"a8w8": {"mma_m": "rows"}}, "a8w8.mma_m"),
     ({"a8w8": None, "fp8_compute": "a8w8"}, "no a8w8 knobs")],
)  # fmt: skip
def test_bad_a8w8_knobs_name_the_field(bad: dict, field: str) -> None:
    cfg = api.config_for(16, "sm90").entry()
    if "a8w8" in bad and bad["a8w8"]:
        bad = {"a8w8": {**cfg["a8w8"], **bad["a8w8"]}}
    with pytest.raises(ValueError, match=f"heads<=16: .*{field}"):
        MlaBucket.checked({**cfg, **bad}, "mla_decode sm90 heads<=16")


def test_compute_env() -> None:
    var = environ.MLA_DECODE_COMPUTE
    assert environ.PluginSettings.from_env({}).mla_decode_compute is None
    assert environ.PluginSettings.from_env({var.name: "a16"}).mla_decode_compute == "a16"
    with pytest.raises(ValueError, match="SPEEDRUN_MLA_DECODE_COMPUTE='fp4': expected 'a8w8' or 'a16'"):
        environ.PluginSettings.from_env({var.name: "fp4"})


# ----------------------------------------------------------------------------- recipe -> launcher env


def _recipe(tmp_path, mla: dict, kv: str = "fp8_e4m3", other: dict | None = None):
    import yaml

    from speedrun.recipe import load_recipe

    data = {"name": "r", "model": {"path": "m"}, "hardware": {"platform": "cuda", "arch": "sm90", "gpus": 1},
            "server": {"kv_cache_dtype": kv}, "overlays": {"mla_decode": mla, **(other or {})}}  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def test_recipe_compute_reaches_the_server_env(tmp_path) -> None:
    from speedrun.launch.command import build
    from speedrun.recipe import Side

    def compute(mla: dict, side: Side) -> str | None:
        env = build(_recipe(tmp_path, mla), side=side, port=1).env
        assert environ.MLA_DECODE_COMPUTE.name not in env  # inside SPEEDRUN_SETTINGS
        return environ.PluginSettings.from_env(env).mla_decode_compute

    assert compute({"enabled": True, "compute": "a16"}, Side.OVERLAY) == "a16"
    assert compute({"enabled": True}, Side.OVERLAY) is None  # unset: each bucket's fp8_compute (sm90 a16, gfx950 a8w8)
    assert compute({"enabled": True, "compute": "a8w8"}, Side.BASELINE) is None  # stock SGLang never sees it


@pytest.mark.parametrize(
    "mla,kv,other,msg",
    [({"compute": "a8w8"}, "auto", None, "compute a8w8 needs server.kv_cache_dtype fp8_e4m3 (got 'auto')"),
     ({"compute": "fp4"}, "fp8_e4m3", None, "overlays.mla_decode.compute: Input should be 'a8w8' or 'a16'"),
     ({}, "fp8_e4m3", {"mxfp4_moe": {"compute": "a8w8"}}, "overlays.mxfp4_moe.compute: Extra inputs")],
)  # fmt: skip
def test_recipe_compute_errors_name_the_field(tmp_path, mla, kv, other, msg) -> None:
    from speedrun.recipe import RecipeError

    with pytest.raises(RecipeError) as exc:
        _recipe(tmp_path, {"enabled": True, **mla}, kv, other)
    assert msg in str(exc.value), str(exc.value)


def test_compile_report_holds_a8w8_to_fp8_mma_occupancy_and_no_spills() -> None:
    """The a8w8 specs carry the fp8-MMA regex, >= 2 waves/SIMD on gfx950 and no spills; the verdict applies them."""
    from speedrun.eval.kernels.mla_decode_compile import compile_specs
    from speedrun.eval.readiness.report import verdict

    fp8_mma = {"sm90": "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3", "gfx950": "v_mfma_f32_16x16x32_fp8_fp8"}
    for arch, mma in fp8_mma.items():
        specs = [s for s in compile_specs(arch) if "a8w8" in s.name]
        # 3 buckets x PV fp8 | f16, and on sm90 the Gluon kernels (heads<=16, PV f16: plain, warp-specialized with an
        # eager and a lazy running max)
        assert len(specs) == 6 + 3 * (arch == "sm90") and all(s.no_spills for s in specs)
        assert {s.name.rsplit("pv-", 1)[1].split(",")[0].rstrip("]") for s in specs} == {"fp8", "f16"}
        assert all(s.min_occupancy == (2 if arch == "gfx950" else None) for s in specs)
        assert all(re.search(s.expect_mma, mma) for s in specs)
        assert not any(
            re.search(s.expect_mma, m)
            for s in specs
            for m in (
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16",
                "v_mfma_f32_16x16x32_f16",
            )
        )
    row = {"ok": True, "occupancy": 1, "min_occupancy": 2, "limit": "vgpr", "spills": 0, "scratch": 0}
    assert verdict(row) == ["occupancy 1 < 2 required (limit: vgpr)"]
    assert verdict({**row, "occupancy": 2, "spills": 3, "no_spills": True}) == [
        "3 registers spilled (this kernel must not spill at all)"
    ]
    assert verdict({**row, "occupancy": 2, "spills": 3}) == []  # other kernels: register-to-register spills pass


@pytest.mark.parametrize(
    "heads,arch,knobs,kv,msg",
    [(16, "gfx950", {}, FP8, "sm90 only (wgmma), not gfx950"),
     (16, "cpu", {}, FP8, "sm90 only"),
     (128, "sm90", {}, FP8, "one program holds all heads (<= 16, BLOCK_H 16), not 128 heads"),
     (16, "sm90", {"pv": "fp8"}, FP8, "a8w8.pv must be f16, not fp8"),
     (16, "sm90", {"BLOCK_N": 128}, FP8, "a8w8.BLOCK_N must be 64, not 128"),
     (16, "sm90", {"mma_m": "heads"}, FP8, "a8w8.mma_m must be tokens, not heads"),
     (16, "sm90", {"num_warps": 16}, FP8, "a8w8.num_warps must be 4 or 8"),
     (16, "sm90", {"cvt_rows": 48}, FP8, "a8w8.cvt_rows must be a multiple of 8 dividing BLOCK_N 64, not 48"),
     (16, "sm90", {"pipe_pv": True, "num_stages": 3}, FP8, "a8w8.pipe_pv double-buffers V's f16 copy: num_stages"),
     (16, "sm90", {}, torch.float8_e4m3fnuz, "e4m3fn KV, or bf16 KV with bf16 q, not torch.float8_e4m3fnuz KV")],
)  # fmt: skip
def test_gluon_engine_is_refused_where_it_is_not_written_for(heads, arch, knobs, kv, msg) -> None:
    """engine gluon is checked once, in the plan, against what gluon_sm90.py is written for; one line names the
    knob. The same knobs with engine triton plan fine (or fail for their own reasons, never this one)."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    cfg = bench.variant_config("a8w8_gluon")
    cfg = cfg.replace(a8w8=cfg.a8w8.replace(**knobs))
    with pytest.raises(ValueError, match=re.escape(msg)):
        api.make_plan(heads, torch.bfloat16, kv, device="cpu", arch=arch, config=cfg)
    triton_cfg = cfg.replace(a8w8=cfg.a8w8.replace(engine="triton"))
    try:
        plan = api.make_plan(heads, torch.bfloat16, kv, device="cpu", arch=arch, config=triton_cfg)
    except ValueError as exc:
        assert "engine gluon" not in str(exc)
    else:
        assert plan.kernel is kernels._mla_partial_kernel


def test_gluon_engine_leaves_bf16_caches_on_the_triton_kernel() -> None:
    """The engine is an a8w8 knob: a bf16 cache (or fp8 computed a16) runs the Triton kernel with the table's knobs."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    cfg = bench.variant_config("a8w8_gluon")
    bf16 = api.make_plan(16, torch.bfloat16, torch.bfloat16, device="cpu", arch="sm90", config=cfg)
    a16 = api.make_plan(16, torch.bfloat16, FP8, device="cpu", arch="sm90", config=cfg, compute="a16")
    gluon = api.make_plan(16, torch.bfloat16, FP8, device="cpu", arch="sm90", config=cfg)
    assert bf16.kernel is kernels._mla_partial_kernel and a16.kernel is kernels._mla_partial_kernel
    assert gluon.kernel is not kernels._mla_partial_kernel
    assert gluon.partial[False] == {"SNAP": True, "STAGES": 2, "Q_EXP": 8, "WARPS": 8, "CVT_ROWS": 32,
                                    "PIPE_PV": False}  # fmt: skip
    cvt64 = api.make_plan(16, torch.bfloat16, FP8, device="cpu", arch="sm90",
                          config=bench.variant_config("gluon_pps1_cvt64"))  # fmt: skip
    assert cvt64.partial[False]["CVT_ROWS"] == 64 and 2 * cvt64.programs == gluon.programs  # 1 vs 2 per SM


@pytest.mark.parametrize(
    "heads,arch,knobs,q,kv,msg",
    [(16, "gfx950", {}, torch.bfloat16, torch.bfloat16, "kv16_engine gluon: sm90 only (wgmma), not gfx950"),
     (16, "sm90", {}, torch.float16, torch.bfloat16, "bf16 KV with bf16 q, not torch.bfloat16 KV with torch.float16 q"),
     (16, "sm90", {}, torch.float16, torch.float16, "not torch.float16 KV"),
     (16, "sm90", {"BLOCK_N": 32}, torch.bfloat16, torch.bfloat16, "kv16_engine gluon: BLOCK_N must be 64, not 32"),
     (16, "sm90", {"num_warps": 2}, torch.bfloat16, torch.bfloat16, "num_warps must be 4 or 8"),
     (64, "sm90", {}, torch.bfloat16, torch.bfloat16, "one program holds all heads (<= 16, BLOCK_H 16), not 64")],
)  # fmt: skip
def test_kv16_gluon_is_refused_where_it_is_not_written_for(heads, arch, knobs, q, kv, msg) -> None:
    """kv16_engine gluon (16-bit caches) is checked in the plan like a8w8.engine: one line naming the knob; fp8
    caches of the same bucket keep their own compute and kernel."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    cfg = bench.variant_config("kv16_gluon").replace(**knobs)
    with pytest.raises(ValueError, match=re.escape(msg)):
        api.make_plan(heads, q, kv, device="cpu", arch=arch, config=cfg)
    ok = api.make_plan(
        16, torch.bfloat16, torch.bfloat16, device="cpu", arch="sm90", config=bench.variant_config("kv16_gluon")
    )
    assert ok.kernel.fn.__name__ == "mla_partial_sm90" and ok.partial[False]["STAGES"] == 2
    fp8 = api.make_plan(16, torch.bfloat16, FP8, device="cpu", arch="sm90", config=bench.variant_config("kv16_gluon"))
    shipped = api.make_plan(16, torch.bfloat16, FP8, device="cpu", arch="sm90", config=bench.variant_config("default"))
    assert (fp8.kernel, fp8.partial, fp8.programs) == (shipped.kernel, shipped.partial, shipped.programs)


@pytest.mark.parametrize(
    "knobs,kv,msg",
    [({}, torch.bfloat16, "kv16_engine gluon_ws: fp8 e4m3 caches only"),
     ({"num_warps": 4}, FP8, "a8w8.num_warps must be 8 (two MMA warpgroups), not 4"),
     ({"num_stages": 3}, FP8, "a8w8.num_stages 3 with v_bufs 3 and pv f16 needs 320512 B of shared memory"),
     ({"pv": "fp8", "num_stages": 4}, FP8, "a8w8.num_stages 4 with v_bufs 4 and pv fp8 needs 289792 B"),
     ({"num_stages": 5, "v_bufs": 1}, FP8, "a8w8.num_stages 5 with v_bufs 1 and pv f16 needs 263168 B"),
     ({"v_bufs": 3}, FP8, "a8w8.v_bufs must be <= num_stages 2 (a V buffer per ring slot at most), not 3"),
     ({"engine": "gluon", "pv_split": "heads"}, FP8, "a8w8.pv_split, v_bufs and lazy_max are the warp-specialized"),
     ({"engine": "gluon", "v_bufs": 1}, FP8, "a8w8.pv_split, v_bufs and lazy_max are the warp-specialized"),
     ({"engine": "gluon", "lazy_max": True}, FP8, "a8w8.pv_split, v_bufs and lazy_max are the warp-specialized"),
     ({"engine": "triton", "lazy_max": True}, FP8, "a8w8.engine triton: a8w8.pv_split, v_bufs and lazy_max are"),
     ({"pipe_pv": True}, FP8, "a8w8.pipe_pv is engine gluon's knob"),
     ({"cvt_rows": 64}, FP8, "a8w8.cvt_rows must be <= 32 (the converter's registers), not 64")],
)  # fmt: skip
def test_gluon_ws_is_refused_where_it_is_not_written_for(knobs, kv, msg) -> None:
    """engine gluon_ws: fp8 caches, two MMA warpgroups, the ring slots that fit shared memory for its PV type; its
    own knobs (pv_split, v_bufs, lazy_max) on another kernel, the Triton one included, are refused rather than
    ignored. One line names the knob."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    cfg = bench.variant_config("gluon_ws")
    if kv == torch.bfloat16:  # the 16-bit knobs the Gluon kernel takes, so only the engine is wrong
        cfg = cfg.replace(kv16_engine="gluon_ws", BLOCK_N=64, num_warps=8, num_stages=2)
    cfg = cfg.replace(a8w8=cfg.a8w8.replace(**knobs))
    with pytest.raises(ValueError, match=re.escape(msg)):
        api.make_plan(16, torch.bfloat16, kv, device="cpu", arch="sm90", config=cfg)


@pytest.mark.parametrize("knob,value", [("BLOCK_P", 3), ("max_tile", 3000), ("min_block_dv", 96)])
def test_merge_knobs_that_size_a_tile_are_powers_of_two(knob, value) -> None:
    """The merge's BLOCK_P is min(BLOCK_P, max_tile // BLOCK_DV), a tl.arange extent: a knob that would make it
    anything but a power of two is refused when the table is read, naming it (not at the kernel's compile)."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    cfg = bench.variant_config("merge_dv512")
    with pytest.raises(ValueError, match=rf"merge\.{knob}: Value error, must be a power of two .*got {value}"):
        cfg.replace(merge={**cfg.merge.entry(), knob: value})


def test_gluon_ws_constexprs_follow_the_knobs() -> None:
    """The plan hands gluon_sm90_ws.py its ring depth, PV type and split from the a8w8 knobs, and the per-process
    report names the engine."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    plans = {v: api.make_plan(16, torch.bfloat16, FP8, device="cpu", arch="sm90", config=bench.variant_config(v))
             for v in ("gluon_ws", "gluon_ws_pv8", "gluon_ws_pv8_h", "gluon_ws_lazy")}  # fmt: skip
    assert plans["gluon_ws"].partial[False] == {"SNAP": True, "Q_EXP": 8, "WARPS": 8, "CVT_ROWS": 16, "STAGES": 2,
                                                "NV": 2, "PV_FP8": False, "PV_HEADS": False,
                                                "LAZY_MAX": False}  # fmt: skip
    assert plans["gluon_ws_lazy"].partial[False] == {**plans["gluon_ws"].partial[False], "LAZY_MAX": True}
    assert {k: plans["gluon_ws_pv8"].partial[False][k] for k in ("STAGES", "PV_FP8", "PV_HEADS")} == {
        "STAGES": 3, "PV_FP8": True, "PV_HEADS": False}  # fmt: skip
    assert plans["gluon_ws_pv8_h"].partial[False]["PV_HEADS"] is True
    assert (
        len({id(p.kernel) for p in plans.values()}) == 1 and plans["gluon_ws"].kernel.__name__ == "mla_partial_sm90_ws"
    )
    assert api.engine(plans["gluon_ws"].cfg, FP8).value == "gluon_ws"
