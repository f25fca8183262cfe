"""CPU tests of the MLA decode overlay: the kernels under the Triton interpreter against the torch reference,
AOT compilation for gfx950 and sm90, configs, and the SGLang wiring (checked against SGLang's source)."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from speedrun.overlays.mla_decode import api
from speedrun.overlays.mla_decode import sglang_hook as hook
from speedrun.overlays.mla_decode.config import MlaBucket
from speedrun.overlays.mla_decode.reference import mla_decode_reference

HERE = Path(__file__).resolve().parent
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def decode(q, kv, o, kv_indptr, kv_indices, sm_scale, k_scale=1.0, v_scale=1.0, *, page_size=1, workspace=None,
           **plan_kw):  # fmt: skip
    """A plan for these tensors (plan_kw: arch, config, programs, compute), then the call."""
    plan = api.make_plan(q.shape[1], q.dtype, kv.dtype, device=q.device, page_size=page_size, **plan_kw)
    return api.mla_decode(q, kv, o, kv_indptr, kv_indices, plan, sm_scale=sm_scale, k_scale=k_scale,
                          v_scale=v_scale, workspace=workspace)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    if DEV == "cpu":
        from speedrun.overlays import interpreter

        interpreter.patch()


def make_batch(heads: int, lens: list[int], kv_dtype: torch.dtype, page_size: int, seed: int = 0) -> dict:
    """A paged latent pool with pages scattered at random and token-slot kv_indices (SGLang's layout)."""
    g = torch.Generator().manual_seed(seed)
    pages = [-(-n // page_size) for n in lens]
    num_pages = sum(pages) + 2
    kv = (torch.randn(num_pages * page_size, 1, 576, generator=g) * 0.5).to(kv_dtype)
    order = torch.randperm(num_pages, generator=g).tolist()
    slots = []
    for n, npg in zip(lens, pages, strict=True):
        mine, order = order[:npg], order[npg:]
        slots += [mine[t // page_size] * page_size + t % page_size for t in range(n)]
    indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(len(lens), heads, 576, generator=g).to(torch.bfloat16)
    return dict(q=q.to(DEV), kv=kv.to(DEV), kv_indptr=indptr.to(DEV), kv_indices=torch.tensor(slots).to(DEV))


FP8_ROUND1 = {"split_d": 1, "fp8_cvt": "bf16", "BLOCK_N": 64}
CASES = {
    # name: heads, lens (mixed, with an empty sequence), kv dtype, page size, programs, config override
    "bf16-ps1-mixed": (16, [3, 0, 70, 1], torch.bfloat16, 1, 4, {}),
    "fp8-ps16-split": (16, [130, 5], torch.float8_e4m3fn, 16, 6, {}),
    "bf16-ps64-one-program": (16, [65, 2, 40], torch.bfloat16, 64, 1, {}),
    "bf16-8heads-padded": (8, [33, 17], torch.bfloat16, 1, 2, {}),
    "bf16-32heads-2groups": (32, [50, 20], torch.bfloat16, 1, 3, {"BLOCK_H": 16}),
    # round-1 paths (one 512-column tile; fp8 converted to bf16), kept as sweep variants
    "bf16-split1": (16, [3, 0, 70, 1], torch.bfloat16, 1, 4, {"split_d": 1}),
    "fp8-split1-bf16mma": (16, [130, 5], torch.float8_e4m3fn, 16, 6, {"fp8": FP8_ROUND1}),
    # SNAP: uniform lengths cut at sequence boundaries (here 4 x 80 on 4 programs: whole sequences); mixed ones
    # keep equal chunks; an all-empty batch must not divide by zero
    "bf16-snap-uniform": (16, [80, 80, 80, 80], torch.bfloat16, 1, 4, {"snap": True, "min_chunk": 16}),
    "fp8-snap-mixed": (16, [130, 0, 5, 77], torch.float8_e4m3fn, 16, 6, {"snap": True, "min_chunk": 16}),
    "bf16-snap-short-seqs": (16, [9, 9, 9, 9, 9], torch.bfloat16, 1, 2, {"snap": True, "min_chunk": 16}),
    "bf16-snap-32heads": (32, [96, 96, 3], torch.bfloat16, 1, 3, {"snap": True, "BLOCK_H": 16, "min_chunk": 16}),
    # the shipped heads<=16 config runs two QK chains; the single-chain form stays a sweep variant
    "fp8-qk-one-chain": (16, [130, 0, 5], torch.float8_e4m3fn, 16, 6, {"qk_chains": 1}),
    "bf16-n16-tiles": (16, [70, 0, 9], torch.bfloat16, 1, 3, {"BLOCK_N": 16}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(name: str) -> None:
    heads, lens, kv_dtype, ps, programs, override = CASES[name]
    b = make_batch(heads, lens, kv_dtype, ps)
    kv = b["kv"].view(-1, ps, 1, 576) if ps > 1 else b["kv"]  # 4-D paged view for ps > 1
    cfg = api.config_for(heads, "sm90").replace(**override)
    o = torch.full((len(lens), heads, 512), float("nan"), dtype=torch.float32, device=DEV)
    args = (b["q"], kv, o, b["kv_indptr"], b["kv_indices"], 0.09)
    a16 = "a16" if kv_dtype.itemsize == 1 else None  # fp8: the upcast path (a8w8 has its own test file)
    decode(*args, k_scale=1.5, v_scale=0.75, page_size=ps, config=cfg, programs=programs, arch="cpu",
                   compute=a16)  # fmt: skip
    ref = mla_decode_reference(b["q"], kv, b["kv_indptr"], b["kv_indices"], 0.09, 1.5, 0.75, ps)
    # bf16 P in the PV product: ~2^-9 relative per weight; fp32 output, so nothing else rounds.
    assert torch.isfinite(o).all()
    assert (o - ref).abs().max().item() <= 4e-3 * max(1.0, ref.abs().max().item())
    assert all(o[i].abs().max() > 0 for i, n in enumerate(lens) if n)  # every sequence was written
    if 0 in lens:
        assert (o[lens.index(0)] == 0).all()  # an empty sequence reads as zeros, never garbage


ROUND5 = ("fp8_n64_w8", "fp8_r168_st3")  # the round-5 sweep variants (PERF.md): fp8 overrides
ROUND6 = ("t16_n64_w4",)  # 16-bit tokens-as-M (t16_n64_w8 differs in warps only)
ROUND13 = ("merge_dv512",)  # the merge over all 512 columns a program


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.bfloat16], ids=["fp8", "bf16"])
@pytest.mark.parametrize("variant", ROUND5 + ROUND6 + ROUND13)
def test_sweep_variants_match_reference(variant: str, kv_dtype: torch.dtype) -> None:
    """Round 5's, 6's and 13's variants as the sweep builds them, at small shapes: split sequences, whole ones, an
    empty one, a 64-token tile that is partly masked (the interpreter ignores warps, stages and maxnreg; the AOT
    checks those)."""
    from speedrun.eval.kernels import mla_decode_bench as bench

    lens = [130, 0, 5, 77]
    b = make_batch(16, lens, kv_dtype, 16, seed=2)
    kv = b["kv"].view(-1, 16, 1, 576)
    o = torch.full((len(lens), 16, 512), float("nan"), dtype=torch.float32, device=DEV)
    decode(b["q"], kv, o, b["kv_indptr"], b["kv_indices"], 0.09, 1.5, 0.75, page_size=16, programs=5,
           config=bench.variant_config(variant), arch="cpu")  # fmt: skip
    ref = mla_decode_reference(b["q"], kv, b["kv_indptr"], b["kv_indices"], 0.09, 1.5, 0.75, 16)
    assert torch.isfinite(o).all() and (o[1] == 0).all()
    assert (o - ref).abs().max().item() <= 4e-3 * max(1.0, ref.abs().max().item())


def test_maxnreg_is_cuda_only() -> None:
    """maxnreg reaches a CUDA launch (and the sm90 AOT options); an AMD plan or table naming it is an error."""
    from speedrun.overlays import arch

    cfg = api.config_for(16, "sm90")
    capped = cfg.replace(fp8_compute="a16", fp8={**cfg.fp8.entry(), "maxnreg": 168})  # the "fp8" knobs run
    fp8 = torch.float8_e4m3fn
    plan = api.make_plan(16, torch.bfloat16, fp8, device="cpu", arch="sm90", config=capped)
    assert plan.partial_opts == {"num_warps": 4, "num_stages": 5, "maxnreg": 168}
    assert "maxnreg" not in api.make_plan(16, torch.bfloat16, torch.bfloat16, device="cpu", arch="sm90",
                                          config=capped).partial_opts  # fmt: skip
    assert arch.launch_options({"maxnreg": 168, "num_warps": 4}, "gfx950") == {"num_warps": 4}
    assert arch.for_arch({"maxnreg": 168, "waves_per_eu": 2}, "sm90") == {"maxnreg": 168}
    for where in (capped, cfg.replace(maxnreg=168)):
        with pytest.raises(ValueError, match="maxnreg is CUDA-only"):
            api.make_plan(16, torch.bfloat16, fp8, device="cpu", arch="gfx950", config=where)
    with pytest.raises(ValueError, match="heads<=16: maxnreg: Input should be less than or equal to 255"):
        MlaBucket.checked({**cfg.entry(), "maxnreg": 256}, "mla_decode sm90 heads<=16")


def test_bf16_output_and_programs_invariance() -> None:
    """Any split (1 program .. many) gives the same answer; bf16 output rounds once."""
    b = make_batch(16, [90, 7], torch.bfloat16, 1, seed=3)
    outs = []
    for programs in (1, 5):
        o = torch.empty(2, 16, 512, dtype=torch.bfloat16, device=DEV)
        decode(b["q"], b["kv"], o, b["kv_indptr"], b["kv_indices"], 0.1, programs=programs, arch="cpu")
        outs.append(o.float())
    ref = mla_decode_reference(b["q"], b["kv"], b["kv_indptr"], b["kv_indices"], 0.1)
    for o in outs:
        assert (o - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-2 * ref.abs().max().item()


def test_fp8_f16_mma_rescales_large_q() -> None:
    """f16 MMA on fp8 KV: a bf16 q far beyond the f16 range (|q| ~ 1e5) is scaled by a power of two, exactly."""
    b = make_batch(16, [40, 9], torch.float8_e4m3fn, 1, seed=4)
    q = (b["q"].float() * 3e4).to(torch.bfloat16)
    o = torch.empty(2, 16, 512, dtype=torch.float32, device=DEV)
    cfg = api.config_for(16, "sm90").replace(fp8={"fp8_cvt": "f16", "split_d": 4, "BLOCK_N": 32})
    decode(q, b["kv"], o, b["kv_indptr"], b["kv_indices"], 0.09 / 3e4, config=cfg, programs=3, arch="cpu",
                   compute="a16")  # fmt: skip
    ref = mla_decode_reference(q, b["kv"], b["kv_indptr"], b["kv_indices"], 0.09 / 3e4)
    assert torch.isfinite(o).all()
    assert (o - ref).abs().max().item() <= 4e-3 * max(1.0, ref.abs().max().item())


def test_kernel_constexprs_and_fp8_overrides() -> None:
    import triton.language as tl

    cfg = api.config_for(16, "sm90").replace(fp8={"BLOCK_N": 32, "fp8_cvt": "asm"})
    fp8 = api.kv_config(cfg, torch.float8_e4m3fn, "a16")
    assert (fp8.BLOCK_N, fp8.fp8_cvt, fp8.fp8_compute) == (32, "asm", "a16")
    assert (fp8.num_warps, fp8.split_d) == (cfg.num_warps, cfg.split_d)  # knobs "fp8" leaves out stay the bucket's
    with pytest.raises(ValueError, match="fp8.programs_per_sm"):  # never the split width: "fp8" has no such knob
        cfg.replace(fp8={"programs_per_sm": 9})
    assert api.kv_config(cfg, torch.bfloat16) is cfg
    k = api.kernel_constexprs(fp8, torch.bfloat16, torch.float8_e4m3fn, "sm90")
    assert k["CDT"] == tl.float16 and k["CVT_ASM"] is True
    for arch, kv in (("gfx950", torch.float8_e4m3fn), ("sm80", torch.float8_e4m3fn), ("sm90", torch.float8_e4m3fnuz)):
        assert api.kernel_constexprs(fp8, torch.bfloat16, kv, arch)["CVT_ASM"] is False  # PTX, e4m3fn, sm89+ only
    assert api.kernel_constexprs(fp8, torch.bfloat16, torch.bfloat16, "sm90")["CDT"] == tl.bfloat16
    bf16_cvt = fp8.replace(fp8_cvt="bf16")
    assert api.kernel_constexprs(bf16_cvt, torch.bfloat16, torch.float8_e4m3fn, "sm90")["CDT"] == tl.bfloat16


@pytest.mark.parametrize(
    "q_shape,kv_shape,o_shape",
    [((2, 16, 512), (9, 1, 576), (2, 16, 512)), ((2, 16, 576), (9, 2, 576), (2, 16, 512)),
     ((2, 16, 576), (9, 1, 576), (2, 16, 576))],
)  # fmt: skip
def test_unsupported_shapes_raise(q_shape, kv_shape, o_shape) -> None:
    from speedrun.overlays.hooks import Unsupported

    q, kv = torch.zeros(q_shape, dtype=torch.bfloat16), torch.zeros(kv_shape, dtype=torch.bfloat16)
    o = torch.zeros(o_shape, dtype=torch.bfloat16)
    plan = api.make_plan(16, torch.bfloat16, torch.bfloat16, arch="cpu", device="cpu")
    with pytest.raises(Unsupported):
        api.check_inputs(q, kv, o, plan)


def test_configs_are_complete() -> None:
    needed = {"BLOCK_H", "BLOCK_N", "num_warps", "num_stages", "programs_per_sm", "min_chunk", "merge"}
    needed_merge = {"BLOCK_P", "min_block_dv", "num_warps"}
    for arch in ("sm90", "gfx950"):
        table = json.loads((HERE / "configs" / f"{arch}.json").read_text())
        assert table["_meta"]["arch"] == arch
        buckets = [k for k in table if k.startswith("heads<=")]
        assert max(int(k.split("<=")[1]) for k in buckets) >= 128
        for k in buckets:
            assert needed <= set(table[k]) and needed_merge <= set(table[k]["merge"]), (arch, k)
            assert table[k]["BLOCK_N"] & (table[k]["BLOCK_N"] - 1) == 0
    assert json.loads((HERE / "configs" / "gfx950.json").read_text())["_meta"]["tuned"] is False


@pytest.mark.parametrize("arch", ["sm90", "gfx950"])
def test_compiles_for_arch(arch: str) -> None:
    """Every config compiles (in a clean process: the interpreter swaps out @triton.jit functions)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mla_decode_compile", arch]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # 3 buckets x (bf16 partial, fp8 partial, fp8 a8w8 partial with fp8 PV and with f16 PV, 2 merges); sm90 also
    # the Gluon kernel on fp8 (a8w8) and bf16 caches (heads<=16) and its warp-specialized form (fp8, PV f16; eager and
    # lazy running max), and the fp8 KV store; at 16 heads the E2M1-cache partials (scales per 32 and 16; bf16 MMAs)
    assert len(results) == 21 + 4 * (arch == "sm90"), proc.stderr[-2000:]
    (mx,) = [r for r in results if r["name"] == "mla_decode/partial[heads<=16,mxfp4]"]
    assert any("bf16" in m for m in mx["mma"]), mx["mma"]
    if arch == "sm90":  # QK at n8 (the warpgroups split the heads), PV at n16 (they split the output rows)
        ws = {r["name"]: sorted(r["mma"]) for r in results if r["name"].endswith(",gluon_ws]")}
        assert ws == {"mla_decode/partial[heads<=16,fp8,a8w8,pv-f16,gluon_ws]": [
            "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16",
            "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3"]}  # fmt: skip
        gluon = {r["name"]: sorted(r["mma"]) for r in results if r["name"].endswith(",gluon]")}
        assert gluon == {
            "mla_decode/partial[heads<=16,fp8,a8w8,pv-f16,gluon]": [
                "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16",
                "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3"],
            "mla_decode/partial[heads<=16,bf16,gluon]": [
                "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16",
                "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16"],
        }, gluon  # fmt: skip
    for res in results:
        assert res["ok"], f"{res['name']}: {res['error']}"
        if "partial" in res["name"]:
            assert res["mma"], f"{res['name']} does not use the matrix unit on {arch}"
        if "a8w8" in res["name"]:  # compile_spec already failed it without its fp8 MMA; the list says which
            assert any(("e4m3" if arch == "sm90" else "f8") in m for m in res["mma"]), res
    assert proc.returncode == 0


def test_round5_variants_reach_their_occupancy_on_sm90() -> None:
    """The AOT evidence PERF.md's "Round 5 candidates" quotes (mla_decode_sass, clean process): fp8_r168_st3 is
    capped at 168 registers and fits 3 CTAs per SM with no spill in its tile loop; fp8_n64_w8 does not spill."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mla_decode_sass", "--json", "fp8_r168_st3", "fp8_n64_w8"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r168, n64 = (json.loads(proc.stdout.splitlines()[-1])[v] for v in ("fp8_r168_st3", "fp8_n64_w8"))
    assert r168["regs"] <= 168 and r168["ctas_per_sm"] == 3 and r168["stages"] == 3
    assert not {"LDL", "STL"} & set(r168["ops"]) and r168["ops"]["HMMA"] == 68  # spills stay outside the loop
    assert n64["spill"] == 0 and n64["regs"] <= 255 and n64["block_n"] == 64 and n64["warps"] == 8


def test_tokens_as_m_reads_operands_without_ldsm_on_sm90() -> None:
    """The AOT evidence PERF.md's round 6 quotes (bf16 caches, clean process): the tokens-as-M variant runs wgmma
    (HGMMA) with every operand read by the tensor core from shared memory (no LDSM in its tile loop) and does not
    spill at 8 warps, where the shipped heads-as-M kernel issues 72 LDSM per warp per 32-token tile."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mla_decode_sass", "--json", "--kv", "bf16", "default",
           "t16_n64_w8"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    default, t16 = (json.loads(proc.stdout.splitlines()[-1])[v] for v in ("default", "t16_n64_w8"))
    assert default["ops"].get("LDSM", 0) == 72 and "HGMMA" not in default["ops"]
    assert t16["ops"].get("HGMMA", 0) > 0 and "LDSM" not in t16["ops"] and t16["spill"] == 0


# ----------------------------------------------------------------------------- SGLang wiring


def sglang_file(rel: str) -> Path:
    spec = importlib.util.find_spec("sglang")
    if spec is None or spec.origin is None:
        pytest.skip("sglang source not installed")
    return Path(spec.origin).parent.parent / rel


def defined_names(path: Path) -> set[str]:
    """Names a module defines: defs, classes, assignments, and attributes assigned as `x.attr = ...`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


@pytest.mark.parametrize("rel", list(hook.SGLANG_API))
def test_sglang_api_exists(rel: str) -> None:
    missing = set(hook.SGLANG_API[rel]) - defined_names(sglang_file(rel))
    assert not missing, f"{rel} lacks {missing}"


def _decode_params() -> list[str]:
    tree = ast.parse((HERE / "backend.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "decode")
    return [a.arg for a in fn.args.args][2:]  # drop self, original


def test_forward_decode_call_matches_our_signature() -> None:
    """Every `self.decode_attention_fwd(...)` call in SGLang's triton backend binds to our `decode`."""
    params = _decode_params()
    stock = sglang_file("sglang/kernels/ops/attention/decode_attention.py")
    tree = ast.parse(stock.read_text())
    stock_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "decode_attention_fwd")
    assert [a.arg for a in stock_fn.args.args] == params  # same parameters, same order
    calls = [
        n
        for n in ast.walk(ast.parse(sglang_file("sglang/srt/layers/attention/triton_backend.py").read_text()))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "decode_attention_fwd"
    ]
    assert calls
    for call in calls:
        assert len(call.args) <= len(params) and {k.arg for k in call.keywords} <= set(params)


def _method_source(rel: str, cls: str, name: str) -> str:
    tree = ast.parse(sglang_file(rel).read_text())
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    fn = next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.unparse(fn)


def test_stock_decode_store_is_what_store_kv_replaces() -> None:
    """Our fused store (backend.forward_decode -> api.store_kv) writes what SGLang's triton decode writes into an
    MLA cache: k divided in place by layer.k_scale, then MLATokenToKVPool.set_kv_buffer at the KVWriteLoc's
    plain loc, forward_batch.out_cache_loc, cast to the pool's dtype and stored through its uint8 view."""
    decode = _method_source("sglang/srt/layers/attention/triton_backend.py", "TritonAttnBackend", "forward_decode")
    assert "k.div_(layer.k_scale)" in decode
    assert "self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc" in decode
    store = _method_source("sglang/srt/mem_cache/memory_pool.py", "MLATokenToKVPool", "set_kv_buffer")
    assert "loc, _, _ = unwrap_write_loc(loc_info)" in store
    assert "cache_k = cache_k.to(self.dtype)" in store
    assert "self.kv_buffer[layer_id - self.start_layer][loc] = cache_k.view(self.store_dtype)" in store


@pytest.mark.parametrize("saturate", [None, True, False])
@pytest.mark.parametrize("k_scale", [None, 1.0, 0.37])
@pytest.mark.parametrize("bs", [1, 5, 32])
def test_store_kv_matches_sglangs_store(bs: int, k_scale: float | None, saturate: bool | None) -> None:
    """api.store_kv vs SGLang's three-step store (reference.store_kv_reference), byte for byte, past the fp8 range
    included; rows not written stay as they were. saturate None: this torch's cast on both sides; True / False:
    torch >= 2.12's and < 2.12's overflow rule (the GPU host's torch 2.11 writes NaN there)."""
    from speedrun.overlays.mla_decode.reference import E4M3_EDGES, store_kv_reference

    g = torch.Generator().manual_seed(bs)
    k = (torch.randn(bs, 1, 576, generator=g) * 4).to(torch.bfloat16).to(DEV)
    k[0, 0, : len(E4M3_EDGES)] = torch.tensor(E4M3_EDGES)
    loc = torch.randperm(4 * bs, generator=g)[:bs].to(DEV)
    scale = None if k_scale is None else torch.tensor(k_scale, device=DEV)
    cache = torch.randn(4 * bs + 1, 1, 576, generator=g).to(DEV).to(torch.float8_e4m3fn)
    ref = cache.clone()
    api.store_kv(k, loc.int(), cache, scale, saturate=api.CAST_SATURATES if saturate is None else saturate)
    store_kv_reference(k.clone(), loc, ref, scale, saturate)
    assert torch.equal(cache.view(torch.uint8), ref.view(torch.uint8))


def test_e4m3fn_cast_rules() -> None:
    """The reference's two overflow rules on the values that tell them apart (torch 2.11's c10 conversion: NaN,
    0x7f with the sign, from 464 up and for inf; torch >= 2.12: 0x7e / 0xfe), and this torch's cast is one of them."""
    from speedrun.overlays.mla_decode.reference import e4m3fn_cast

    x = torch.tensor([448.0, 456.0, 464.0, 465.0, 1e4, float("inf"), -465.0, float("-inf"), 1.0])
    nan = e4m3fn_cast(x, saturate=False).view(torch.uint8).tolist()
    sat = e4m3fn_cast(x, saturate=True).view(torch.uint8).tolist()
    assert nan == [0x7E, 0x7E, 0x7E, 0x7F, 0x7F, 0x7F, 0xFF, 0xFF, 0x38]
    assert sat == [0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0xFE, 0x38]
    assert x.to(torch.float8_e4m3fn).view(torch.uint8).tolist() == (sat if api.CAST_SATURATES else nan)


def test_table_row() -> None:
    import speedrun.overlays as overlays

    rows = [r for r in overlays.hooks() if r.op == "mla_decode"]
    assert (rows[0].fn, rows[0].kind) == ("mla_decode.sglang_hook:register_backend", "registry")
    assert overlays.resolve(rows[0].fn) is hook.register_backend
    # further rows (the speculative-draft alias) are registry hooks of this op's own modules
    assert all(r.kind == "registry" and r.fn.startswith("mla_decode.sglang_hook:") for r in rows[1:])
    assert "mla_decode" in overlays.OPS


def _stub(monkeypatch, name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, mod)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, mod)
    return mod


def test_register_backend_with_stub_sglang(monkeypatch) -> None:
    registry: dict = {}
    choices = ["triton"]

    def register_attention_backend(name):
        def deco(fn):
            registry[name] = fn
            return fn

        return deco

    for name in ("sglang", "sglang.srt", "sglang.srt.layers", "sglang.srt.layers.attention"):
        _stub(monkeypatch, name)
    _stub(monkeypatch, "sglang.srt.server_args", ATTENTION_BACKEND_CHOICES=choices,
          add_attention_backend_choices=choices.extend)  # fmt: skip
    _stub(monkeypatch, "sglang.srt.layers.attention.attention_registry", ATTENTION_BACKENDS=registry,
          register_attention_backend=register_attention_backend)  # fmt: skip
    hook.register_backend()
    hook.register_backend()  # idempotent
    assert registry == {"speedrun_mla": hook.create_backend}
    assert choices == ["triton", "speedrun_mla"]


def test_deepseek_handler_behaves_as_triton(monkeypatch) -> None:
    seen = {}
    handlers = {}

    class Registry:
        @classmethod
        def register(cls, name, fn):
            handlers[name] = fn

    def handle_attention_triton(attn, batch):
        seen["backend"] = attn.current_attention_backend
        return "MLA"

    for name in ("sglang", "sglang.srt", "sglang.srt.models", "sglang.srt.models.deepseek_common"):
        _stub(monkeypatch, name)
    _stub(monkeypatch, "sglang.srt.models.deepseek_common.attention_backend_handler",
          AttentionBackendRegistry=Registry, handle_attention_triton=handle_attention_triton)  # fmt: skip
    hook.register_deepseek_handler()
    attn = types.SimpleNamespace(current_attention_backend="speedrun_mla")
    assert handlers["speedrun_mla"](attn, None) == "MLA"
    assert seen["backend"] == "triton"


def test_hook_module_is_light() -> None:
    """sglang_hook.py runs in the launcher: no torch/triton/sglang import at module level."""
    top = [n for n in ast.parse(inspect.getsource(hook)).body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(not (getattr(n, "module", "") or "").startswith(("sglang", "torch", "triton")) for n in top)


@pytest.mark.parametrize("lens", [[1024] * 256, [8192] * 128, [8192] * 32, [32768], [1000] * 250, [128] * 2000])
def test_snap_cuts_uniform_batches_at_sequence_boundaries(lens: list[int]) -> None:
    """SNAP (host mirror of the device rule, H100: 264 programs): a uniform batch is cut only at sequence
    boundaries, within 1/16 of the plain chunk, and never needs more programs than the grid has."""
    plain = api.chunk_tokens(lens, 264, 64)
    chunk = api.chunk_tokens(lens, 264, 64, snap=True)
    assert plain <= chunk <= plain * 17 / 16
    assert lens[0] % chunk == 0 or chunk % lens[0] == 0
    assert -(-sum(lens) // chunk) <= 264


def test_snap_keeps_mixed_batches_balanced() -> None:
    """One 32k sequence among short ones, and random lengths: equal chunks (the flat split), at most 1/16 wider."""
    g = torch.Generator().manual_seed(0)
    for lens in ([32768] + [1024] * 255, torch.randint(1, 9000, (200,), generator=g).tolist()):
        plain = api.chunk_tokens(lens, 264, 64)
        assert plain <= api.chunk_tokens(lens, 264, 64, snap=True) <= plain * 17 / 16


def test_split_knobs() -> None:
    """sm90 ships snap on (the flat split otherwise); gfx950 keeps the round-1 path."""
    cfg = api.config_for(16, "sm90")
    assert api.kernel_constexprs(cfg, torch.bfloat16, torch.bfloat16, "sm90")["SNAP"] is True
    assert api.split_constexprs(api.config_for(16, "gfx950")) == {"SNAP": False}


@pytest.mark.parametrize("knob", [{"split": "seq"}, {"align": 16}, {"per_seq_min_bs": 128}])
def test_removed_sweep_knobs_are_rejected(knob: dict) -> None:
    """The round-3 split experiments that never shipped are gone from the kernel: a table naming one fails
    validation (naming the key) instead of silently running the flat split."""
    table_entry = {**api.config_for(16, "sm90").entry(), **knob}
    with pytest.raises(ValueError, match=next(iter(knob))):
        api.make_plan(16, torch.bfloat16, torch.bfloat16, arch="cpu", config=table_entry)


@pytest.mark.parametrize("snap,partials", [(False, 12), (True, 8)])
def test_snap_writes_fewer_partials(snap: bool, partials: int) -> None:
    """4 x 200 tokens on 9 programs: flat chunks of 96 cut each sequence 3 times (12 partials); snapped chunks of
    100 halve each sequence exactly (8 partials). Counted from the partial slots the kernel wrote; the merge reads
    the chunk from the workspace's last int32."""
    b = make_batch(16, [200] * 4, torch.bfloat16, 1, seed=4)
    cfg = api.config_for(16, "sm90").replace(snap=snap, min_chunk=16)
    part_o, part_lse = api.alloc_workspace(4, 16, 9, torch.device(DEV))
    part_lse.fill_(float("nan"))
    o = torch.empty(4, 16, 512, dtype=torch.float32, device=DEV)
    args = (b["q"], b["kv"], o, b["kv_indptr"], b["kv_indices"], 0.09)
    decode(*args, config=cfg, programs=9, workspace=(part_o, part_lse), arch="cpu")
    assert int(torch.isfinite(part_lse[:-1].view(-1, 16)[:, 0]).sum()) == partials  # the last: the chunk
    # The chunk the partial kernel left for the merge is the host mirror's.
    chunk = api.chunk_slot(part_lse, api.workspace_rows(4, 9), 16).item()
    assert chunk == api.chunk_tokens([200] * 4, 9, 16, snap) == (100 if snap else 96)
    ref = mla_decode_reference(b["q"], b["kv"], b["kv_indptr"], b["kv_indices"], 0.09)
    assert (o - ref).abs().max().item() <= 4e-3 * max(1.0, ref.abs().max().item())


def test_pdl_knob_resolves_on_cuda_sm90_only() -> None:
    """MlaBucket.pdl (round 3's variant, back for every op: overlays/pdl.py) becomes the plan's PDL only on a CUDA
    device of sm90 or newer: off on the CPU interpreter whatever the arch says, so the interpreted kernels never
    see griddepcontrol."""
    cfg = api.config_for(16, "sm90").replace(pdl=True)
    assert not api.make_plan(16, torch.bfloat16, torch.bfloat16, arch="sm90", config=cfg, device="cpu").pdl
    assert not api.make_plan(16, torch.bfloat16, torch.bfloat16, arch="cpu", config=cfg, device="cpu").pdl


# ----------------------------------------------------------------------------- MXFP4 cache (the qualifier's format)


@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("lens,programs", [([1, 37, 0, 70], 1), ([130, 3, 65], 7), ([200], 9)])
def test_mxfp4_cache_matches_reference(lens, programs, block):
    """An E2M1 cache (576 columns as E2M1 codes + an E8M0 scale per 32: MXFP4; per 16: SGLang's fp4_mx_block16
    pool): whole sequences and sequences split over chunks (the merge), empty and one-token sequences, tiles past a
    sequence's end; against the reference on the cache's exact values, rtol = atol = 1e-2 (P is rounded to bf16
    for PV)."""
    from speedrun.overlays.mla_decode.reference import mla_decode_mxfp4_reference, quantize_kv_mxfp4

    b = make_batch(16, lens, torch.float32, 1, seed=sum(lens))
    codes, scales = quantize_kv_mxfp4(b["kv"].cpu(), block)
    codes, scales = codes.to(DEV), scales[:, 0].to(DEV)
    assert codes.shape[-1] == 288 and scales.shape[-1] == 576 // block
    o = torch.empty(len(lens), 16, 512, dtype=torch.bfloat16, device=DEV)
    plan = api.make_plan(16, torch.bfloat16, api.KV_MXFP4, device=DEV, programs=programs, kv_block=block)
    got = api.mla_decode(b["q"], codes, o, b["kv_indptr"], b["kv_indices"], plan, sm_scale=576**-0.5,
                         kv_scales=scales)  # fmt: skip
    want = mla_decode_mxfp4_reference(b["q"], codes, scales, b["kv_indptr"], b["kv_indices"], 576**-0.5)
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


def test_mxfp4_cache_errors_name_what_is_wrong():
    """Scales missing or of the wrong size, q not bf16, KV scales other than 1: one line each."""
    plan = api.make_plan(16, torch.bfloat16, api.KV_MXFP4, device=DEV, programs=1)
    q = torch.zeros(1, 16, 576, dtype=torch.bfloat16, device=DEV)
    kv = torch.zeros(8, 1, 288, dtype=torch.uint8, device=DEV).view(api.KV_MXFP4)
    o = torch.empty(1, 16, 512, dtype=torch.bfloat16, device=DEV)
    ind = torch.tensor([0, 8], dtype=torch.int32, device=DEV), torch.arange(8, device=DEV)
    with pytest.raises(ValueError, match=r"kv_block 32 needs kv_scales: 18 E8M0 bytes a slot, .*\[8, 18\].*None"):
        api.mla_decode(q, kv, o, *ind, plan, sm_scale=1.0)
    with pytest.raises(ValueError, match=r"got \(8, 17\)"):
        api.mla_decode(q, kv, o, *ind, plan, sm_scale=1.0, kv_scales=torch.zeros(8, 17, dtype=torch.uint8))
    scales = torch.full((8, 18), 127, dtype=torch.uint8, device=DEV)
    with pytest.raises(ValueError, match="k_scale and v_scale must be 1"):
        api.mla_decode(q, kv, o, *ind, plan, sm_scale=1.0, k_scale=2.0, kv_scales=scales)
    with pytest.raises(Exception, match="q must be bf16"):
        api.make_plan(16, torch.float16, api.KV_MXFP4, device=DEV)
    with pytest.raises(ValueError, match=r"kv_block must be one of \(32, 16\).*got 8"):
        api.make_plan(16, torch.bfloat16, api.KV_MXFP4, device=DEV, kv_block=8)
