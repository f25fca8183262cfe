"""Recipe scenarios -> the measured points (one per concurrency), with CLI scale-downs recorded as notes."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass

from speedrun.recipe import Scenario


@dataclass(frozen=True)
class Case:
    isl: int
    osl: int
    concurrency: int
    prompts: int
    warmup: int
    range_ratio: float = 1.0
    request_rate: float = float("inf")
    ignore_eos: bool = True

    @property
    def name(self) -> str:
        return f"isl{self.isl}-osl{self.osl}-c{self.concurrency}"

    @property
    def group(self) -> str:
        """Cases that form one curve on the throughput/interactivity chart."""
        return f"ISL {self.isl} / OSL {self.osl}"

    def seed(self, base: int = 0) -> int:
        """The same prompts on both sides of a comparison, different prompts per case."""
        return base * 1_000_003 + self.isl * 7919 + self.osl * 104729 + self.concurrency

    def to_dict(self) -> dict:
        d = asdict(self)
        d["request_rate"] = "inf" if self.request_rate == float("inf") else self.request_rate
        return d


@dataclass
class Scale:
    """CLI overrides that shrink the recipe's scenarios (e.g. to fit a 10-minute device call)."""

    concurrency: list[int] | None = None
    prompts_per_concurrency: int | None = None
    warmup_per_concurrency: int | None = None
    isl: int | None = None
    osl: int | None = None

    def __post_init__(self) -> None:
        """A scale-down that would be ignored (0 is falsy) while the results claim it was used is an error."""
        least = {"prompts_per_concurrency": 1, "warmup_per_concurrency": 0, "isl": 1, "osl": 1}
        for name, low in least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, not {value}")
        if self.concurrency is not None and (not self.concurrency or min(self.concurrency) < 1):
            raise ValueError(f"concurrency must be positive integers, not {self.concurrency}")

    def pick(self, scenario: Scenario, name: str):
        """The scale-down when one was given (`is None`, so no falsy value is silently dropped), else the recipe's."""
        value = getattr(self, name)
        return getattr(scenario, name) if value is None else value

    def notes(self, scenarios: list[Scenario]) -> list[str]:
        out = []
        for field in ("concurrency", "prompts_per_concurrency", "warmup_per_concurrency", "isl", "osl"):
            new = getattr(self, field)
            if new is None:
                continue
            old = sorted({str(getattr(s, field)) for s in scenarios})
            if [str(new)] != old:
                out.append(f"{field}: recipe {', '.join(old)} -> {new}")
        return out


def expand(scenarios: list[Scenario], scale: Scale | None = None, filters: list[str] | None = None) -> list[Case]:
    """One Case per (scenario, concurrency), scale-downs applied, duplicates dropped, filters kept."""
    scale = scale or Scale()
    cases: dict[str, Case] = {}
    for s in scenarios:
        ppc, wpc = scale.pick(s, "prompts_per_concurrency"), scale.pick(s, "warmup_per_concurrency")
        for c in scale.pick(s, "concurrency"):
            case = Case(
                isl=scale.pick(s, "isl"),
                osl=scale.pick(s, "osl"),
                concurrency=c,
                prompts=ppc * c,
                warmup=wpc * c,
                range_ratio=s.range_ratio,
                request_rate=s.request_rate,
                ignore_eos=s.ignore_eos,
            )
            cases.setdefault(case.name, case)
    return [c for c in cases.values() if matches(c.name, filters)]


def matches(name: str, filters: list[str] | None) -> bool:
    """Any filter matches: a glob (`isl8192-*`), a whole name, or one of its parts (`c32`)."""
    if not filters:
        return True
    for f in filters:
        glob = any(ch in f for ch in "*?[")
        if fnmatch.fnmatch(name, f) if glob else (f == name or f in name.split("-")):
            return True
    return False


def parse_ints(text: str | None) -> list[int] | None:
    """'4,32,128' -> [4, 32, 128]; ValueError naming the first part that is not a positive integer."""
    if not text:
        return None
    parts = [x for x in text.replace(" ", "").split(",") if x]
    for x in parts or [text]:
        if not x.isdigit() or int(x) < 1:
            raise ValueError(f"{x!r} is not a positive integer (expected e.g. 4,32,128)")
    return [int(x) for x in parts]
