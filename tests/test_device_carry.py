"""The repository travels to the GPU host with every device call, inside one 64 MiB carry next to the offline
SGLang bundle (~55.4 MiB with DeepGEMM, ../shared/device/README.md and scripts/device/add_deepgemm.sh) and the
synthetic model folders of an end-to-end run (~1.1 MiB for the DeepSeek FP8-KV recipe's two): what is tracked must
leave them room, or the calls that need them cannot be made at all."""

import shutil
import subprocess
from pathlib import Path

import pytest

from speedrun.eval.pack import packable

ROOT = Path(__file__).resolve().parents[1]
TRACKED_BUDGET = 7 * 2**20  # 64 MiB - bundle - model folders, with ~0.5 MiB to spare


def tracked_bytes() -> tuple[int, list[tuple[int, str]]]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    sizes = [((ROOT / p).stat().st_size, p) for p in out.decode().split("\0") if p and (ROOT / p).is_file()]
    return sum(s for s, _ in sizes), sorted(sizes, reverse=True)[:5]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_tracked_files_leave_the_gpu_bundle_room_in_the_device_carry() -> None:
    total, largest = tracked_bytes()
    assert total <= TRACKED_BUDGET, (
        f"tracked files take {total / 2**20:.2f} MiB, over the {TRACKED_BUDGET / 2**20:.0f} MiB the device carry "
        f"leaves beside the bundle and model folders: pack result data (python -m speedrun.eval.pack FOLDER), "
        f"shrink PNGs (python -m speedrun.eval.png), trim logs (scripts/trim_log.py); largest: {largest}"
    )


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_committed_result_data_is_packed() -> None:
    """Result JSON and logs shrink 5-6x in gzip, and every tracked byte travels with every device call: a result
    folder committed plain fails here, with the command that packs it, rather than the carry budget later."""
    out = subprocess.run(["git", "ls-files", "-z", "docs/results"], cwd=ROOT, capture_output=True, check=True).stdout
    plain = [p for p in out.decode().split("\0") if p and (ROOT / p).is_file() and packable(ROOT / p)]
    assert not plain, f"{len(plain)} result data file(s) committed plain: python -m speedrun.eval.pack {plain[0]}"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts/device").glob("*.sh")))
def test_device_scripts_parse(script: str) -> None:
    """A device call spends minutes of a 30-minute budget before its script runs: a script that does not parse
    must fail here, not there."""
    subprocess.run(["bash", "-n", str(ROOT / "scripts/device" / script)], check=True)
