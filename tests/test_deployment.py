"""Recipe `deployment` sections: validation with precise errors, placement over nodes and GPUs, and the dry-run of
every deployment recipe, each `sglang.launch_server` flag checked against SGLang 0.5.17's server_args.py source (read
as text) and the router command parsed by the real router's own argument parser."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from speedrun.launch.deploy import dry_run_text, make_plan
from speedrun.launch.server_flags import check_command, server_flags
from speedrun.overlays.environ import SETTINGS, PluginSettings
from speedrun.recipe import RecipeError, Side, TransferBackend, all_recipes, load_recipe
from speedrun.sglang_source import sglang_root, source_version

DEPLOYMENTS = [p for p in all_recipes() if load_recipe(p).deployment is not None]
BASE = {  # each deployment recipe and the single-node finals recipe it scales out
    "deepseek-r1-mxfp4-tp16-2n-mi355x": "deepseek-r1-mxfp4-mi355x",
    "deepseek-r1-mxfp4-dpa-ep16-2n-mi355x": "deepseek-r1-mxfp4-mi355x",
    "deepseek-r1-mxfp4-pd-2n-mi355x": "deepseek-r1-mxfp4-mi355x",
    "gpt-oss-120b-dp8-mi355x": "gpt-oss-120b-mi355x",
}
PARALLEL = {"tp", "dp", "ep", "dp_attention"}
needs_sglang = pytest.mark.skipif(sglang_root() is None, reason="SGLang's source: pip install --no-deps sglang==0.5.17")


def plan(r, side=Side.OVERLAY, hosts=None):
    return make_plan(r, side=side, run_dir=Path("/runs"), model_path=r.model.path, hosts=hosts)


def launch_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if " -m sglang.launch_server " in ln]


def settings_in(line: str) -> PluginSettings:
    """The plugin settings a printed launch line passes (its one SPEEDRUN_SETTINGS word)."""
    return PluginSettings.from_env(dict(w.split("=", 1) for w in shlex.split(line) if w.startswith(SETTINGS)))


def test_ships_the_scale_out_recipes_built_on_the_finals_ones():
    assert sorted(p.stem for p in DEPLOYMENTS) == sorted(BASE)
    for name, base_name in BASE.items():
        r, base = load_recipe(name), load_recipe(base_name)
        assert (r.model, r.env, r.overlays, r.accuracy, r.hardware) == (
            base.model, base.env, base.overlays, base.accuracy, base.hardware
        ), name  # fmt: skip
        same = {k: v for k, v in r.server.model_dump().items() if k not in PARALLEL}
        assert same == {k: v for k, v in base.server.model_dump().items() if k not in PARALLEL}, name


def test_layouts_of_the_shipped_recipes():
    tp16, dpa = load_recipe("deepseek-r1-mxfp4-tp16-2n-mi355x"), load_recipe("deepseek-r1-mxfp4-dpa-ep16-2n-mi355x")
    pd, dp8 = load_recipe("deepseek-r1-mxfp4-pd-2n-mi355x"), load_recipe("gpt-oss-120b-dp8-mi355x")
    assert [(p.name, p.node, p.nodes, p.gpus) for p in tp16.placements()] == [("mixed-0", 0, 2, 8)]
    assert (dpa.server.tp, dpa.server.dp, dpa.server.ep, dpa.server.dp_attention) == (16, 16, 16, True)
    assert [(p.name, p.node) for p in pd.placements()] == [("prefill-0", 0), ("decode-0", 1)]
    assert pd.deployment.transfer_backend == "mori" and pd.group_server(1, baseline=False).dp_attention
    assert [(p.node, p.base_gpu) for p in dp8.placements()] == [(0, g) for g in range(8)]
    assert (tp16.total_gpus, pd.total_gpus, dp8.total_gpus) == (16, 16, 8)  # tok/s/GPU divides by these


@needs_sglang
def test_transfer_backends_are_sglangs():
    from typing import get_args

    flags = server_flags()
    assert source_version(sglang_root()) == "0.5.17"
    assert set(get_args(TransferBackend)) <= flags["--disaggregation-transfer-backend"].choices
    assert "mori" in flags["--disaggregation-transfer-backend"].choices


@needs_sglang
@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("side", [Side.OVERLAY, Side.BASELINE], ids=str)
def test_every_dry_run_flag_exists_in_sglang(path, side):
    r = load_recipe(path)
    flags = server_flags()
    lines = launch_lines(dry_run_text(plan(r, side, hosts=[f"10.0.0.{n + 1}" for n in range(r.deployment.nodes)])))
    assert len(lines) == sum(p.nodes for p in r.placements())
    for line in lines:
        assert check_command(line, flags) == [], line


@needs_sglang
def test_flag_check_fails_on_what_sglang_lacks():
    flags = server_flags()
    line = "python -m sglang.launch_server --tp-size 2 --tensor-parallel 2 --disaggregation-transfer-backend rdma"
    assert check_command(line + " --enable-dp-attention yes", flags) == [
        "--tensor-parallel: not a flag of sglang.launch_server",
        "--disaggregation-transfer-backend rdma: not one of "
        "['ascend', 'fake', 'mooncake', 'mooncake_tcp', 'mori', 'nixl']",
        "--enable-dp-attention is a switch, given 'yes'",
    ]
    assert check_command("python -m sglang.launch_server --decode-attention-backend speedrun_mla", flags) == []


def test_dry_run_of_the_multi_node_layouts():
    text = dry_run_text(plan(load_recipe("deepseek-r1-mxfp4-dpa-ep16-2n-mi355x"), hosts=["10.0.0.1", "10.0.0.2"]))
    head, other = launch_lines(text)
    for line, rank in ((head, 0), (other, 1)):
        args = shlex.split(line)
        assert args[args.index("--node-rank") + 1] == str(rank) and args[args.index("--nnodes") + 1] == "2"
        assert args[args.index("--dist-init-addr") + 1] == "10.0.0.1:25000"  # both point at the instance's head
        assert {"--enable-dp-attention", "--tp-size", "--dp-size", "--ep-size"} <= set(args)
        assert settings_in(line).ops == ("mla_decode", "mxfp4_moe", "mxfp4_gemm")  # overlays on in every rank
    assert "--host 10.0.0.2" in other and settings_in(other).report_dir == Path("/runs/reports/mixed-0/node1")
    pd = dry_run_text(plan(load_recipe("deepseek-r1-mxfp4-pd-2n-mi355x")))
    prefill, decode = launch_lines(pd)
    assert (
        "--disaggregation-mode prefill --disaggregation-transfer-backend mori --disaggregation-bootstrap-port 8998"
        in prefill
    )
    assert "--disaggregation-mode decode --disaggregation-transfer-backend mori" in decode
    assert "--disaggregation-bootstrap-port" not in decode and "NODE1_ADDR" in decode
    assert "--hosts ADDR0,ADDR1" in pd


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.stem)
def test_router_command_parses_with_the_real_router(path):
    pytest.importorskip("sglang_router", reason="SGLang's router: pip install -e '.[dev]'")
    from sglang_router.launch_router import parse_router_args

    r = load_recipe(path)
    p = plan(r)
    argv = p.router.argv
    assert argv[1:3] == ["-m", "sglang_router.launch_router"]
    args = parse_router_args(argv[3:])
    assert args.policy == r.deployment.router.policy and args.port == 30000
    if r.deployment.disaggregated:
        assert args.pd_disaggregation
        assert args.prefill_urls == [(e.url, e.bootstrap_port) for e in p.endpoints if e.role == "prefill"]
        assert args.decode_urls == [e.url for e in p.endpoints if e.role == "decode"]
    else:
        assert not args.pd_disaggregation and args.worker_urls == [e.url for e in p.endpoints]


def write(tmp_path, deployment: dict, **fields) -> Path:
    recipe = {"name": "t", "model": {"path": "m"}, "hardware": {"platform": "rocm", "arch": "gfx950", "gpus": 8},
              "server": {"tp": 8}, "deployment": deployment, **fields}  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


BAD = {  # id: (deployment, extra recipe fields, the error line)
    "tp-x-dp-vs-nodes": ({"nodes": 2, "workers": [{"nodes": 2}]}, {},
                         "deployment.workers.0 (mixed): tp = 8 GPUs, but nodes = 2 x hardware.gpus = 8 is 16"),
    "pd-one-role": ({"nodes": 1, "transfer_backend": "mori", "workers": [{"role": "prefill"}]}, {},
                    "deployment.workers: PD disaggregation needs prefill and decode groups only (prefill)"),
    "pd-and-mixed": ({"nodes": 3, "transfer_backend": "mori",
                      "workers": [{"role": "prefill"}, {"role": "decode"}, {}]}, {}, "(decode, mixed, prefill)"),
    "pd-no-backend": ({"nodes": 2, "workers": [{"role": "prefill"}, {"role": "decode"}]}, {},
                      "deployment.transfer_backend: required with prefill/decode workers"),
    "backend-without-pd": ({"nodes": 1, "transfer_backend": "nixl", "workers": [{}]}, {},
                           "deployment: transfer_backend, ib_device and router prefill/decode policies need"),
    "backend-name": ({"nodes": 2, "transfer_backend": "rdma", "workers": [{"role": "prefill"}, {"role": "decode"}]},
                     {}, "deployment.transfer_backend: Input should be 'mooncake', 'mooncake_tcp', 'nixl' or 'mori'"),
    "mori-on-cuda": ({"nodes": 2, "transfer_backend": "mori", "workers": [{"role": "prefill"}, {"role": "decode"}]},
                     {"hardware": {"platform": "cuda", "arch": "sm90", "gpus": 8}}, "mori is AMD's transfer engine"),
    "nodes-count": ({"nodes": 1, "workers": [{"replicas": 2}]}, {},
                    "deployment.nodes = 1, but the worker groups fill 2 node(s)"),
    "group-key": ({"nodes": 1, "workers": [{"server": {"tpp": 2}}]}, {}, "has unknown server field(s) ['tpp']"),
    "group-type": ({"nodes": 1, "workers": [{"server": {"tp": "two"}}]}, {},
                   "deployment.workers.0 (mixed).server.tp: Input should be a valid integer (got 'two')"),
    "dp-over-nodes": ({"nodes": 2, "workers": [{"nodes": 2, "server": {"tp": 8, "dp": 2}}]}, {},
                      "dp = 2 over 2 nodes needs dp_attention"),
    "ep-divides-tp": ({"nodes": 1, "workers": [{"server": {"ep": 3}}]}, {}, "ep = 3 must divide tp = 8"),
    "tiling": ({"nodes": 1, "workers": [{"server": {"tp": 3}}]}, {}, "tp = 3 GPUs must divide hardware.gpus = 8"),
    "router-policy": ({"nodes": 1, "workers": [{}], "router": {"policy": "fastest"}}, {},
                      "deployment.router.policy: Input should be 'cache_aware', 'round_robin', 'random' or"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_deployment_is_one_precise_error(tmp_path, case):
    deployment, fields, message = BAD[case]
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, deployment, **fields))
    assert message in str(exc.value), str(exc.value)


def test_pd_on_one_node_packs_and_numbers_ports(tmp_path):
    groups = [{"role": "prefill", "server": {"tp": 4}}, {"role": "decode", "replicas": 2, "server": {"tp": 2}}]
    r = load_recipe(write(tmp_path, {"nodes": 1, "transfer_backend": "nixl", "workers": groups}))
    assert [(p.name, p.node, p.base_gpu, p.gpus) for p in r.placements()] == [
        ("prefill-0", 0, 0, 4), ("decode-0", 0, 4, 2), ("decode-1", 0, 6, 2)]  # fmt: skip
    p = plan(r)
    url = "http://127.0.0.1:"
    assert [(e.url, e.bootstrap_port) for e in p.endpoints] == [(url + "30010", 8998), (url + "30011", None),
                                                                (url + "30012", None)]  # fmt: skip
    assert "--base-gpu-id 6" in p.parts[2].spec.shell() and "--tp-size 2" in p.parts[2].spec.shell()


def cli(*args: str):
    from speedrun.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, list(args))


def test_launch_options_are_checked_with_one_line_errors(tmp_path):
    multi = "deepseek-r1-mxfp4-tp16-2n-mi355x"
    for args, message in [
        ((multi, "--node-rank", "2", "--dry-run"), f"--node-rank 2: {multi} has nodes 0..1"),
        ((multi, "--hosts", "10.0.0.1", "--dry-run"), "--hosts: 1 address(es) for a deployment of 2 node(s)"),
        ((multi, "--node-rank", "0", "--out", str(tmp_path)), f"--hosts: {multi} spans 2 nodes"),
        (("deepseek-r1-mxfp4-mi355x", "--node-rank", "1"), "deepseek-r1-mxfp4-mi355x has no deployment section"),
    ]:
        res = cli("launch", *args)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], res.output


def test_dry_run_of_one_node(tmp_path):
    res = cli("launch", "gpt-oss-120b-dp8-mi355x", "--dry-run", "--node-rank", "0", "--port", "31000")
    assert res.exit_code == 0, res.output
    assert len(launch_lines(res.output)) == 8 and "--port 31000 --policy round_robin --worker-urls" in res.output


def test_bench_of_a_multi_node_recipe_says_how_to_run_it(tmp_path):
    res = cli("bench", "deepseek-r1-mxfp4-tp16-2n-mi355x", "--out", str(tmp_path / "b"), "--no-progress")
    assert res.exit_code == 3, res.output
    assert "spans 2 nodes: start it with `speedrun launch deepseek-r1-mxfp4-tp16-2n-mi355x --node-rank N" in res.output
    assert "--server http://HEAD:PORT" in res.output and "Traceback" not in res.output
