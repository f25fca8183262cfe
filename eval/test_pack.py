"""Result data committed gzip-compressed (eval/pack.py): packed in place, read back by its plain name, and the
Markdown that names it repointed."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

from speedrun.eval.pack import MIN_BYTES, gzip_bytes, main, markdown_files, read_json, read_text, repoint, resolve
from speedrun.eval.results import ResultsFile

ROOT = Path(__file__).resolve().parents[1]


def _folder(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    rows = [{"m": m, "us": m * 1.5, "impl": "speedrun"} for m in range(2000)]
    (run / "sub" / "bench.json").write_text(json.dumps({"rows": rows}))
    (run / "server.log").write_text("".join(f"[{i}] decode batch, #running-req: 32\n" for i in range(500)))
    (run / "summary.json").write_text(json.dumps({"ok": True}))  # small: stays plain
    (run / "baseline.lock.json").write_text(json.dumps({"pad": "x" * 2 * MIN_BYTES}))  # read by `speedrun run`
    (run / "plot.png").write_bytes(b"\x89PNG" + bytes(2 * MIN_BYTES))
    (run / "README.md").write_text("rows: [bench](sub/bench.json); log: `server.log`\n")
    return run


def test_pack_replaces_big_data_files_and_they_read_back_by_their_plain_names(tmp_path: Path, capsys) -> None:
    run = _folder(tmp_path)
    before = read_json(run / "sub" / "bench.json")
    log = (run / "server.log").read_text()
    assert main([str(run)]) == 0
    assert "2 file(s) packed" in capsys.readouterr().out
    names = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert names == [
        "README.md",
        "baseline.lock.json",
        "plot.png",
        "server.log.gz",
        "sub/bench.json.gz",
        "summary.json",
    ]
    assert (run / "README.md").read_text() == "rows: [bench](sub/bench.json.gz); log: `server.log.gz`\n"
    assert read_json(run / "sub" / "bench.json") == before == read_json(run / "sub" / "bench.json.gz")
    assert read_text(run / "server.log") == log
    assert resolve(run / "summary.json") == run / "summary.json"
    assert (run / "sub" / "bench.json.gz").stat().st_size < 0.3 * len(json.dumps(before))
    assert main([str(run)]) == 0 and "0 file(s) packed" in capsys.readouterr().out  # idempotent


def test_packed_bytes_are_deterministic_and_plain_gzip() -> None:
    data = b"same input, same bytes" * 100
    a, b = gzip_bytes(data), gzip_bytes(data)
    assert a == b and a[4:8] == b"\0\0\0\0"  # no time in the header
    assert gzip.decompress(a) == data


def test_repoint_renames_only_references_to_packed_files(tmp_path: Path) -> None:
    run = _folder(tmp_path)
    main([str(run)])
    text = (
        "[rows](sub/bench.json), `run/server.log`, run/sub/bench.json.gz stays, "
        "overlay.json is a name only, [small](summary.json), ../elsewhere/x.json; "
        "written: `cmd > run/server.log`, `cmd | tee sub/bench.json`"
    )
    out = repoint(text, (run, tmp_path))
    assert out == (
        "[rows](sub/bench.json.gz), `run/server.log.gz`, run/sub/bench.json.gz stays, "
        "overlay.json is a name only, [small](summary.json), ../elsewhere/x.json; "
        "written: `cmd > run/server.log`, `cmd | tee sub/bench.json`"
    )


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    for args in ([], ["--help"], [str(tmp_path / "nope")]):
        res = subprocess.run([sys.executable, "-m", "speedrun.eval.pack", *args], capture_output=True, text=True)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, args


def test_committed_results_load_by_their_plain_names() -> None:
    """The e2e folders are committed packed; `speedrun compare`/`report` take the names the reports print."""
    folder = ROOT / "docs/results/e2e/synth-deepseek-mxfp4-l30-fp8kv-h100-1k/c32-round12"
    for side in ("baseline", "overlay"):
        assert resolve(folder / f"{side}.json").suffix == ".gz"
        rf = ResultsFile.load(folder / f"{side}.json")
        assert rf.data["scenarios"] and rf.data["side"] == side


def test_markdown_names_only_result_files_that_exist() -> None:
    """Every docs/results path the tracked Markdown names is there, under the name given (a pack repoints them; a
    result folder moved or packed by hand would leave a dead reference)."""
    root, mds = markdown_files(ROOT)
    token = re.compile(r"(?<![\w./-])(docs/results/[\w./-]+\.(?:json|txt|log|tail|csv|png|md)(?:\.gz)?)(?![\w.])")
    named = {(md.relative_to(root), m.group(1)) for md in mds for m in token.finditer(md.read_text())}
    assert named, "no docs/results path found in the Markdown: the pattern is stale"
    missing = sorted(f"{md}: {path}" for md, path in named if not (root / path).is_file())
    assert not missing, missing[:5]
