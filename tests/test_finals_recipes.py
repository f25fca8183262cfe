"""The finals recipes (DeepSeek-R1 on 8x MI355X) launch exactly as the official finals launch, flag by flag: the
`speedrun launch X --dry-run` command of each side at each concurrency is compared with the list below, and every
flag (and value, where SGLang lists the choices) is checked against SGLang 0.5.17's own `server_args.py`."""

from __future__ import annotations

import ast
import functools
import shlex

import pytest
from typer.testing import CliRunner

from speedrun.launch.command import NO_MULTICAST
from speedrun.recipe import RECIPES_DIR, load_recipe
from speedrun.sglang_source import sglang_root

# one node, as the finals ran (the scale-out recipes built on them are held to them in test_deployment.py)
FINALS = sorted(p for p in RECIPES_DIR.glob("deepseek-r1-*-mi355x.yaml") if load_recipe(p).deployment is None)
ENV = {"SGLANG_USE_AITER": "1", "ROCM_QUICK_REDUCE_QUANTIZATION": "INT4"}
FLAGS = {  # the official finals launch for DeepSeek-R1 on MI355X (None: a switch)
    "--tp-size": "8",
    "--attention-backend": "aiter",
    "--kv-cache-dtype": "fp8_e4m3",
    "--chunked-prefill-size": "196608",  # 32768 when concurrency > 32
    "--mem-fraction-static": "0.8",
    "--disable-radix-cache": None,
    "--num-continuous-decode-steps": "4",
    "--cuda-graph-max-bs": "128",
}
ABOVE_32 = {"--chunked-prefill-size": "32768"}
MTP = {
    "--speculative-algorithm": "EAGLE",
    "--speculative-num-steps": "2",
    "--speculative-eagle-topk": "1",
    "--speculative-num-draft-tokens": "3",
}
MODELS = {
    "deepseek-r1-mxfp4-mi355x": "amd/DeepSeek-R1-0528-MXFP4",
    "deepseek-r1-mxfp4-mtp-mi355x": "amd/DeepSeek-R1-0528-mtp-mxfp4",
    "deepseek-r1-fp8-mi355x": "deepseek-ai/DeepSeek-R1-0528",
}
OVERLAY = {"--decode-attention-backend": "speedrun_mla"}  # prefill stays on stock aiter
OURS = {"SGLANG_PLUGINS", *NO_MULTICAST}  # the launcher's own environment, not a server setting


def dry_run(name: str, baseline: bool, concurrency: int | None) -> tuple[dict[str, str], dict[str, str | None]]:
    """`speedrun launch NAME --dry-run` -> (environment, {flag: value}) of the printed command."""
    env, flags = _dry_run(name, baseline, concurrency)
    return dict(env), dict(flags)


@functools.cache
def _dry_run(name: str, baseline: bool, concurrency: int | None) -> tuple[dict[str, str], dict[str, str | None]]:
    from speedrun.cli import _register_commands, app

    _register_commands()
    args = ["launch", name, "--dry-run"] + ["--baseline"] * baseline
    args += ["--concurrency", str(concurrency)] if concurrency else []
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    words = shlex.split(res.output.strip().splitlines()[-1])
    cut = words.index("-m")
    assert words[cut + 1] == "sglang.launch_server"
    env = dict(w.split("=", 1) for w in words[: cut - 1])
    flags: dict[str, str | None] = {}
    rest = words[cut + 2 :]
    for i, w in enumerate(rest):
        if w.startswith("--"):
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            assert w not in flags, f"{w} given twice"
            flags[w] = None if nxt is None or nxt.startswith("--") else nxt
    return env, flags


def test_the_finals_recipes_are_all_here():
    assert [p.stem for p in FINALS] == sorted(MODELS)


@pytest.mark.parametrize("concurrency", [None, 4, 32, 33, 128])
@pytest.mark.parametrize("side", ["baseline", "overlay"])
@pytest.mark.parametrize("path", FINALS, ids=lambda p: p.stem)
def test_dry_run_is_the_finals_launch_flag_by_flag(path, side, concurrency):
    env, flags = dry_run(path.stem, side == "baseline", concurrency)
    assert flags.pop("--model-path") == MODELS[path.stem]
    assert flags.pop("--host") and flags.pop("--port")
    want = FLAGS | (ABOVE_32 if concurrency and concurrency > 32 else {}) | (MTP if "mtp" in path.stem else {})
    want |= OVERLAY if side == "overlay" else {}
    assert flags == want  # nothing missing, nothing extra, every value
    assert {k: v for k, v in env.items() if k not in OURS and not k.startswith("SPEEDRUN_")} == ENV


@pytest.mark.parametrize("path", FINALS, ids=lambda p: p.stem)
def test_benchmark_is_the_finals_method(path):
    r = load_recipe(path)
    (sc,) = r.benchmarks.scenarios
    assert (sc.isl, sc.osl, sc.concurrency) == (8192, 1024, [4, 32, 128])
    assert (sc.prompts_per_concurrency, sc.warmup_per_concurrency, sc.range_ratio, sc.ignore_eos) == (10, 2, 1.0, True)
    assert sc.request_rate == float("inf")


# ---------------------------------------------------------------- the flags exist in SGLang 0.5.17
@functools.cache
def sglang_flags() -> dict[str, tuple[list[str] | None, str | None]]:
    """flag -> (choices, base type name) of every ServerArgs field (`tp_size` -> `--tp-size`, plus aliases) and
    every flag `add_cli_args` registers by hand, read from the installed server_args.py."""
    path = sglang_root() / "srt" / "server_args.py"
    tree = ast.parse(path.read_text())
    lists = {
        t.id: [e.value for e in n.value.elts if isinstance(e, ast.Constant)]
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.List)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServerArgs")
    out: dict[str, tuple[list[str] | None, str | None]] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        parts = node.annotation.slice.elts if isinstance(node.annotation, ast.Subscript) else []
        typ = base_type(parts[0]) if parts else None
        arg = next((p for p in parts[1:] if isinstance(p, ast.Call)), None)
        kw = {k.arg: k.value for k in (arg.keywords if arg else [])}
        choices = kw.get("choices")
        if isinstance(choices, ast.List):
            choices = [e.value for e in choices.elts if isinstance(e, ast.Constant)]
        elif isinstance(choices, ast.Name):
            choices = lists.get(choices.id)
        names = ["--" + node.target.id.replace("_", "-")]
        if isinstance(kw.get("aliases"), ast.List):
            names += [e.value for e in kw["aliases"].elts if isinstance(e, ast.Constant)]
        for n in names:
            out[n] = (choices if isinstance(choices, list) else None, typ)
    for node in ast.walk(tree):  # hand-registered flags
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for a in node.args:
                if isinstance(a, ast.Constant) and str(a.value).startswith("--"):
                    out.setdefault(a.value, (None, None))
    return out


def base_type(node: ast.AST) -> str | None:
    """`int`, `Optional[float]` -> the type's name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        return base_type(node.slice)
    return None


PLUGIN_CHOICES = {"speedrun_mla"}  # added to ATTENTION_BACKEND_CHOICES by our plugin at start-up


@pytest.mark.skipif(sglang_root() is None, reason="SGLang 0.5.17's source is not installed")
@pytest.mark.parametrize("path", FINALS, ids=lambda p: p.stem)
def test_every_flag_and_value_exists_in_sglang(path):
    known = sglang_flags()
    assert known["--tp-size"][1] == "int" and "aiter" in known["--attention-backend"][0]  # the reader works
    for side in ("baseline", "overlay"):
        for concurrency in (4, 128):
            _, flags = dry_run(path.stem, side == "baseline", concurrency)
            for flag, value in flags.items():
                assert flag in known, f"{flag} is not a flag of SGLang 0.5.17's server_args.py"
                choices, typ = known[flag]
                if value is None:
                    continue
                if choices is not None and value not in PLUGIN_CHOICES:
                    assert value in choices, f"{flag} {value}: not one of {choices}"
                if typ in ("int", "float"):
                    {"int": int, "float": float}[typ](value)  # raises when the value is not of the flag's type


def test_flag_reader_rejects_what_sglang_lacks():
    known = sglang_flags() if sglang_root() else {}
    if not known:
        pytest.skip("SGLang 0.5.17's source is not installed")
    assert "--max-prefill-tokens" in known and "--no-such-flag" not in known
    assert "fp8_e4m3" in known["--kv-cache-dtype"][0] and "fp8_e4m4" not in known["--kv-cache-dtype"][0]
