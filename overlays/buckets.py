"""The one grammar of config-table keys: `[<fmt>:]<dim><=<N>` or `[<fmt>:]<dim>><N>`.

    heads<=16          mla_decode: query heads per rank
    w4a16:tpe<=4       mxfp4_moe: activation format, tokens per expert
    w4a4:tpe>256       the bucket past the largest limit

A value takes the first `<=` bucket (by limit) that holds it, else the `>` bucket, else the largest `<=` one.
Keys starting with `_` (`_meta`) are not buckets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

KEY = re.compile(r"^(?:(?P<fmt>\w+):)?(?P<dim>[a-z_]+)(?P<op><=|>)(?P<limit>\d+)$")
GRAMMAR = "[<fmt>:]<dim><=<N> or [<fmt>:]<dim>><N>"


@dataclass(frozen=True)
class Bucket:
    key: str
    fmt: str | None
    dim: str
    above: bool  # `>N`: every value past N
    limit: int


def parse(key: str) -> Bucket:
    """One key -> Bucket; ValueError naming the key and the grammar."""
    m = KEY.match(key)
    if m is None:
        raise ValueError(f"config bucket {key!r}: expected {GRAMMAR}")
    return Bucket(key, m["fmt"], m["dim"], m["op"] == ">", int(m["limit"]))


@dataclass(frozen=True)
class Buckets:
    """The buckets of one (dim, fmt) of a table, ready to pick from (built once, picked per call)."""

    upto: tuple[tuple[int, str], ...]  # (limit, key), ascending
    above: str | None

    @classmethod
    def of(cls, keys: Iterable[str], dim: str, fmt: str | None = None) -> Buckets:
        mine = [b for b in map(parse, (k for k in keys if not k.startswith("_"))) if b.dim == dim and b.fmt == fmt]
        upto = tuple(sorted((b.limit, b.key) for b in mine if not b.above))
        above = next((b.key for b in mine if b.above), None)
        if not upto and above is None:
            raise ValueError(f"no {fmt + ':' if fmt else ''}{dim} buckets in the table")
        return cls(upto, above)

    def pick(self, value: float) -> str:
        for limit, key in self.upto:
            if value <= limit:
                return key
        return self.above or self.upto[-1][1]


def select(keys: Iterable[str], dim: str, value: float, fmt: str | None = None) -> str:
    """The key of the bucket that holds `value` (see the module docstring)."""
    return Buckets.of(keys, dim, fmt).pick(value)


__all__ = ["GRAMMAR", "Bucket", "Buckets", "parse", "select"]


def check_bucket(model: type[BaseModel], cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate one bucket's knobs against its op's schema (ValueError naming the first bad field); cfg unchanged."""
    try:
        model.model_validate(cfg)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return cfg
