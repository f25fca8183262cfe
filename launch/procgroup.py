"""A server's process group: signal it, tell whether any of it still lives, name the signal that stopped us."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def signal_name(exc: BaseException) -> str:
    """SIGTERM for the CLI's `Interrupted(SIGTERM)`, else SIGINT (a plain KeyboardInterrupt is Ctrl-C)."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Any process of the group that is not a zombie (zombies hold no port or GPU memory; without a reaping init
    in a container they may linger)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():  # not Linux: a zombie counts as alive
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process went while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
