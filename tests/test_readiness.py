"""MI355X readiness on the CPU: the AOT compile report (both archs, our own small kernels), occupancy maths,
failure verdicts and exit codes, the roofline estimate, and aiter's weight/scale layouts against their
documented definitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from speedrun.overlays.ops import OPS
from speedrun.overlays.readiness import aiter_layouts as al
from speedrun.overlays.readiness import report, resources, roofline

SAMPLE = "speedrun.overlays.readiness.sample"


@pytest.fixture(scope="module")
def good() -> dict:
    return report.run([SAMPLE, f"{SAMPLE}:hint_specs"])


def rows_by(result: dict, kernel: str) -> dict[str, dict]:
    return {r["arch"]: r for r in result["rows"] if r["kernel"] == kernel}


# ---------------------------------------------------------------- compile report
def test_report_reads_mma_registers_and_occupancy(good):
    assert good["failed"] == 0, [r["problems"] for r in good["rows"]]
    mm = rows_by(good, "sample/matmul[64]")
    assert any(m.startswith("v_mfma_f32") and "bf16" in m for m in mm["gfx950"]["mma"])
    assert any(m.startswith("wgmma") for m in mm["sm90"]["mma"])
    for arch, r in mm.items():
        assert r["vgpr"] > 16 and r["shared"] > 0 and r["scratch"] == 0 and r["occupancy"] >= 1, (arch, r)
    g = mm["gfx950"]
    assert g["sgpr"] > 0 and g["vgpr_total"] >= g["vgpr"]
    # LLVM's own occupancy sees registers only (Triton's LDS is dynamic): our register maths must agree.
    assert resources.gfx950_occupancy(g["vgpr_total"], 0, g["num_warps"])[0] == g["llvm_occupancy"]
    add = rows_by(good, "sample/add")
    assert add["gfx950"]["mma"] == [] and add["sm90"]["mma"] == []


def test_alignment_hints_give_wide_loads(good):
    hinted, plain = rows_by(good, "sample/matmul[64]"), rows_by(good, "sample/matmul[64,no hints]")
    for arch in report.ARCHS:
        assert hinted[arch]["wide_loads"] > 0, arch
        assert plain[arch]["wide_loads"] == 0, arch


def test_ir_attrs_follow_each_backend():
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    from speedrun.eval.kernels.aot import TARGETS, aligned, ir_attrs
    from speedrun.overlays.readiness.sample import MM_SIG

    class Fn:
        arg_names = list(MM_SIG)

    attrs = aligned(MM_SIG, "a", "stride_am")
    assert attrs == {"a": "DS", "stride_am": "D"}
    amd = ir_attrs(Fn, attrs, make_backend(GPUTarget(*TARGETS["gfx950"])))
    cuda = ir_attrs(Fn, attrs, make_backend(GPUTarget(*TARGETS["sm90"])))
    assert amd == {(0,): [["tt.divisibility", 16], ["tt.pointer_range", 32]], (4,): [["tt.divisibility", 16]]}
    assert cuda == {(0,): [["tt.divisibility", 16]], (4,): [["tt.divisibility", 16]]}


def test_injected_failures_exit_nonzero():
    runner = CliRunner()
    from speedrun.cli import _register_commands, app

    _register_commands()
    bad = runner.invoke(app, ["kernels", "compile", "--op", f"{SAMPLE}:bad_specs", "--json"])
    assert bad.exit_code == 1, bad.output
    rows = {(r["kernel"], r["arch"]): r for r in json.loads(bad.output)["rows"]}
    for arch in report.ARCHS:
        assert "expected matrix instruction" in rows["sample/add", arch]["problems"][0]
        spill = rows["sample/matmul[128]", arch]
        assert spill["ok"] and spill["scratch"] > 0 and spill["problems"][0].startswith("spills to memory")
    ok = runner.invoke(app, ["kernels", "compile", "--op", SAMPLE, "--arch", "sm90"])
    assert ok.exit_code == 0, ok.output


def test_verdict_rules():
    base = {"ok": True, "scratch": 0, "spills": 0, "occupancy": 2, "shared": 0, "limit": "vgpr"}
    assert report.verdict(base) == []
    assert report.verdict({**base, "spills": 3}) == [] and report.notes({**base, "spills": 3})  # into registers
    assert report.verdict({**base, "spills": 3, "scratch": 16})[0].startswith("spills to memory")
    assert report.verdict({**base, "scratch": 16}) == ["spills to memory: 16 B scratch per lane"]
    assert report.verdict({**base, "occupancy": 0})[0].startswith("does not fit")
    assert report.verdict({**base, "ok": False, "error": "boom"}) == ["boom"]


# ---------------------------------------------------------------- occupancy maths
@pytest.mark.parametrize(
    "vgpr,lds,warps,expect",
    [
        (176, 0, 4, (2, "vgpr")),
        (128, 0, 4, (4, "vgpr")),
        (512, 0, 4, (1, "vgpr")),
        (24, 0, 4, (8, "max")),
        (60, 0, 4, (8, "max")),
        (72, 0, 4, (7, "vgpr")),
        (64, 64 * 1024, 4, (2, "lds")),
        (64, 32 * 1024, 8, (8, "max")),
        (64, 160 * 1024 + 1, 4, (0, "lds")),
    ],  # fmt: skip
)
def test_gfx950_occupancy(vgpr, lds, warps, expect):
    assert resources.gfx950_occupancy(vgpr, lds, warps) == expect


@pytest.mark.parametrize(
    "regs,smem,warps,expect",
    [
        (255, 0, 4, (2, "regs")),
        (128, 0, 8, (2, "regs")),
        (32, 0, 4, (16, "warps")),
        (16, 0, 1, (32, "max")),
        (64, 100 * 1024, 4, (2, "smem")),
        (168, 0, 4, (3, "regs")),
        (64, 228 * 1024 + 1, 4, (0, "smem")),
    ],  # fmt: skip
)
def test_sm90_occupancy(regs, smem, warps, expect):
    assert resources.sm90_occupancy(regs, smem, warps) == expect


def test_parsers_read_spills():
    amdgcn = """; NumVgprs: 100\n; Occupancy: 2\n  - .agpr_count:     64\n    .group_segment_fixed_size: 512
    .private_segment_fixed_size: 48\n    .sgpr_count:     30\n    .sgpr_spill_count: 1\n    .vgpr_count:     168
    .vgpr_spill_count: 11\n"""
    u = resources.gfx950_usage(amdgcn, 65536, 4)
    assert (u.vgpr, u.agpr, u.vgpr_total, u.sgpr, u.shared, u.scratch, u.spills) == (100, 64, 168, 30, 66048, 48, 12)
    assert (u.occupancy, u.limit) == (2, "lds") and u.llvm_occupancy == 2  # 160 KiB // 64.5 KiB = 2 workgroups
    text = "Resource usage:\n Function k:\n  REG:96 STACK:512 SHARED:1024 LOCAL:0 CONSTANT[0]:592 TEXTURE:0\n"
    assert resources.parse_resource_usage(text) == {"REG": 96, "STACK": 512, "SHARED": 1024, "LOCAL": 0,
                                                    "TEXTURE": 0}  # fmt: skip


# ---------------------------------------------------------------- roofline
def test_roofline_maths():
    assert roofline.roofline_s(8e12, 1.0, 8e12, 1e15) == (1.0, "memory")
    assert roofline.roofline_s(1.0, 2e15, 8e12, 1e15) == (2.0, "compute")
    row = {"m": 4096, "n": 4096, "k": 4096, "us": 1000.0}
    e = roofline.estimate("mxfp4_gemm", row)
    flops = 2 * 4096**3
    assert e["flops"] == flops and e["mi355x_bound"] == "compute" and e["h100_bound"] == "compute"
    assert e["mi355x_roofline_us"] == round(flops / roofline.MI355X["MXFP4"] * 1e6, 2)
    assert e["h100_fraction_of_roofline"] == round(flops / roofline.H100["BF16"] / 1e-3, 3)
    mla = roofline.estimate("mla_decode", {"bs": 2, "kv_len": 1000, "heads": 16, "kv_dtype": "bf16", "us": 10.0})
    assert mla["bytes"] == 2 * 1000 * 576 * 2 + 2 * 16 * 1088 * 2 and mla["mi355x_bound"] == "memory"


def test_roofline_table_and_markdown(tmp_path):
    rows = [{"impl": "speedrun", "m": 16, "n": 2112, "k": 7168, "us": 24.5, "gpu": "NVIDIA H100 80GB HBM3"},
            {"impl": "speedrun", "m": 32, "n": 2112, "k": 7168, "us": 20.0, "gpu": "NVIDIA H200"},
            {"impl": "bf16_cublas", "m": 16, "n": 2112, "k": 7168, "us": 22.0}]  # fmt: skip
    (tmp_path / "mxfp4_gemm.json").write_text(json.dumps(rows))
    out = roofline.table(tmp_path)
    assert len(out) == 1 and out[0]["mi355x_bound"] == "memory"
    md = roofline.markdown(out)
    assert "ESTIMATE" in md and "| mxfp4_gemm | m=16, n=2112, k=7168 | MXFP4 |" in md


def test_every_gfx950_table_is_marked_untuned_and_roofline_reads_the_newest_round(monkeypatch):
    from speedrun.cli import _register_commands, app

    _register_commands()
    root = Path(__file__).resolve().parents[1]
    for op in OPS:
        meta = json.loads((root / "overlays" / op / "configs" / "gfx950.json").read_text())["_meta"]
        assert meta["tuned"] is False, op
    monkeypatch.chdir(root)
    out = CliRunner().invoke(app, ["kernels", "roofline", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)["rows"]
    round3 = {json.dumps(r["shape"], sort_keys=True) for r in roofline.table(root / "docs/results/kernels/round3")}
    assert rows and {json.dumps(r["shape"], sort_keys=True) for r in rows} == round3


# ---------------------------------------------------------------- aiter layouts
def documented_shuffle_weight(x: torch.Tensor) -> torch.Tensor:
    """aiter.ops.shuffle.shuffle_weight(x, layout=(16, 16)) as documented: BN=16, BK=32, K=16 // element size."""
    k = 16 // x.element_size()
    v = x.view(-1, x.shape[-2] // 16, 16, x.shape[-1] // 32, 32 // k, k)
    return v.permute(0, 1, 3, 4, 2, 5).contiguous().view(*x.shape)


def documented_e8m0_shuffle(s: torch.Tensor) -> torch.Tensor:
    """aiter.utility.fp4_utils.e8m0_shuffle as documented: pad to (256, 8), view(m//32, 2, 16, n//8, 2, 4),
    permute(0, 3, 5, 2, 4, 1)."""
    m, n = s.shape
    sm, sn = -(-m // 256) * 256, -(-n // 8) * 8
    p = torch.zeros(sm, sn, dtype=s.dtype)
    p[:m, :n] = s
    return p.view(sm // 32, 2, 16, sn // 8, 2, 4).permute(0, 3, 5, 2, 4, 1).contiguous().view(sm, sn)


@pytest.mark.parametrize("shape", [(16, 32), (48, 96), (3, 32, 64), (2, 512, 3584)])
def test_shuffle_weight_matches_definition(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    ours = al.shuffle_weight(w)
    assert torch.equal(ours, documented_shuffle_weight(w))
    assert torch.equal(al.unshuffle_weight(ours), w)
    # Each 16-byte run is 16 consecutive K bytes of one row; 16 runs cover the 16 rows of a tile.
    assert torch.equal(ours.reshape(-1, 16)[1], w.reshape(-1, shape[-1])[1, :16])


@pytest.mark.parametrize("shape", [(256, 8), (512, 224), (300, 13), (257 * 512, 8)])
def test_e8m0_shuffle_matches_definition(shape):
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    ours = al.e8m0_shuffle(s)
    assert torch.equal(ours, documented_e8m0_shuffle(s))
    assert torch.equal(al.e8m0_unshuffle(ours, *shape), s)


def test_moe_scale_shapes_of_the_finals():
    # DeepSeek-R1 MXFP4, TP8 shard: 257 experts (256 + fused shared), I = 2048 / 8, H = 7168.
    assert al.moe_scales_keep_shape(257, 2 * 256, 7168 // 32)  # w13 scales [E, 2I, H/32]
    assert al.moe_scales_keep_shape(257, 7168, 256 // 32)  # w2 scales [E, H, I/32]
    assert not al.moe_scales_keep_shape(3, 16, 8)


def test_mla_page1_layout_reproduces_token_gather():
    from speedrun.overlays.mla_decode.reference import mla_decode_reference

    g = torch.Generator().manual_seed(2)
    slots, bs, heads = 64, 3, 16
    kv = torch.randn(slots, 1, 576, generator=g).to(torch.bfloat16)
    lens = [5, 0, 11]
    kv_indptr = torch.tensor([0, 5, 5, 16], dtype=torch.int32)
    kv_indices = torch.randperm(slots, generator=g)[:16].to(torch.int32)
    pages, meta = al.mla_page1_view(kv), al.mla_page1_meta(bs)
    assert pages.shape == (slots, 1, 1, 576) and pages.data_ptr() == kv.data_ptr()
    assert meta["qo_indptr"].tolist() == [0, 1, 2, 3] and meta["kv_last_page_lens"].tolist() == [1, 1, 1]
    q = torch.randn(bs, heads, 576, generator=g).to(torch.bfloat16)
    ref = mla_decode_reference(q, kv, kv_indptr, kv_indices, 0.07)
    for b in range(bs):
        rows = al.paged_tokens(pages, kv_indptr, kv_indices, meta["kv_last_page_lens"], b).float()
        assert rows.shape[0] == lens[b]
        assert torch.equal(rows, kv[kv_indices[kv_indptr[b] : kv_indptr[b + 1]].long(), 0].float())
        if lens[b]:
            p = torch.softmax(q[b].float() @ rows.T * 0.07, -1)
            torch.testing.assert_close(p @ rows[:, :512], ref[b], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(256, 8), (300, 12), (7, 224)])
def test_graph_safe_shuffle_views_equal_the_index_forms(shape):
    g = torch.Generator().manual_seed(5)
    s = torch.randint(0, 255, shape, dtype=torch.uint8, generator=g)
    assert torch.equal(al.e8m0_shuffle_view(s), al.e8m0_shuffle(s))
    w = torch.randint(0, 255, (2, 64, 128), dtype=torch.uint8, generator=g)
    assert torch.equal(al.shuffle_weight_view(w), al.shuffle_weight(w))


def test_gemm_a4w4_route_feeds_aiter_the_documented_layouts(monkeypatch):
    """aiter cannot run here: a stand-in `aiter.ops.gemm_op_a4w4.gemm_a4w4` implements the documented contract
    (B = shuffle_weight(W), B_scale / A_scale = e8m0_shuffle(...) padded, out [M_pad, N]) by undoing the shuffles
    with our index forms and multiplying; our route must then equal the reference GEMM on every row."""
    import sys
    import types

    from speedrun.overlays.mx.format import dequant_mxfp4
    from speedrun.overlays.mxfp4_gemm import aiter_backend
    from speedrun.overlays.mxfp4_gemm import sglang_hook as hook
    from speedrun.overlays.mxfp4_gemm.reference import mxfp4_gemm_ref, random_mxfp4_weight

    calls = []

    def gemm_a4w4(a, b, a_scale, b_scale, out, bias=None, alpha=1.0, beta=0.0, bpreshuffle=True):
        n, k2 = b.shape
        assert bpreshuffle and a.shape[0] == a_scale.shape[0] == out.shape[0] and a.shape[0] % 256 == 0
        w = al.unshuffle_weight(b)
        ws = al.e8m0_unshuffle(b_scale, n, k2 // 16)
        as_ = al.e8m0_unshuffle(a_scale, a.shape[0], k2 // 16)
        out.copy_((dequant_mxfp4(a, as_) @ dequant_mxfp4(w, ws).t()).to(out.dtype))
        calls.append(a.shape[0])
        return out

    mod = types.ModuleType("aiter.ops.gemm_op_a4w4")
    mod.gemm_a4w4 = gemm_a4w4
    for name in ("aiter", "aiter.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "aiter.ops.gemm_op_a4w4", mod)
    monkeypatch.setattr(torch.version, "hip", "6.4")
    monkeypatch.setattr(hook, "require_aiter", lambda op: None)
    monkeypatch.setattr(aiter_backend, "require_aiter", lambda op: None)
    monkeypatch.setenv("SPEEDRUN_MXFP4_GEMM_BACKEND", "aiter")

    w, ws = random_mxfp4_weight(64, 256, seed=3)
    layer = types.SimpleNamespace(weight=torch.nn.Parameter(w, requires_grad=False),
                                  weight_scale=torch.nn.Parameter(ws, requires_grad=False))  # fmt: skip
    hook.process_weights(lambda self, lyr: None, None, layer)
    assert torch.equal(al.unshuffle_weight(layer.speedrun_aiter_w), w)  # plain copies stay for other readers
    x = torch.randn(5, 256).to(torch.bfloat16)
    y = hook.apply_weights(lambda *a: 1 / 0, types.SimpleNamespace(out_dtype=torch.bfloat16), layer, x)
    assert calls == [256] and torch.equal(y, mxfp4_gemm_ref(x, w, ws))


def test_fingerprint_sees_through_refactors_and_catches_changes(tmp_path):
    """A helper-function refactor compiles to the same machine code on both archs; a real change does not; and
    `kernels compile --against` exits 1 on a changed kernel."""
    from speedrun.cli import _register_commands, app

    _register_commands()
    runner = CliRunner()
    first = runner.invoke(app, ["kernels", "compile", "--op", f"{SAMPLE}:refactor_specs", "--json"])
    assert first.exit_code == 0, first.output
    rows = {(r["kernel"], r["arch"]): r for r in json.loads(first.output)["rows"]}
    for arch in report.ARCHS:
        add, helper, sub = (rows[f"sample/{k}", arch] for k in ("add", "add_helper", "sub"))
        assert add["fingerprint"] == helper["fingerprint"] != sub["fingerprint"], arch
        assert add["instructions"] > 10
    old = tmp_path / "old.json"
    old.write_text(first.output)
    same = runner.invoke(app, ["kernels", "compile", "--op", f"{SAMPLE}:refactor_specs", "--against", str(old)])
    assert same.exit_code == 0 and "0 changed" in same.output, same.output
    data = json.loads(first.output)
    data["rows"][0]["fingerprint"] = "0" * 16
    old.write_text(json.dumps(data))
    changed = runner.invoke(app, ["kernels", "compile", "--op", f"{SAMPLE}:refactor_specs", "--against", str(old)])
    assert changed.exit_code == 1 and "changed: " in changed.output, changed.output
