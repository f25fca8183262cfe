"""Two results files (baseline, overlay) -> paired scenarios, speedups, agreement and the pass/fail gates; with a
third (control: a second stock configuration, agreement samples only) the agreement is also judged against
stock's own disagreement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from speedrun.eval import agreement as agreement_mod
from speedrun.recipe import Agreement, Side

PAIRED = (Side.BASELINE, Side.OVERLAY)  # the two sides a comparison pairs (the control gives agreement only)


@dataclass
class Row:
    name: str
    case: dict[str, Any]
    baseline: dict[str, Any] | None
    overlay: dict[str, Any] | None

    def entry(self, side: Side) -> dict[str, Any] | None:
        """This scenario's entry on `side` (baseline or overlay); None where that side has no such scenario."""
        return {Side.BASELINE: self.baseline, Side.OVERLAY: self.overlay}[side]

    def metric(self, side: Side, key: str) -> float | None:
        v = ((self.entry(side) or {}).get("metrics") or {}).get(key)
        return v if isinstance(v, int | float) else None

    def ratio(self, key: str, higher_is_better: bool = True) -> float | None:
        """overlay vs baseline, > 1 = overlay better (for latencies: baseline / overlay)."""
        b, o = self.metric(Side.BASELINE, key), self.metric(Side.OVERLAY, key)
        if not b or not o:
            return None
        return o / b if higher_is_better else b / o

    @property
    def speedup(self) -> float | None:
        return self.ratio("total_throughput_per_gpu")


@dataclass
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass
class Comparison:
    baseline: dict[str, Any]  # the baseline side's results file
    overlay: dict[str, Any]  # the overlay side's results file
    rows: list[Row]
    agreement: dict[str, Any] | None  # baseline vs overlay
    # baseline vs control, + "label" and "calibrated" (the overlay's verdict against it)
    control_agreement: dict[str, Any] | None = None
    control_requested: bool = False
    gates: list[Gate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def side(self, side: Side) -> dict[str, Any]:
        return {Side.BASELINE: self.baseline, Side.OVERLAY: self.overlay}[side]


def first_line(text: str | None, limit: int = 300) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:limit] if lines else ""


def by_name(side: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A side's scenarios by name; a name seen twice (several runs in one file) is an error, never a silent pick."""
    out: dict[str, dict[str, Any]] = {}
    for e in side.get("scenarios", []):
        if e["name"] in out:
            raise ValueError(f"{side.get('side', '?')} results hold scenario {e['name']!r} more than once")
        out[e["name"]] = e
    return out


def pair(baseline: dict[str, Any], overlay: dict[str, Any]) -> list[Row]:
    b, o = by_name(baseline), by_name(overlay)
    names = list(b) + [n for n in o if n not in b]
    return [Row(n, (b.get(n) or o.get(n))["case"], b.get(n), o.get(n)) for n in names]


def samples(side: dict[str, Any] | None) -> dict[str, Any] | None:
    return ((side or {}).get("accuracy") or {}).get("agreement_samples")


def agreement_of(baseline: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any] | None:
    sb, so = samples(baseline), samples(overlay)
    if not sb or not so:
        return None
    return agreement_mod.compare(sb, so, Agreement(**so["config"]))


def control_of(
    baseline: dict[str, Any], control: dict[str, Any] | None, overlay_agreement: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Baseline vs control with the same maths, and the overlay's calibrated verdict against it."""
    sb, sc = samples(baseline), samples(control)
    if not sb or not sc:
        return None
    cfg = Agreement(**sc["config"])
    res = agreement_mod.compare(sb, sc, cfg)
    res["label"] = cfg.control.label if cfg.control else "control"
    if overlay_agreement is not None:
        res["calibrated"] = agreement_mod.calibrated(overlay_agreement, res, cfg)
    return res


def server_gates(c: Comparison) -> list[Gate]:
    out = []
    for side in PAIRED:
        errs = [f"{e['what']}: {first_line(e.get('message'), 200)}" for e in c.side(side).get("errors", [])]
        out.append(Gate(f"{side} side", not errs, "; ".join(errs) or "started, ran, stopped"))
    return out


def throughput_gate(c: Comparison) -> Gate:
    bad = [
        f"{r.name} ({side}: {(r.entry(side) or {}).get('status', 'missing')})"
        for r in c.rows
        for side in PAIRED
        if (r.entry(side) or {}).get("status") != "ok"
    ]
    ok = f"{len(c.rows)} scenario(s) complete on both sides"
    return Gate("throughput scenarios", not bad and bool(c.rows), "; ".join(bad) if bad else ok)


def accuracy_gates(c: Comparison) -> list[Gate]:
    """A requested check with no result fails: a crash must not pass for a skipped gate."""
    out = []
    g = c.overlay.get("accuracy", {}).get("gsm8k")
    if g:
        detail = f"{g['score_flexible']:.3f} vs min {g['min_score']:.3f} ({g['questions']} questions)"
        out.append(Gate("GSM8K (overlay)", bool(g.get("passed")), detail))
    elif c.overlay.get("accuracy_requested", {}).get("gsm8k"):
        out.append(Gate("GSM8K (overlay)", False, "requested but no result (see Cut or failed)"))
    a = c.agreement
    if a:
        out.append(agreement_gate(a, c.control_agreement, c.control_requested))
    elif any(c.side(s).get("accuracy_requested", {}).get("agreement") for s in PAIRED):
        out.append(Gate("agreement", False, "requested but samples are missing on a side"))
    return out


def agreement_gate(a: dict[str, Any], ctl: dict[str, Any] | None, calibrate: bool) -> Gate:
    """Absolute limits, or (gate: calibrated) the overlay against the control's numbers; a calibrated gate whose
    control did not run fails rather than silently falling back."""
    detail = (
        f"match {a['match_rate']:.3f} (min {a['min_token_match']}), max |dlogp| "
        f"{a['max_logprob_diff']:.3g} (<= {a['max_logprob_diff_limit']}), mean "
        f"{a['mean_logprob_diff']:.3g} (<= {a['mean_logprob_diff_limit']}), "
        f"near-tie divergences {a['near_tie_divergences']}/{len(a['divergences'])}"
    )
    if not calibrate:
        return Gate("agreement", bool(a["passed"]), detail)
    if not ctl or "calibrated" not in ctl:
        return Gate("agreement (calibrated)", False, "the control side has no agreement samples; " + detail)
    crit = ctl["calibrated"]["criteria"]
    parts = [f"{k} {v['value']:.3g} vs limit {v['limit']:.3g}{'' if v['ok'] else ' FAIL'}" for k, v in crit.items()]
    label = f"agreement (calibrated on stock vs {ctl['label']})"
    return Gate(label, bool(ctl["calibrated"]["passed"]), "; ".join(parts) + f" [absolute: {detail}]")


def overlay_gate(c: Comparison) -> list[Gate]:
    """The overlay side must have run the overlays: reports present, calls counted, no errors."""
    reports, asked = c.overlay.get("overlay_reports"), c.overlay.get("overlays_requested")
    if reports is None or not asked:
        return []
    errs = [str(e) for r in reports for e in r.get("errors", [])]
    calls = sum(n for r in reports for n in (r.get("calls") or {}).values())
    if not reports:
        detail = "no per-process overlay report: was the plugin loaded?"
    elif errs:
        detail = "; ".join(errs)
    else:
        detail = f"{calls} overlay call(s) in {len(reports)} process(es); requested {', '.join(asked)}"
    return [Gate("overlays applied", bool(reports) and not errs and calls > 0, detail)]


def gates(c: Comparison) -> list[Gate]:
    return [*server_gates(c), throughput_gate(c), *accuracy_gates(c), *overlay_gate(c)]


def warnings_of(c: Comparison) -> list[str]:
    w = []
    nb, no = c.baseline.get("scale_notes", []), c.overlay.get("scale_notes", [])
    w += [f"scaled down: {n}" for n in no if n in nb]
    w += [f"baseline only, scaled down: {n}" for n in nb if n not in no]
    w += [f"overlay only, scaled down: {n}" for n in no if n not in nb]
    if c.control_requested and c.control_agreement is None:
        w.append("agreement control: no samples (did the control side run? see control.json)")
    g = c.baseline.get("accuracy", {}).get("gsm8k")
    if g and not g.get("passed"):
        w.append(
            f"baseline GSM8K {g['score_flexible']:.3f} is below the recipe's min {g['min_score']}: "
            "the threshold or the model setup is off"
        )
    return w


def compare(baseline: dict[str, Any], overlay: dict[str, Any], control: dict[str, Any] | None = None) -> Comparison:
    """The three sides' results files (control optional: agreement samples only) -> rows, agreement, gates."""
    a = agreement_of(baseline, overlay)
    cfg = (samples(overlay) or {}).get("config") or {}
    calibrate = cfg.get("gate") == "calibrated"
    c = Comparison(baseline, overlay, pair(baseline, overlay), a, control_of(baseline, control, a), calibrate)
    c.gates = gates(c)
    c.warnings = warnings_of(c)
    return c
