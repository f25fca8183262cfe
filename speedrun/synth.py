"""Synthetic model folders: config.json (the real architecture, a recipe's overrides on top) and a tokenizer
trained here with `tokenizers` — nothing downloaded. Served with `--load-format dummy`."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from importlib.resources import files
from pathlib import Path
from typing import Any

from speedrun.recipe import Recipe, Synthetic

CONFIGS = files("speedrun") / "model_configs"  # package data (pyproject.toml)
DEFAULT_ROOT = Path(".models")
SPECIALS = {
    "deepseek_v3": ["<|begin▁of▁sentence|>", "<|end▁of▁sentence|>"],
    "gpt_oss": ["<|startoftext|>", "<|endoftext|>"],
}

QUARK_MXFP4 = {  # the shape of a quark export (amd/*-MXFP4): MXFP4 weights, dynamic MXFP4 activations
    "quant_method": "quark",
    "export": {"kv_cache_group": [], "pack_method": "reorder", "weight_format": "real_quantized"},
    "exclude": ["re:.*lm_head", "re:.*embed_tokens", "re:.*self_attn.*", "re:.*mlp.gate$"],
    "global_quant_config": {
        "weight": {
            "dtype": "fp4",
            "qscheme": "per_group",
            "group_size": 32,
            "ch_axis": -1,
            "is_dynamic": False,
            "scale_format": "e8m0",
            "round_method": "half_even",
        },
        "input_tensors": {
            "dtype": "fp4",
            "qscheme": "per_group",
            "group_size": 32,
            "ch_axis": -1,
            "is_dynamic": True,
            "scale_format": "e8m0",
            "round_method": "half_even",
        },
        "output_tensors": None,
        "bias": None,
    },
    "layer_quant_config": {},
    "layer_type_quant_config": {},
}
QUANT = {
    "quark_mxfp4": QUARK_MXFP4,
    "fp8_block": {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": [128, 128],
    },
    "mxfp4": {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    },
    "bf16": None,
}


def make_config(syn: Synthetic, eos_id: int, bos_id: int) -> dict[str, Any]:
    cfg = json.loads((CONFIGS / f"{syn.arch}.json").read_text())
    cfg.pop("_comment", None)
    cfg.update(syn.overrides)
    if "num_hidden_layers" in syn.overrides and "layer_types" in cfg:
        cfg["layer_types"] = cfg["layer_types"][: cfg["num_hidden_layers"]]
    quant = QUANT[syn.quantization]
    if quant is not None:
        cfg["quantization_config"] = json.loads(json.dumps(quant))
    cfg["eos_token_id"], cfg["bos_token_id"] = eos_id, bos_id
    return cfg


def corpus(limit_bytes: int = 4_000_000) -> list[str]:
    """Training text for the tokenizer: the Python standard library's sources (present on every machine)."""
    texts, total = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = f.read_text(errors="ignore")
        texts.append(text)
        total += len(text)
        if total > limit_bytes:
            break
    return texts


def train_tokenizer(vocab_size: int, specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def fingerprint(syn: Synthetic) -> str:
    return hashlib.sha256(syn.model_dump_json().encode()).hexdigest()[:12]


def write_model(syn: Synthetic, out: Path) -> Path:
    """Write config.json + tokenizer files into `out` (atomically: a temp folder renamed at the end)."""
    specials = SPECIALS[syn.arch]
    tok = train_tokenizer(syn.vocab_size, specials)
    bos, eos = tok.token_to_id(specials[0]), tok.token_to_id(specials[1])
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": specials[0],
                "eos_token": specials[1],
                "model_max_length": 1 << 20,
                "clean_up_tokenization_spaces": False,
                "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}",
            },
            indent=2,
        )
    )
    (tmp / "config.json").write_text(json.dumps(make_config(syn, eos, bos), indent=2))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    (tmp / "speedrun.json").write_text(json.dumps({"fingerprint": fingerprint(syn), "synthetic": syn.model_dump()}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def ensure_model(recipe: Recipe, root: Path = DEFAULT_ROOT, *, baseline: bool = False) -> Path:
    """The model folder of one side of a recipe: its path for real models; generated (once, cached by
    fingerprint) under `root/<model.path>` for synthetic ones."""
    model = recipe.model_for(baseline)
    syn = model.synthetic
    if syn is None:
        return Path(model.path)
    out = root / model.path
    stamp = out / "speedrun.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint(syn):
        return out
    return write_model(syn, out)
