"""Helpers for the benchmarks that drive the real service: galleries, the server process, wrk, metrics."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from _common import REPO

WORK = Path(os.environ.get("SIMSEARCH_BENCH_DIR", "/tmp/simsearch-bench"))
LUA = Path(__file__).resolve().parent / "wrk_multipart.lua"


def simsearch_exe() -> str:
    exe = Path(sys.executable).parent / "simsearch"
    return str(exe) if exe.exists() else "simsearch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_gallery(n: int, model_id: str, dim: int, chunk: int = 10_000, seed: int = 0) -> tuple[Path, float]:
    """A data directory whose index holds n random unit vectors (ids g0.., labels c0..c9), made through
    index.Store directly; cached under WORK by size and model id. Returns the data
    directory and the seconds it took to build (0.0 when cached). Delete $SIMSEARCH_BENCH_DIR when the
    store's on-disk format changes."""
    import numpy as np

    from index import Item, Store, StoreConfig

    data_dir = WORK / f"gallery-{n}-{model_id.replace('@', '-')}"
    marker = data_dir / "COMPLETE"
    if marker.exists():
        return data_dir, 0.0
    shutil.rmtree(data_dir, ignore_errors=True)
    t0 = time.perf_counter()
    store = Store.open(StoreConfig(path=data_dir / "index", dim=dim, model_id=model_id, index="flat"))
    rng = np.random.default_rng(seed)
    try:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            v = rng.standard_normal((m, dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            store.upsert([Item(id=f"g{start + i}", vector=v[i], label=f"c{(start + i) % 10}") for i in range(m)])
            if n >= 100_000 and (start // chunk) % 10 == 0:
                print(f"  gallery {n}: {start + m} items ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        store.close()
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps({"items": n, "model_id": model_id, "seconds": seconds}))
    return data_dir, seconds


class Server:
    """`simsearch serve` as a child process on a free port; waits for /readyz."""

    def __init__(self, data_dir: Path, artifact: Path, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or WORK / f"server-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", **(env or {})}
        cmd = [simsearch_exe(), "serve", "--port", str(self.port), "--data", str(data_dir), "--model", str(artifact),
               "--log-level", "warning", *(extra_args or [])]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        self.pid = self.proc.pid
        self.load_seconds = None

    def wait_ready(self, timeout: float = 600.0) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        self.load_seconds = time.perf_counter() - t0
                        return self.load_seconds
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready within {timeout} s; see {self.log_path}")

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return parse_prometheus(r.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def process_tree(pid: int) -> list[int]:
    """A process and its children (a `serve --workers N` supervisor's workers)."""
    try:
        return [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    except OSError:   # the process has just exited
        return [pid]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status)."""
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024 if m else -1


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each thread of a process (/proc/PID/task/TID/stat,
    keyed tid<TID>), plus "total" for the whole process."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        sec = (int(fields[11]) + int(fields[12])) / tick
        out[f"tid{task.name}"] = sec
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    out["total"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def peak_rss_bytes(pid: int) -> int:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024 if m else -1


def parse_prometheus(text: str) -> dict[str, float]:
    """Unlabelled sample values plus *_sum/*_count of histograms (labels dropped, values summed)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def wrk(url: str, path: str, connections: int, seconds: float, files: list[Path] = (), mime: str = "",
        threads: int = 1, timeout_s: int = 10, files_per_request: int = 1, raw: bool = False) -> dict:
    """One wrk run; returns requests/s, latency percentiles (ms) and error counts. `raw`: each file is
    sent as the body itself instead of a multipart part."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s", "-s", str(LUA),
           url, "--", path]
    if files:
        cmd += [mime, *[str(f) for f in files]]
    env = {**os.environ, "WRK_FILES_PER_REQUEST": str(files_per_request), "WRK_RAW": "1" if raw else "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, env=env)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRKJSON "):])
    dur = r["duration_us"] / 1e6
    errors = sum(v for k, v in r.items() if k.startswith("errors_"))
    return {"connections": connections, "seconds": dur, "requests": r["requests"],
            "rps": r["requests"] / dur, "ok_rps": (r["requests"] - r["errors_status"]) / dur,
            "p50_ms": r["latency_p50_us"] / 1e3, "p90_ms": r["latency_p90_us"] / 1e3,
            "p99_ms": r["latency_p99_us"] / 1e3, "max_ms": r["latency_max_us"] / 1e3,
            "mean_ms": r["latency_mean_us"] / 1e3, "errors": errors,
            "errors_detail": {k: v for k, v in r.items() if k.startswith("errors_") and v},
            "command": " ".join(cmd[:8]) + " ..."}


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def server_breakdown(after: dict[str, float], before: dict[str, float]) -> dict:
    """Per-run averages from the service's own histograms: embed batch size, embed/search/decode time."""
    out = {}
    n_batches = delta(after, before, "simsearch_embed_batch_size_count")
    if n_batches:
        out["embed_batches"] = n_batches
        out["mean_embed_batch"] = delta(after, before, "simsearch_embed_batch_size_sum") / n_batches
        out["mean_embed_ms_per_batch"] = 1e3 * delta(after, before, "simsearch_embed_seconds_sum") / n_batches
    n_search = delta(after, before, "simsearch_search_seconds_count")
    if n_search:
        out["mean_search_ms_per_call"] = 1e3 * delta(after, before, "simsearch_search_seconds_sum") / n_search
    n_dec = delta(after, before, "simsearch_decode_seconds_count")
    if n_dec:
        out["mean_decode_ms"] = 1e3 * delta(after, before, "simsearch_decode_seconds_sum") / n_dec
    return out


def py_spy(pid: int, seconds: float, out_path: Path) -> subprocess.Popen | None:
    """Start `py-spy record` on pid for `seconds` (raw collapsed stacks), or None when py-spy is absent."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "--threads",
                             "--format", "raw", "-o", str(out_path), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
