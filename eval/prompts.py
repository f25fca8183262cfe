"""Random-token prompts (no data set, no download): token ids drawn from the model's own vocabulary, special
tokens left out, seeded so both sides of a comparison get the very same prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FALLBACK_RANGE = (1000, 30000)  # inside every vocabulary we serve; used only when no tokenizer can be found


@dataclass
class TokenPool:
    ids: np.ndarray
    source: str  # where the vocabulary came from, recorded in the results

    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        return rng.choice(self.ids, size=n).tolist()


def vocab_from_tokenizer_json(path: Path) -> np.ndarray:
    """Ids of a HF `tokenizer.json`, without its special added tokens (read as JSON: no tokenizer library)."""
    data = json.loads(path.read_text())
    vocab = data.get("model", {}).get("vocab", {})
    ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
    ids |= {t["id"] for t in data.get("added_tokens", []) if not t.get("special")}
    ids -= {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    return np.array(sorted(i for i in ids if isinstance(i, int)), dtype=np.int64)


def vocab_from_config(path: Path) -> np.ndarray | None:
    """Without a tokenizer: the middle of [0, vocab_size) (special tokens sit at the ends by convention)."""
    size = json.loads(path.read_text()).get("vocab_size")
    if not isinstance(size, int) or size < 64:
        return None
    return np.arange(size // 100, size - size // 20, dtype=np.int64)


def hf_cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a HF model already in the local cache; never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # a malformed id or a cache we cannot read: just not found
        return None
    return Path(found) if isinstance(found, str) else None


def find_file(where: str | Path, filename: str) -> Path | None:
    p = Path(where)
    if p.is_dir():
        return p / filename if (p / filename).is_file() else None
    if "/" in str(where) and not p.is_absolute():
        return hf_cached_file(str(where), filename)
    return None


def token_pool(candidates: list[str | Path | None]) -> TokenPool:
    """The vocabulary of the first candidate (model/tokenizer folder or HF id) that has one."""
    cands = [c for c in candidates if c]
    for c in cands:
        tok = find_file(c, "tokenizer.json")
        if tok is not None:
            ids = vocab_from_tokenizer_json(tok)
            if len(ids) >= 64:
                return TokenPool(ids, f"tokenizer.json of {c}")
    for c in cands:
        cfg = find_file(c, "config.json")
        ids = vocab_from_config(cfg) if cfg is not None else None
        if ids is not None:
            return TokenPool(ids, f"vocab_size of {c}/config.json")
    lo, hi = FALLBACK_RANGE
    return TokenPool(np.arange(lo, hi, dtype=np.int64), f"fallback ids [{lo}, {hi}) (no tokenizer found)")


def random_lens(rng: np.random.Generator, full: int, range_ratio: float, n: int) -> list[int]:
    """Lengths uniform in [full * range_ratio, full] (SGLang's `compute_random_lens`); ratio 1 = fixed."""
    lo = max(int(full * range_ratio), 1)
    return [int(x) for x in rng.integers(lo, full + 1, size=n)]


def random_prompts(
    pool: TokenPool, n: int, isl: int, osl: int, range_ratio: float, seed: int
) -> list[tuple[list[int], int]]:
    """n (input_ids, max_new_tokens) pairs."""
    rng = np.random.default_rng(seed)
    ins = random_lens(rng, isl, range_ratio, n)
    outs = random_lens(rng, osl, range_ratio, n)
    return [(pool.sample(rng, i), o) for i, o in zip(ins, outs, strict=False)]
