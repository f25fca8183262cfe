"""Synthetic model folders and the synthetic-weight filler."""

import json
import math

import pytest
import torch

from speedrun.overlays.mx import dequant_mxfp4
from speedrun.overlays.synthetic.fill import fill_model_, kind_of
from speedrun.recipe import load_recipe
from speedrun.synth import ensure_model


@pytest.fixture(scope="module")
def deepseek_folder(tmp_path_factory):
    return ensure_model(load_recipe("synth-deepseek-mxfp4-h100"), tmp_path_factory.mktemp("models"))


def test_config_is_the_real_architecture_with_the_slice(deepseek_folder):
    cfg = json.loads((deepseek_folder / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert (cfg["num_attention_heads"], cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]) == (16, 512, 64)
    assert (cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["hidden_size"]) == (256, 256, 7168)
    q = cfg["quantization_config"]
    assert q["quant_method"] == "quark"
    assert q["global_quant_config"]["weight"] == {
        **q["global_quant_config"]["weight"],
        "dtype": "fp4",
        "group_size": 32,
        "scale_format": "e8m0",
        "is_dynamic": False,
    }
    assert q["global_quant_config"]["input_tensors"]["is_dynamic"] is True


def test_tokenizer_is_trained_here_and_round_trips(deepseek_folder):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(deepseek_folder / "tokenizer.json"))
    cfg = json.loads((deepseek_folder / "config.json").read_text())
    text = "Natalia sold clips to 48 of her friends in April."
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.get_vocab_size() == 8192 <= cfg["vocab_size"]
    assert tok.token_to_id("<|end▁of▁sentence|>") == cfg["eos_token_id"]


def test_ensure_model_is_cached_and_regenerates_on_change(tmp_path):
    r = load_recipe("synth-gpt-oss-h100")
    first = ensure_model(r, tmp_path)
    stamp = (first / "speedrun.json").stat().st_mtime_ns
    assert ensure_model(r, tmp_path) == first and (first / "speedrun.json").stat().st_mtime_ns == stamp
    r.model.synthetic.overrides["num_hidden_layers"] = 2
    ensure_model(r, tmp_path)
    cfg = json.loads((first / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and len(cfg["layer_types"]) == 2
    base = ensure_model(load_recipe("synth-deepseek-mxfp4-h100"), tmp_path, baseline=True)
    assert json.loads((base / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"


def toy_model() -> torch.nn.Module:
    m = torch.nn.Module()
    m.experts = torch.nn.Module()
    m.experts.w13_weight = torch.nn.Parameter(torch.zeros(4, 64, 512, dtype=torch.uint8), requires_grad=False)
    m.experts.w13_weight_scale = torch.nn.Parameter(torch.zeros(4, 64, 32, dtype=torch.uint8), requires_grad=False)
    m.experts.w13_weight_bias = torch.nn.Parameter(torch.full((4, 64), 1e-3))
    m.proj = torch.nn.Linear(1024, 256, dtype=torch.bfloat16)
    m.lm_head = torch.nn.Linear(1024, 100, bias=False)
    m.post_attention_layernorm = torch.nn.Module()
    m.post_attention_layernorm.weight = torch.nn.Parameter(torch.full((8,), 1e-3))
    m.fp8 = torch.nn.Parameter(torch.zeros(256, 256).to(torch.float8_e4m3fn), requires_grad=False)
    m.fp8_weight_scale_inv = torch.nn.Parameter(torch.zeros(2, 2))
    return m


def test_fill_rules_give_sane_numbers():
    m = toy_model()
    counts = fill_model_(m, seed=7)
    assert counts == {
        "mxfp4_bytes": 1,
        "e8m0_scale": 1,
        "zeros": 2,
        "matrix": 1,
        "lm_head": 1,
        "ones": 1,
        "fp8_codes": 1,
        "fp8_block_scale": 1,
    }
    w = dequant_mxfp4(m.experts.w13_weight.data, m.experts.w13_weight_scale.data)
    rms = w.pow(2).mean().sqrt().item()
    assert 0.5 / math.sqrt(1024) < rms < 2.0 / math.sqrt(1024), rms  # ~1/sqrt(fan_in), not 0, not 2**-126
    assert m.experts.w13_weight.data.float().std() > 50  # random bytes, not zeros
    assert torch.all(m.post_attention_layernorm.weight == 1)
    assert abs(m.proj.weight.float().std().item() * math.sqrt(1024) - 1) < 0.05
    assert abs(m.lm_head.weight.std().item() * math.sqrt(1024) - 4) < 0.2
    assert m.fp8.float().abs().mean() > 0.5
    assert torch.allclose(m.fp8_weight_scale_inv, torch.tensor(1 / 16))  # 1/sqrt(2 blocks x 128)


def test_fill_is_deterministic_per_seed_and_name():
    a, b, c = toy_model(), toy_model(), toy_model()
    fill_model_(a, 1), fill_model_(b, 1), fill_model_(c, 2)
    assert torch.equal(a.experts.w13_weight, b.experts.w13_weight)
    assert torch.equal(a.proj.weight, b.proj.weight)
    assert not torch.equal(a.experts.w13_weight, c.experts.w13_weight)
    assert kind_of("model.layers.0.mlp.experts.w2_weight_scale", torch.zeros(1, dtype=torch.uint8)) == "e8m0_scale"


def test_fill_hook_records_what_it_did(tmp_path, monkeypatch):
    from speedrun.overlays import report
    from speedrun.overlays.synthetic.hook import fill_after_dummy

    monkeypatch.setenv("SPEEDRUN_REPORT_DIR", str(tmp_path))
    monkeypatch.setenv("SPEEDRUN_SEED", "3")
    report.start(role="test", tp_rank=None)
    fill_after_dummy(None, toy_model())
    (f,) = tmp_path.glob("overlay-*.json")
    rep = json.loads(f.read_text())
    assert rep["synthetic"]["seed"] == 3 and rep["synthetic"]["tensors"]["mxfp4_bytes"] == 1
    assert rep["calls"] == {"synthetic/fill_after_dummy": 1}
