"""`speedrun kernels tune`: winner selection per bucket and the config write-back, on sweep fixtures (no GPU)."""

import json
import math
import os

import pytest
from typer.testing import CliRunner

from speedrun.commands import kernels_app
from speedrun.eval.kernels import tune

TABLE = {
    "_meta": {"arch": "sm90", "tuned": False, "why": "reasoned"},
    "m<=16": {"BLOCK_N": 64, "num_warps": 4},
    "m<=32": {"BLOCK_N": 64, "num_warps": 4},
    "heads<=16": {"BLOCK_N": 32, "fp8": {"BLOCK_N": 32, "num_stages": 5}},
}


def row(bucket, variant, m, us, config=None, **extra):
    r = {"impl": "speedrun", "bucket": bucket, "variant": variant, "m": m, "n": 4096, "gbps": 1.5, "us": us}
    return {**r, "config": config if config is not None else {}, **extra}


def bucket16(times: dict[str, tuple[float, float]], configs=None) -> list[dict]:
    configs = configs or {}
    return [row("m<=16", v, m, t[i], configs.get(v)) for v, t in times.items() for i, m in enumerate((1, 16))]


def test_geomean_winner_and_speedup():
    rows = bucket16({"config": (10.0, 20.0), "wide": (8.0, 22.0), "fast": (9.0, 15.0)},
                    {"wide": {"BLOCK_N": 128}, "fast": {"num_warps": 8}})  # fmt: skip
    (c,) = tune.select(rows, TABLE)
    assert (c.bucket, c.current, c.winner, c.shapes, c.candidates) == ("m<=16", "config", "fast", 2, 3)
    assert c.speedup == pytest.approx(1 / math.sqrt(0.9 * 0.75))
    # "wide" wins the small shape but loses the geomean: sqrt(0.8 * 1.1) = 0.938 > sqrt(0.9 * 0.75) = 0.822
    assert c.config == {"num_warps": 8}


def test_variant_missing_a_shape_cannot_win_and_errors_are_dropped():
    rows = bucket16({"config": (10.0, 20.0)}) + [row("m<=16", "partial", 1, 1.0, {"BLOCK_N": 16})]
    rows += [row("m<=16", "broken", m, 0.5, {"BLOCK_N": 8}, error="OutOfResources") for m in (1, 16)]
    rows += [{**row("m<=16", "sglang", m, 0.1), "impl": "sglang"} for m in (1, 16)]  # a baseline, not ours
    (c,) = tune.select(rows, TABLE)
    assert c.winner == "config" and c.candidates == 1 and not c.changed


def test_tie_keeps_current_and_min_gain():
    rows = bucket16({"config": (10.0, 20.0), "same": (10.0, 20.0), "bit": (9.9, 19.9)},
                    {"same": {"num_warps": 8}, "bit": {"num_warps": 2}})  # fmt: skip
    assert tune.select(rows, TABLE, min_gain=1.02)[0].winner == "config"  # 0.7 % is noise
    assert tune.select(rows, TABLE, min_gain=1.0)[0].winner == "bit"
    tie = bucket16({"config": (10.0, 20.0), "b": (5.0, 10.0), "a": (5.0, 10.0)},
                   {"a": {"num_warps": 8}, "b": {"num_warps": 2}})  # fmt: skip
    assert tune.select(tie, TABLE)[0].winner == "a"  # equal challengers: by name, deterministic


def test_shapes_a_variant_leaves_alone_do_not_dilute_its_gain():
    """An FP8-only knob: 5% faster on both FP8 shapes, on the bf16 ones the bench reuses the default's timing (the
    same kernel runs): its score is the FP8 shapes' geomean (1.053x, past a 1.03 gate), not one diluted by ratios
    of exactly 1 (1.026x); a variant timed on its own at every shape is judged on all of them."""

    def mla(variant, times, config=None):
        return [row("heads<=16", variant, bs, t, config, kv_dtype=kv) for (kv, bs), t in zip(
            (("fp8", 32), ("fp8", 256), ("bf16", 32), ("bf16", 256)), times, strict=True)]  # fmt: skip

    rows = mla("default", (10.0, 100.0, 12.0, 120.0)) + mla("fp8only", (9.5, 95.0, 12.0, 120.0), {"fp8": {"x": 1}})
    (c,) = tune.select(rows, TABLE, min_gain=1.03)
    assert (c.winner, c.shapes) == ("fp8only", 4) and c.speedup == pytest.approx(1 / 0.95)
    timed = mla("default", (10.0, 100.0, 12.0, 120.0)) + mla("both", (9.5, 95.0, 12.1, 121.0), {"fp8": {"x": 1}})
    assert tune.select(timed, TABLE, min_gain=1.03)[0].winner == "default"


def test_missing_bucket_field_names_the_file(tmp_path):
    f = tmp_path / "mxfp4_gemm_sweep.json"
    f.write_text(json.dumps({"rows": [{"impl": "speedrun", "variant": "config", "config": {}, "m": 1, "us": 3.0}]}))
    with pytest.raises(tune.TuneError, match=r"mxfp4_gemm_sweep\.json: row 0 .*no 'bucket'"):
        tune.select(tune.load_rows(f), TABLE, str(f))


def test_no_current_row_unknown_bucket_and_all_errors():
    rows = bucket16({"other": (1.0, 1.0)}, {"other": {"BLOCK_N": 16}})
    with pytest.raises(tune.TuneError, match="no row measures the current config"):
        tune.select(rows, TABLE)
    with pytest.raises(tune.TuneError, match=r"'m<=999' is not a config key .*'m<=16'"):
        tune.select([row("m<=999", "config", 1, 1.0)], TABLE)
    with pytest.raises(tune.TuneError, match="no usable rows"):
        tune.select([row("m<=16", "config", 1, 1.0, error="boom")], TABLE)


def test_shapes_are_those_the_current_config_was_measured_on():
    rows = bucket16({"default": (10.0, 20.0), "x": (5.0, 10.0)}, {"x": {"BLOCK_N": 16}})
    rows.append(row("m<=16", "config", 1, 10.0))  # a no-op too, but on one shape only
    rows.append(row("m<=16", "extra", 64, 1.0, {"BLOCK_N": 8}))  # a shape with no current time: not compared
    (c,) = tune.select(rows, TABLE)
    assert (c.current, c.winner, c.shapes, c.candidates) == ("default", "x", 2, 2)


def test_apply_merges_keeps_meta_and_other_buckets():
    rows = bucket16({"config": (10.0, 20.0), "fast": (5.0, 10.0)}, {"fast": {"num_warps": 8}})
    rows += [row("heads<=16", v, 1, t, c) for v, t, c in (("default", 4.0, {}), ("st6", 3.0, {"num_stages": 6}))]
    choices = tune.select(rows, TABLE)
    out = tune.apply(TABLE, choices, {"gpu": "NVIDIA H100 80GB HBM3", "command": "speedrun kernels tune"})
    assert out["m<=16"] == {"BLOCK_N": 64, "num_warps": 8}
    assert out["m<=32"] == TABLE["m<=32"]
    assert out["heads<=16"] == {**TABLE["heads<=16"], "num_stages": 6}
    assert out["_meta"]["why"] == "reasoned" and out["_meta"]["tuned"]["gpu"].startswith("NVIDIA H100")
    assert out["_meta"]["tuned"]["buckets"]["m<=16"] == {"from": "config", "to": "fast", "speedup": 2.0,
                                                         "shapes": 2}  # fmt: skip
    assert TABLE["m<=16"]["num_warps"] == 4  # the input is not modified


@pytest.mark.parametrize("bucket", ["heads<=16/fp8", "16", "_meta"])
def test_only_top_level_bucket_keys(bucket):
    """Buckets are the table's own keys (buckets.py grammar): the old nested paths ("a/b", a bare "16" found under
    "default") are gone, and so is metadata."""
    rows = [row(bucket, v, 1, t, c) for v, t, c in (("default", 4.0, {}), ("st3", 3.0, {"num_stages": 3}))]
    with pytest.raises(tune.TuneError, match=f"{bucket!r} is not a config key"):
        tune.select(rows, {**TABLE, "default": {"16": {"BLOCK_N": 64}}})


def test_shape_of_ignores_measurements():
    a = row("b", "v", 1, 3.0, gpu="H100", timing="graph", bytes=1.0e6, pct_hbm_peak=3.0, kv_dtype="fp8")
    b = row("b", "w", 1, 9.0, gpu="H100", timing="do_bench", bytes=1.0e6, pct_hbm_peak=1.0, kv_dtype="fp8")
    assert tune.shape_of(a) == tune.shape_of(b) == (("kv_dtype", "fp8"), ("m", 1), ("n", 4096))


def test_cli_from_stored_sweep_and_write(tmp_path, monkeypatch):
    from speedrun.overlays import arch

    op_dir = tmp_path / "mxfp4_gemm" / "configs"
    op_dir.mkdir(parents=True)
    (op_dir / "sm90.json").write_text(json.dumps(TABLE, indent=2))
    monkeypatch.setattr(arch, "HERE", tmp_path)
    rows = bucket16({"config": (10.0, 20.0), "fast": (5.0, 10.0)}, {"fast": {"num_warps": 8}})
    (tmp_path / "mxfp4_gemm_sweep.json").write_text(json.dumps({"rows": [{**r, "gpu": "H100"} for r in rows]}))
    res = CliRunner().invoke(kernels_app, ["tune", "--op", "mxfp4_gemm", "--from", str(tmp_path), "--write"])
    assert res.exit_code == 0, res.output
    assert "fast" in res.output and "2.000x" in res.output
    written = json.loads((op_dir / "sm90.json").read_text())
    assert written["m<=16"]["num_warps"] == 8 and written["_meta"]["tuned"]["gpu"] == "H100"
    assert "--from" in written["_meta"]["tuned"]["command"] or written["_meta"]["tuned"]["sweep"].endswith(".json")


def test_cli_refuses_without_gpu_and_unknown_op(monkeypatch):
    from speedrun.overlays import arch

    monkeypatch.setattr(arch, "current_arch", lambda: "cpu")  # also on a GPU host: never start a real sweep
    res = CliRunner().invoke(kernels_app, ["tune", "--op", "mxfp4_gemm"])
    assert res.exit_code == 2 and "no GPU visible" in " ".join(res.output.split())
    res = CliRunner().invoke(kernels_app, ["tune", "--op", "nope"])
    assert res.exit_code == 2 and "unknown op" in res.output


def test_cli_refuses_gfx950(monkeypatch):
    from speedrun.overlays import arch

    monkeypatch.setattr(arch, "current_arch", lambda: "gfx950")
    res = CliRunner().invoke(kernels_app, ["tune", "--op", "mxfp4_gemm"])
    assert res.exit_code == 2 and "gfx950 tables are reasoned" in " ".join(res.output.split())


def test_full_config_rows_write_only_the_change_and_replace_nested():
    """mla_decode style: rows carry the whole bucket config; a variant's "fp8": {} clears the fp8 overrides."""
    base = TABLE["heads<=16"]
    s4 = {**base, "BLOCK_N": 64, "fp8": {}}
    variants = (("default", 10.0, base), ("s4", 7.0, s4), ("flat", 9.5, {**base, "snap": False}))
    shapes = [(d, m) for d in ("bf16", "fp8_e4m3") for m in (1, 32)]
    rows = [row("heads<=16", v, m, t, c, kv_dtype=d) for d, m in shapes for v, t, c in variants]
    (c,) = tune.select(rows, TABLE)
    assert (c.current, c.winner, c.shapes, c.config) == ("default", "s4", 4, {"BLOCK_N": 64, "fp8": {}})
    out = tune.apply(TABLE, [c], {"gpu": "H100"})
    assert out["heads<=16"] == {"BLOCK_N": 64, "fp8": {}}


def test_gemm_per_shape_values_do_not_leak():
    """mxfp4_gemm style: a shape with a per-shape entry (`<N>x<K>:m<=16`) runs other knobs than its bucket's."""
    table = {**TABLE, "7168x2048:m<=16": {"BLOCK_N": 32}}
    own, over = TABLE["m<=16"], {**TABLE["m<=16"], "BLOCK_N": 32}
    rows = [row("m<=16", "config", 1, 10.0, own, nk="36864x7168"), row("m<=16", "w8", 1, 8.0,
            {**own, "num_warps": 8}, nk="36864x7168"), row("m<=16", "config", 1, 10.0, over, nk="7168x2048"),
            row("m<=16", "w8", 1, 8.0, {**over, "num_warps": 8}, nk="7168x2048")]  # fmt: skip
    (c,) = tune.select(rows, table)
    assert (c.bucket, c.current, c.winner, c.config) == ("m<=16", "config", "w8", {"num_warps": 8})
    out = tune.apply(table, [c], {})
    assert out["m<=16"] == {"BLOCK_N": 64, "num_warps": 8} and out["7168x2048:m<=16"] == {"BLOCK_N": 32}


def test_fresh_sweep_runs_the_bench_and_judges_its_file(tmp_path, monkeypatch):
    """The sweep is the op's bench run as `python -m <module> --out DIR --sweep`: a file it wrote is used (a non-zero
    exit only warns), none (or only a stale one) fails naming the file and the exit code."""
    from speedrun.eval.kernels import BENCH

    (tmp_path / "fake_sweep.py").write_text(
        "import pathlib, sys\nout = pathlib.Path(sys.argv[2])\n"
        "if out.name == 'writes': (out / 'fake_sweep.json').write_text('[]')\nsys.exit(3)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setitem(BENCH, "fake", "fake_sweep")
    (tmp_path / "writes").mkdir()
    (tmp_path / "silent").mkdir()
    stale = tmp_path / "silent" / "fake_sweep.json"
    stale.write_text("[]")
    os.utime(stale, (1e9, 1e9))  # from an earlier run: not this sweep's result
    warned = []
    assert tune.sweep_file("fake", tmp_path / "writes", None, warned.append) == tmp_path / "writes/fake_sweep.json"
    assert warned == ["fake: sweep exited with code 3; using the rows it wrote"]
    with pytest.raises(tune.TuneError, match=r"fake: the sweep wrote no .*silent/fake_sweep.json \(exit code 3\)"):
        tune.sweep_file("fake", tmp_path / "silent", None, warned.append)
    with pytest.raises(tune.TuneError, match=r"fake: no .*elsewhere/fake_sweep.json"):
        tune.sweep_file("fake", tmp_path, tmp_path / "elsewhere", warned.append)


def gemm_rows(nk: str, times: dict[str, tuple[float, float]], configs: dict[str, dict]) -> list[dict]:
    """Rows of one weight shape at M 1 and 16 in bucket m<=16, configs as the GEMM sweep writes them (the whole
    bucket entry, the swz128 knobs nested), the current row marked."""
    return [row("m<=16", v, m, t[i], configs[v], nk=nk, w_layout="swz128", current=v == "config")
            for v, t in times.items() for i, m in enumerate((1, 16))]  # fmt: skip


SWZ_TABLE = {"_layout": "swz128", "m<=16": {"BLOCK_N": 64, "num_warps": 4, "swz": {"BLOCK_N": 128, "CTAS_PER_SM": 3}}}
BASE = SWZ_TABLE["m<=16"]
BN64 = {**BASE, "swz": {"BLOCK_N": 64, "CTAS_PER_SM": 6}}


def test_per_shape_winners_are_flat_entries_over_a_kept_bucket():
    """A variant that wins one weight shape (geomean over its Ms) but not the bucket becomes a `<N>x<K>:m<=16`
    entry with the flat knobs it changes (the swz overrides unnested: a shape entry wins over them); a shape whose
    best gain is under the threshold, or measured on another layout, gets none."""
    rows = gemm_rows("2112x7168", {"config": (10.0, 10.0), "bn64": (8.8, 9.0)}, {"config": BASE, "bn64": BN64})
    rows += gemm_rows("36864x7168", {"config": (80.0, 90.0), "bn64": (130.0, 140.0)}, {"config": BASE, "bn64": BN64})
    rows += gemm_rows("7168x2304", {"config": (10.0, 10.0), "bn64": (9.8, 9.9)}, {"config": BASE, "bn64": BN64})
    plain = [
        {**r, "w_layout": "plain", "nk": "4096x512", "us": r["us"] / (3 if r["variant"] == "bn64" else 1)}
        for r in gemm_rows("x", {"config": (10.0, 10.0), "bn64": (10.0, 10.0)}, {"config": BASE, "bn64": BN64})
    ]
    (bucket,) = tune.select(rows, SWZ_TABLE)
    assert not bucket.changed  # 36864x7168 loses 1.6x: the bucket keeps its config
    (shape,) = tune.select_shapes(rows + plain, SWZ_TABLE, {"m<=16"}, min_gain=1.05)
    assert (shape.bucket, shape.winner, shape.shapes) == ("2112x7168:m<=16", "bn64", 2)
    assert shape.config == {"BLOCK_N": 64, "CTAS_PER_SM": 6} and math.isclose(shape.speedup, 1 / math.sqrt(0.88 * 0.9))
    assert tune.select_shapes(rows, SWZ_TABLE, set(), min_gain=1.05) == []  # the bucket changes: none
    out = tune.apply(SWZ_TABLE, [bucket, shape], {"gpu": "H100"})
    assert out["2112x7168:m<=16"] == {"BLOCK_N": 64, "CTAS_PER_SM": 6} and out["m<=16"] == BASE
    assert out["_meta"]["tuned"]["buckets"]["2112x7168:m<=16"]["to"] == "bn64"


def test_per_shape_needs_rows_that_name_their_weight(tmp_path, monkeypatch):
    from speedrun.overlays import arch

    op_dir = tmp_path / "mla_decode" / "configs"
    op_dir.mkdir(parents=True)
    (op_dir / "sm90.json").write_text(json.dumps(TABLE, indent=2))
    monkeypatch.setattr(arch, "HERE", tmp_path)
    rows = [row("heads<=16", v, 1, t, c) for v, t, c in (("default", 4.0, {}), ("st6", 3.0, {"num_stages": 6}))]
    (tmp_path / "mla_decode_sweep.json").write_text(json.dumps(rows))
    res = CliRunner().invoke(
        kernels_app, ["tune", "--op", "mla_decode", "--from", str(tmp_path), "--per-shape", "1.05"]
    )
    assert res.exit_code == 1 and "name no weight shape ('nk')" in " ".join(res.output.split())
