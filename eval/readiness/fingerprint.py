"""A hash of each compiled kernel's machine code with the debug noise taken out, so a refactor of GPU-verified
Triton source can be shown, on a CPU, to leave the code that ran on the GPU unchanged.

sm90: the SASS instructions `cuobjdump -sass` prints for the cubin (addresses, encodings and comments dropped).
gfx950: the amdgcn listing before its debug sections, without `.loc`/`.file` lines, comments, the `.Ltmp`
labels that inlined helpers add, and with the kernel's name replaced. Two sources that compile to the same
instructions get the same fingerprint.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile

from speedrun.eval.readiness.resources import cuobjdump

_SASS_LINE = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s*(.*?)\s*;")
_GCN_NOISE = re.compile(r"^\s*(\.loc|\.file|;|//|\.Ltmp\d+:|\.Lfunc_end)|Ltmp|\.debug_")


def sass(cubin: bytes) -> list[str]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(cuobjdump()), "-sass", f.name], capture_output=True, text=True, check=True,
                             timeout=120).stdout  # fmt: skip
    return [m.group(1) for line in out.splitlines() if (m := _SASS_LINE.match(line))]


def gcn(asm: str) -> list[str]:
    body = asm.split(".section\t.debug", 1)[0]
    name = re.search(r"\.globl\s+(\S+)", body)
    if name:  # the kernel's own name (a renamed kernel with the same code is the same code)
        body = re.sub(rf"\b{re.escape(name.group(1))}\b", "KERNEL", body)
    lines = (line.split(";", 1)[0].strip() for line in body.splitlines() if not _GCN_NOISE.search(line))
    return [line for line in lines if line]


def fingerprint(arch: str, asm: str, binary: bytes | None) -> tuple[str, int]:
    """(sha1 of the normalized instructions, their count)."""
    lines = sass(binary) if arch == "sm90" and binary is not None else gcn(asm)
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16], len(lines)


def compare(old_rows: list[dict], new_rows: list[dict]) -> dict[str, list[str]]:
    """Rows matched by (arch, kernel): which kept their machine code, which changed, which are new / gone (the
    earlier report is read only for the (op, arch) pairs compiled now, so a narrower run loses nothing)."""
    scope = {(r.get("op"), r["arch"]) for r in new_rows}
    old_rows = [r for r in old_rows if (r.get("op"), r["arch"]) in scope]
    old = {f"{r['arch']}:{r['kernel']}": r.get("fingerprint") for r in old_rows}
    new = {f"{r['arch']}:{r['kernel']}": r.get("fingerprint") for r in new_rows}
    return {
        "same": sorted(k for k in new if k in old and new[k] and new[k] == old[k]),
        "changed": sorted(k for k in new if k in old and new[k] != old[k]),
        "new": sorted(k for k in new if k not in old),
        "gone": sorted(k for k in old if k not in new),
    }
