"""AFTER hook on SGLang's `initialize_dummy_weights(model, ...)`: refill sanely before
`process_weights_after_loading` re-lays the weights out (so stock and overlay kernels see the same model)."""

from __future__ import annotations

from typing import Any

from speedrun.overlays import environ, report
from speedrun.overlays.synthetic.fill import fill_report_


def fill_after_dummy(result: Any, model: Any, *args: Any, **kwargs: Any) -> None:
    seed = environ.settings().seed
    done = fill_report_(model, seed)
    report.called("synthetic/fill_after_dummy")
    # tp_unmapped: tensors drawn from local coordinates (their TP=N values differ from TP=1); capped for the report
    unmapped = done["tp_unmapped"]
    report.record(synthetic={"seed": seed, **done, "tp_unmapped": unmapped[:50], "tp_unmapped_count": len(unmapped)})
