"""MI355X readiness on the CPU: the AOT compile report (both archs, our own small kernels), occupancy maths,
failure verdicts and exit codes, the roofline estimate, and the machine-code fingerprint. (aiter's
weight/scale layouts, which serving code uses, are tested in overlays/mx/test_aiter_layouts.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from speedrun.eval.readiness import report, resources, roofline
from speedrun.overlays.ops import OPS

SAMPLE = "speedrun.eval.readiness.sample"


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
    from speedrun.eval.readiness.sample import MM_SIG

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
