"""Checks of a multi-GPU run (scripts/device/multi_gpu.sh): one overlay report per tensor-parallel rank with
kernel calls, and NVLink multicast off in every process the launcher started.

    python -m speedrun.eval.readiness.ranks reports RESULTS.json|REPORT_DIR --tp 2 --ops mla_decode
    python -m speedrun.eval.readiness.ranks env ENV_SEEN.txt [--dry-run LAUNCH_LINE.txt]
    python -m speedrun.eval.readiness.ranks derive RECIPE --tp N --out FILE   (same model, another TP)
    python -m speedrun.eval.readiness.ranks gate SUMMARY.json --name agreement  (one gate of a compare)
Exit 1 with one line per problem; pure functions, tested on the CPU.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from speedrun.eval.pack import data_files, read_json

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def load_reports(path: Path) -> list[dict[str, Any]]:
    """Overlay reports from a results file (its `overlay_reports`) or a report folder."""
    path = Path(path)
    if path.is_dir():
        return [read_json(f) for f in data_files(path, "overlay-*.json")]
    return list(read_json(path).get("overlay_reports") or [])


def op_calls(report: dict[str, Any], op: str) -> int:
    """Calls of one op in a report; keys are "op" or "op:variant"."""
    return sum(int(n) for k, n in (report.get("calls") or {}).items() if k == op or k.startswith(f"{op}:"))


def check_ranks(reports: list[dict[str, Any]], tp: int, ops: list[str]) -> list[str]:
    """Problems (empty: fine): every rank 0..tp-1 has exactly one scheduler report, hooks applied, calls > 0 for
    each op, no errors; no report names a rank outside the range."""
    problems = []
    sched = [r for r in reports if r.get("role") == "scheduler"]
    ranks = [r.get("tp_rank") for r in sched]
    if extra := sorted({k for k in ranks if not isinstance(k, int) or not 0 <= k < tp}, key=str):
        problems.append(f"scheduler report(s) with tp_rank outside 0..{tp - 1}: {extra}")
    for rank in range(tp):
        mine = [r for r in sched if r.get("tp_rank") == rank]
        if len(mine) != 1:
            problems.append(f"rank {rank}: {len(mine)} scheduler reports (expected 1)")
            continue
        r = mine[0]
        if not r.get("applied"):
            problems.append(f"rank {rank} (pid {r.get('pid')}): no hooks applied")
        problems += [f"rank {rank}: {op} has 0 calls" for op in ops if op_calls(r, op) <= 0]
        problems += [f"rank {rank}: error: {e}" for e in r.get("errors") or []]
    return problems


def parse_environ(text: str) -> dict[str, str]:
    """/proc/PID/environ (NUL-separated) or one KEY=VALUE per line."""
    sep = "\0" if "\0" in text else "\n"
    return dict(item.split("=", 1) for item in text.split(sep) if "=" in item)


def check_env(env: dict[str, str], what: str) -> list[str]:
    return [f"{what}: {k}={env.get(k)!r}, expected {v!r}" for k, v in NO_MULTICAST.items() if env.get(k) != v]


def check_env_seen(text: str) -> list[str]:
    """The watcher's file: blocks "== PID CMDLINE" followed by that process's KEY=VALUE lines (the multicast
    variables it had). At least one server process must have been seen, and each must have all three."""
    blocks, problems = [], []
    for line in text.splitlines():
        if line.startswith("== "):
            blocks.append((line[3:], {}))
        elif blocks and "=" in line:
            k, v = line.split("=", 1)
            blocks[-1][1][k] = v
    if not blocks:
        return ["no SGLang server process was seen by the environment watcher"]
    for head, env in blocks:
        problems += check_env(env, head[:80])
    return problems


def check_dry_run(line: str) -> list[str]:
    """`speedrun launch RECIPE --dry-run` output: the env assignments before the python command."""
    cmd = next((x for x in line.splitlines() if "sglang.launch_server" in x), "")
    if not cmd:
        return ["dry-run output has no sglang.launch_server line"]
    env = dict(w.split("=", 1) for w in shlex.split(cmd) if "=" in w and not w.startswith("-"))
    return check_env(env, "launch --dry-run")


def derive(recipe: Path, tp: int, out: Path) -> str:
    """Write the recipe at another tensor-parallel size (same model folder and seed); returns its name."""
    import yaml

    from speedrun.recipe import load_recipe

    data = yaml.safe_load(Path(recipe).read_text())
    data["name"] = f"{data['name']}-tp{tp}"
    data.setdefault("server", {})["tp"] = tp
    data["hardware"]["gpus"] = tp
    Path(out).write_text(yaml.safe_dump(data, sort_keys=False))
    return load_recipe(out).name  # validates: the derived file must be a usable recipe


def check_gate(summary: dict[str, Any], name: str) -> list[str]:
    """One gate of a `speedrun compare` summary.json (matched by prefix: "agreement" also takes the calibrated
    form): it must exist and pass. The other gates (e.g. throughput, absent from an eval-only side) are ignored."""
    gates = [g for g in summary.get("gates", []) if str(g.get("name", "")).startswith(name)]
    if not gates:
        return [f"no {name!r} gate in the summary (gates: {[g.get('name') for g in summary.get('gates', [])]})"]
    return [f"{g['name']}: {g.get('detail', '')}" for g in gates if not g.get("passed")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    rp = sub.add_parser("reports")
    rp.add_argument("path", type=Path)
    rp.add_argument("--tp", type=int, required=True)
    rp.add_argument("--ops", default="", help="comma-separated ops that must have calls on every rank")
    ep = sub.add_parser("env")
    ep.add_argument("seen", type=Path)
    ep.add_argument("--dry-run", type=Path, default=None)
    dp = sub.add_parser("derive")
    dp.add_argument("recipe", type=Path)
    dp.add_argument("--tp", type=int, required=True)
    dp.add_argument("--out", type=Path, required=True)
    gp = sub.add_parser("gate")
    gp.add_argument("summary", type=Path)
    gp.add_argument("--name", default="agreement")
    a = p.parse_args(argv)
    if a.what == "gate":
        problems = check_gate(json.loads(a.summary.read_text()), a.name)
        print("\n".join(f"FAIL {x}" for x in problems) or f"ok: {a.name} passed")
        return 1 if problems else 0
    if a.what == "derive":
        print(derive(a.recipe, a.tp, a.out))
        return 0
    if a.what == "reports":
        problems = check_ranks(load_reports(a.path), a.tp, [o for o in a.ops.split(",") if o])
    else:
        problems = check_env_seen(a.seen.read_text(errors="replace"))
        problems += check_dry_run(a.dry_run.read_text()) if a.dry_run else []
    for line in problems:
        print(f"FAIL {line}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
