"""The one grammar of config-table keys: `[<fmt>:]<dim><=<N>` or `[<fmt>:]<dim>><N>`.

    heads<=16          mla_decode: query heads per rank
    w4a16:tpe<=4       mxfp4_moe: activation format, tokens per expert
    w4a4:tpe>256       the bucket past the largest limit

A value takes the first `<=` bucket (by limit) that holds it, else the `>` bucket, else the largest `<=` one.
Keys starting with `_` (`_meta`) are not buckets.

`Knobs` is the base of each op's typed bucket schema (overlays/<op>/config.py): tables are validated into these
frozen models once, plans hold them, and overrides merge through `Knobs.with_overrides`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from speedrun.overlays.arch import LAUNCH_KEYS

KEY = re.compile(r"^(?:(?P<fmt>\w+):)?(?P<dim>[a-z_]+)(?P<op><=|>)(?P<limit>\d+)$")
GRAMMAR = "[<fmt>:]<dim><=<N> or [<fmt>:]<dim>><N>"
K = TypeVar("K", bound="Knobs")


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


def _pow2(v: int) -> int:
    if v < 1 or v & (v - 1):
        raise ValueError(f"must be a power of two (a tl.arange extent), got {v}")
    return v


Pow2 = Annotated[int, AfterValidator(_pow2)]  # a knob that sizes a tile dimension


class Knobs(BaseModel):
    """Base of the ops' config schemas (a bucket, or a group of knobs that overrides one). Unknown keys are rejected
    and a validated config is frozen: a plan holds these objects, so its knobs cannot drift after it is built.
    Defaults live in the schema; `model_fields_set` remembers what the table entry itself says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def checked(cls, cfg: Mapping[str, Any] | Self, where: str) -> Self:
        """cfg validated (an instance of this schema as is); ValueError naming `where` and the first bad field."""
        if isinstance(cfg, cls):
            return cfg
        try:
            return cls.model_validate(cfg)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    def with_overrides(self, over: Knobs | None) -> Self:
        """These knobs with the ones `over` sets (named in its table entry, not None) in their place. Knobs of `over`
        this schema has no field for (a8w8's mma_m and pv) are not copied: they stay readable on `over`."""
        if over is None:
            return self
        mine = type(self).model_fields
        update = {k: v for k in over.model_fields_set if k in mine and (v := getattr(over, k)) is not None}
        return self.model_copy(update=update)

    def replace(self, **knobs: Any) -> Self:
        """A validated copy with `knobs` given in table terms (enum values, nested dicts or models) in place of
        these: sweep variants and tests. A bad knob is a ValueError naming it."""
        return self.checked({**self.model_dump(exclude_unset=True), **knobs}, type(self).__name__)

    def entry(self) -> dict[str, Any]:
        """As configs/<arch>.json writes it: the knobs set, enums as their values (sweep rows, the tuner)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def launch_knobs(self) -> dict[str, Any]:
        """The Triton launch knobs this config sets (arch.launch_options drops the AMD-only ones for CUDA)."""
        return {k: v for k in LAUNCH_KEYS if (v := getattr(self, k, None)) is not None}


def parse_table(raw: Mapping[str, Any], model: type[K], where: str, dim: str, fmts: tuple[str | None, ...] = (None,),
                expected: str = "") -> dict[str, K]:  # fmt: skip
    """The buckets of a table (`_` keys are metadata), each key in the grammar with this `dim` and one of `fmts`,
    each entry validated: ValueError naming the first bad key or field."""
    out = {}
    for key, cfg in raw.items():
        if key.startswith("_"):
            continue
        b = parse(key)
        if b.dim != dim or b.fmt not in fmts:
            raise ValueError(f"{where}: bucket {key!r}: expected {expected or GRAMMAR}")
        out[key] = model.checked(cfg, f"{where} {key}")
    return out


__all__ = ["GRAMMAR", "Bucket", "Buckets", "Knobs", "Pow2", "parse", "parse_table", "select"]
