"""README.md says what the code does: its plugin table names exactly the hook targets of overlays.TABLE."""

import re
from itertools import takewhile
from pathlib import Path

from speedrun.overlays import hooks

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| op | SGLang 0.5.17 target"


def plugin_table() -> list[tuple[str, str]]:
    """(op, name) for every backticked name in the target column of the README's plugin table; `.attr` is an
    attribute of the class named just before it."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    out = []
    for line in takewhile(lambda s: s.startswith("|"), lines[start + 2 :]):
        op, target = (c.strip() for c in line.strip("|").split("|")[:2])
        prev = ""
        for name in re.findall(r"`([^`]+)`", target):
            prev = prev.rsplit(".", 1)[0] + name if name.startswith(".") else name
            out.append((op, prev))
    return out


def test_readme_plugin_table_lists_exactly_the_hook_targets():
    table = {(h.op, h.target) for h in hooks()}
    listed = plugin_table()
    named = set()
    for op, name in listed:  # a README name is a dotted tail of one target of its op (under sglang.srt.)
        hits = {t for o, t in table if o == op and t.endswith(f".{name}")}
        assert len(hits) == 1, f"README plugin table: {op} `{name}` names {len(hits)} targets of overlays.TABLE"
        named |= hits
    assert len(listed) == len(table), f"README plugin table: {len(listed)} names for {len(table)} hook targets"
    assert named == {t for _, t in table}, f"README plugin table lacks {sorted({t for _, t in table} - named)}"
