"""The service and its limit of open files (RLIMIT_NOFILE), against a real `simsearch serve` run under `prlimit`:
each open gallery holds about four files, and the common soft limit of 1024 ran out at a few hundred galleries
(session 54's hunt, /tmp/s54/J). The service raises its soft limit to the hard one at start and says so; when files
still run out, a gallery that cannot be opened or made is a 503 `out_of_files` naming the limit and what to do (not
a 503 `index_unavailable` to retry every 5 s, which no retry could fix), logged once, and the service serves on and
recovers once galleries are deleted."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import start_server, stop_server

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None or not Path("/proc/self/limits").exists(),
                                reason="needs prlimit(1) and /proc (Linux)")


def _nofile(pid: int) -> tuple[int, int]:
    """The soft and hard open-file limits of process `pid`, from /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def _serve(hybrid1_artifact, work: Path, nofile: str, env: dict[str, str] | None = None):
    return start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_GALLERIES": "100000",
                         "OMP_NUM_THREADS": "1", **(env or {})},
                        work, args=["--log-level", "info"], prefix=["prlimit", f"--nofile={nofile}", "--"])


def test_serve_raises_its_soft_open_file_limit_to_the_hard_one_and_logs_it(hybrid1_artifact, tmp_path):
    live = _serve(hybrid1_artifact, tmp_path, "1024:4096")
    try:
        assert _nofile(live.proc.pid) == (4096, 4096)
        text = live.log.read_text(errors="replace")
        line = next(ln for ln in text.splitlines() if "limits: writes" in ln)
        assert "open files up to 4,096 (RLIMIT_NOFILE soft, raised from 1,024; hard 4,096)" in line, line
    finally:
        stop_server(live)
