"""The ops' config tables as typed models (overlays/buckets.py Knobs, overlays/<op>/config.py): every shipped table
validates and writes back as itself, overrides merge only the knobs an entry sets, and plans hold the models."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from speedrun.overlays.arch import ARCHS, HERE
from speedrun.overlays.mla_decode import config as mla
from speedrun.overlays.mxfp4_gemm import config as gemm
from speedrun.overlays.mxfp4_moe import config as moe

CHECK = {"mla_decode": mla.check_table, "mxfp4_gemm": gemm.check_table, "mxfp4_moe": moe.check_table}


def _raw(op: str, arch: str) -> dict:
    return json.loads((HERE / op / "configs" / f"{arch}.json").read_text())


def _entries(op: str, table) -> dict:
    """key -> model of every entry of a validated table (the GEMM's per-shape ones too)."""
    return {**table.buckets, **table.shapes} if op == "mxfp4_gemm" else table


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", list(CHECK))
def test_shipped_tables_write_back_as_themselves(op: str, arch: str) -> None:
    """entry() is the table's own JSON (set knobs only, enums as values): what sweep rows carry, so the tuner's
    "current config" comparison and what it writes back are unchanged by the typed models."""
    raw = _raw(op, arch)
    entries = _entries(op, CHECK[op](raw, f"{op} {arch}"))
    assert set(entries) == {k for k in raw if not k.startswith("_")}
    for key, cfg in entries.items():
        assert cfg.entry() == raw[key], (op, arch, key)
        assert json.loads(json.dumps(cfg.entry())) == raw[key]


def test_with_overrides_takes_only_the_knobs_an_entry_sets() -> None:
    bucket = mla.MlaBucket.checked(_raw("mla_decode", "sm90")["heads<=16"], "t")
    fp8 = mla.Fp8Knobs.checked({"num_warps": 2, "BLOCK_N": None}, "t")  # BLOCK_N: null is "not overridden"
    run = bucket.with_overrides(fp8)
    assert run.num_warps == 2 and run.BLOCK_N == bucket.BLOCK_N and run.split_d == bucket.split_d
    assert run.entry() == {**bucket.entry(), "num_warps": 2}
    assert bucket.with_overrides(None) is bucket
    # a8w8's own knobs (mma_m, pv) have no bucket field: they stay on cfg.a8w8, the kernel knobs move
    a8 = bucket.with_overrides(bucket.a8w8)
    assert a8.BLOCK_N == bucket.a8w8.BLOCK_N and not hasattr(a8, "mma_m") and a8.a8w8 == bucket.a8w8


def test_models_are_frozen_typed_and_name_bad_knobs() -> None:
    cfg = gemm.GemmBucket.checked({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "deq": 2, "route": "prequant"}, "t")
    assert cfg.deq is gemm.WDeq.HALVES and cfg.route is gemm.Route.PREQUANT
    assert (cfg.GROUP, cfg.num_warps, cfg.SPLIT_K, cfg.MIN_K_TILES, cfg.num_stages) == (1, 4, 0, 2, None)  # schema
    assert cfg.entry() == {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "deq": 2, "route": "prequant"}
    with pytest.raises(ValidationError):
        cfg.BLOCK_N = 32
    assert cfg.replace(BLOCK_N=32).BLOCK_N == 32 and cfg.BLOCK_N == 64
    with pytest.raises(ValueError, match="GemmBucket: deq: Input should be 0, 1, 2, 3 or 4"):
        cfg.replace(deq=9)
    with pytest.raises(ValueError, match="where: BLOCK_K: Field required"):
        gemm.GemmBucket.checked({"BLOCK_M": 16, "BLOCK_N": 64}, "where")


def test_launch_knobs_are_the_set_launch_options() -> None:
    cfg = moe.MoeBucket.checked(_raw("mxfp4_moe", "gfx950")["w4a4:tpe<=1"], "t")
    assert cfg.launch_knobs() == {k: cfg.entry()[k] for k in ("waves_per_eu", "matrix_instr_nonkdim", "kpack")}
    assert moe.MoeBucket.checked(_raw("mxfp4_moe", "sm90")["w4a4:tpe<=1"], "t").launch_knobs() == {}


def test_plans_hold_the_models() -> None:
    from speedrun.overlays.mla_decode import api as mla_api
    from speedrun.overlays.mxfp4_gemm import api as gemm_api
    from speedrun.overlays.mxfp4_moe import api as moe_api

    plan = mla_api.make_plan(16, torch.bfloat16, torch.float8_e4m3fn, device="cpu", arch="sm90", compute="a8w8")
    assert isinstance(plan.cfg, mla.MlaBucket) and plan.cfg.fp8_compute is mla.Compute.A8W8
    assert plan.cfg.BLOCK_N == mla_api.config_for(16, "sm90").a8w8.BLOCK_N
    launch = gemm_api.make_plan(2112, 7168, "swz128", device="cpu", arch="sm90").launch(1)
    swz = gemm_api.pick_config(1, 2112, 7168, "sm90").swz  # the bucket's, with this weight's per-shape entry
    assert isinstance(launch.quant.cfg, gemm.GemmBucket) and launch.quant.cfg.BLOCK_N == swz.BLOCK_N
    assert type(launch.quant.consts["W_DEQ"]) is int and type(launch.quant.consts["A_MODE"]) is int
    assert all(isinstance(c, moe.MoeBucket) for c in moe_api.table("sm90").values())
