"""overlays.warmup: the Ms a plan is warmed at (both ends of every bucket, the largest forward as the cap), once
per process and plan, reported; a failing size is reported, not fatal; the setting turns it off."""

import pytest

from speedrun.overlays import environ, report, warmup
from speedrun.overlays.buckets import Buckets
from speedrun.overlays.mxfp4_moe import api as moe


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEEDRUN_REPORT_DIR", str(tmp_path))
    monkeypatch.setattr(warmup, "_done", set())
    monkeypatch.setattr(warmup, "_totals", {})
    environ.reset()
    report.start()
    yield
    environ.reset()


def test_bucket_edges_cover_every_bucket_of_the_served_moe_table():
    """DeepSeek's shard (E 257, top-9) on sm90's w4a4 buckets: every bucket is hit at its lowest and highest M,
    each M picks the bucket it stands for, nothing past the cap."""
    e, topk, cap = 257, 9, 8192
    buckets = moe._buckets("sm90", moe.Fmt.W4A4)
    ms = warmup.bucket_ms(buckets, topk / e, cap)
    picked = {buckets.pick(m * topk / e) for m in ms}
    assert picked == {k for _, k in buckets.upto} | {buckets.above}
    assert ms[0] == 1 and ms[-1] == cap and ms == sorted(set(ms))
    for m in ms:  # an edge: one M more (or less) leaves the bucket, or the range ends
        key = buckets.pick(m * topk / e)
        assert buckets.pick((m + 1) * topk / e) != key or buckets.pick((m - 1) * topk / e) != key or m in (1, cap)


def test_gemm_buckets_and_the_cap():
    b = Buckets.of(["m<=16", "m<=64", "m<=1024", "m>1024"], "m")
    assert warmup.bucket_ms(b, 1.0, 4096) == [1, 16, 17, 64, 65, 1024, 1025, 4096]
    assert warmup.bucket_ms(b, 1.0, 32) == [1, 16, 17, 32]  # capped: the largest forward
    assert warmup.max_tokens() == warmup.DEFAULT_MAX_M  # no SGLang server in this process


def test_warm_runs_once_per_key_and_reports(tmp_path):
    seen = []
    warmup.warm("plan-a", "mxfp4_moe", [1, 8], seen.append)
    warmup.warm("plan-a", "mxfp4_moe", [1, 8], seen.append)  # the same plan (another layer): nothing
    warmup.warm("plan-b", "mxfp4_moe", [3], seen.append)
    assert seen == [1, 8, 3]
    assert report.snapshot()["mxfp4_moe_warmup"]["calls"] == 3


def test_a_failing_size_is_reported_and_the_rest_still_run():
    seen = []

    def call(m):
        if m == 2:
            raise RuntimeError("out of resources")
        seen.append(m)

    warmup.warm("p", "mxfp4_gemm", [1, 2, 3], call)
    assert seen == [1, 3]
    assert report.snapshot()["errors"] == ["mxfp4_gemm warm-up at M=2: RuntimeError: out of resources"]
    assert report.snapshot()["mxfp4_gemm_warmup"]["calls"] == 2


def test_the_setting_turns_it_off(monkeypatch):
    monkeypatch.setenv("SPEEDRUN_WARMUP", "0")
    environ.reset()
    seen = []
    warmup.warm("p", "mxfp4_moe", [1], seen.append)
    assert seen == [] and "mxfp4_moe_warmup" not in report.snapshot()
