"""`speedrun kernels compile --check-device`: the comparison logic (CPU), the AOT side against the report
(CPU, real compiles), and the whole check on an H100 (gpu)."""

import pytest

from speedrun.eval.readiness import device_check

SAMPLE = "speedrun.eval.readiness.sample"
SAME = {"regs": 168, "scratch": 0, "shared": 32768, "target": "('cuda', 90, 32)"}


def test_compare_flags_each_field():
    assert device_check.compare(SAME, dict(SAME)) == []
    dev = {**SAME, "regs": 170, "scratch": 16, "target": "('cuda', 100, 32)"}
    out = device_check.compare(SAME, dev)
    assert len(out) == 3 and out[0] == "regs: AOT 168 vs device 170" and "scratch: AOT 0 vs device 16" in out
    assert device_check.compare(SAME, {}) == [f"{f}: AOT {SAME[f]} vs device None" for f in device_check.FIELDS] + [
        "target: AOT ('cuda', 90, 32) vs device None"
    ]


AOT_CHECK = """
import json, sys
from speedrun.eval.readiness import device_check
from speedrun.eval.readiness.report import measure
from speedrun.eval.readiness.sample import bad_specs, matmul_spec
out = []
for spec in (matmul_spec("sm90"), bad_specs("sm90")[1]):
    mine = device_check.aot_figures(spec, sys.argv[1] + "/" + spec.name.replace("/", "_"))
    row = measure(spec, "sm90")
    out.append([[mine["regs"], mine["scratch"], mine["shared_total"]], [row["vgpr"], row["scratch"], row["shared"]]])
print(json.dumps(out))
"""


def test_aot_figures_match_the_compile_report(tmp_path):
    """In a child process: a real compile in this process leaves Triton unable to interpret later tests' kernels."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", AOT_CHECK, str(tmp_path)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    pairs = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(mine == report for mine, report in pairs), pairs
    assert pairs[1][0][1] > 0  # the squeezed one really spills, so the check can see a scratch difference


@pytest.mark.gpu
def test_check_device_on_the_gpu():
    from speedrun.overlays.arch import current_arch

    if current_arch() != "sm90":
        pytest.skip("the sm90 report can only be checked on an sm90 GPU")
    result = device_check.run([SAMPLE], workers=2)
    assert len(result["rows"]) == 2 and all("device" in r for r in result["rows"]), result
    assert result["failed"] == 0, [r["mismatches"] for r in result["rows"]]
    one = device_check.run(["mla_decode"], workers=2, limit=1)
    assert len(one["rows"]) == 1 and one["failed"] == 0, one["rows"]


def test_cli_refusals(monkeypatch):
    from typer.testing import CliRunner

    from speedrun.commands import kernels_app
    from speedrun.overlays import arch

    monkeypatch.setattr(arch, "current_arch", lambda: "cpu")
    res = CliRunner().invoke(kernels_app, ["compile", "--arch", "sm90", "--check-device"])
    assert res.exit_code == 2 and "needs an sm90 GPU (found 'cpu')" in " ".join(res.output.split())
    res = CliRunner().invoke(kernels_app, ["compile", "--arch", "gfx950", "--check-device"])
    assert res.exit_code == 2 and "not --arch gfx950" in " ".join(res.output.split())
