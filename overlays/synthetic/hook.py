"""AFTER hook on SGLang's `initialize_dummy_weights(model, ...)`: refill sanely before
`process_weights_after_loading` re-lays the weights out (so stock and overlay kernels see the same model)."""

from __future__ import annotations

import os
from typing import Any

from speedrun.overlays import report
from speedrun.overlays.synthetic.fill import fill_model_


def fill_after_dummy(result: Any, model: Any, *args: Any, **kwargs: Any) -> None:
    seed = int(os.environ.get("SPEEDRUN_SEED", "0"))
    counts = fill_model_(model, seed)
    report.called("synthetic/fill_after_dummy")
    report.record(synthetic={"seed": seed, "tensors": counts})
