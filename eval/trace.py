"""One streamed request, as recorded: when each chunk arrived and how many tokens it brought.

Every latency metric is derived from this record, the way SGLang's `bench_serving` derives it from the same
stream, so results can be recomputed later from the saved traces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestTrace:
    prompt_len: int
    max_new_tokens: int
    start: float = 0.0  # seconds since the scenario started (when the request was sent)
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (s since start, cumulative completion tokens)
    latency: float = 0.0  # s from send to the last line of the stream (SGLang: "latency", includes [DONE])
    success: bool = False
    error: str = ""

    @property
    def output_len(self) -> int:
        return self.chunks[-1][1] if self.chunks else 0

    @property
    def ttft(self) -> float:
        """Time to the first chunk that carried a token (0 when none did, as in SGLang)."""
        return self.chunks[0][0] if self.chunks else 0.0

    def itls(self) -> list[float]:
        """Inter-token latencies: a chunk's gap is spread evenly over the tokens it brought (SGLang's rule)."""
        out: list[float] = []
        for (t0, n0), (t1, n1) in zip(self.chunks, self.chunks[1:], strict=False):
            new = n1 - n0
            if new > 0:
                out.extend([(t1 - t0) / new] * new)
        return out

    def tpot(self) -> float | None:
        """Time per output token after the first: (latency - ttft) / (output_len - 1); None for one token."""
        n = self.output_len
        return (self.latency - self.ttft) / (n - 1) if n > 1 else None

    def add_chunk(self, t: float, cumulative_tokens: int) -> None:
        """Record a chunk; chunks that bring no new token are dropped (SGLang skips them too)."""
        last = self.chunks[-1][1] if self.chunks else 0
        if cumulative_tokens > last:
            self.chunks.append((t, cumulative_tokens))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks"] = [[round(t, 6), n] for t, n in self.chunks]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestTrace:
        d = dict(d)
        d["chunks"] = [(float(t), int(n)) for t, n in d.get("chunks", [])]
        return cls(**d)
