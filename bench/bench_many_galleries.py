"""Many galleries read at once on one `simsearch serve`: how many open files, threads and how much memory the
server holds, whether every read is answered 200 (or runs out of open files), and what listing the galleries
and /metrics cost, with the galleries open and after a restart (none open yet).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_many_galleries.py [--galleries 100] [--clients 16] [--rounds 3]
        [--items 3] [--nofile 1024] [--server-env K=V] [--tag _s54]

The server (the bundled model, an empty data folder, SIMSEARCH_MAX_GALLERIES set to hold them all) gets
--galleries galleries of --items random vectors each, made by POST /index with a JSON body. Then, for
--rounds rounds, --clients threads (each its own keep-alive connection) read every gallery 4 times a round:
GET /index?limit=1, GET /index/ID and POST /search by vector (k=2), 3 x 4 x galleries requests a round.
After each round the server's open files (/proc/PID/fd, by kind: SQLite database, WAL, shared memory,
socket, other), threads and RSS are read, beside the answers by status code (or the client's exception).
Then GET /galleries and GET /metrics are timed (the first call, then the median of 9 more), the server is
stopped, started again on the same folder and both are timed again with no gallery open.

--nofile N sets the server's open-file limit, soft and hard, to N right after it starts (as
`prlimit --pid PID --nofile=N:N` would; the limit the process ends up with is read back from /proc/PID/limits
and written to the JSON). Without it the server keeps the limit it raises itself at start. The reference is
the server with no gallery made (the first row of the table).
"""
from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402


def _open_files(pid: int) -> dict:
    """The process's open files, counted by what they point to."""
    kinds = collections.Counter()
    folder = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(folder):
        try:
            target = os.readlink(folder / fd)
        except OSError:   # closed since the listing
            continue
        kind = ("wal" if target.endswith("-wal") else "shm" if target.endswith("-shm")
                else "sqlite3" if target.endswith(".sqlite3") else "socket" if target.startswith("socket:")
                else "other")
        kinds[kind] += 1
    return {"fds": sum(kinds.values()), **{k: kinds[k] for k in ("sqlite3", "wal", "shm", "socket", "other")}}


def _sample(srv: _server.Server) -> dict:
    status = Path(f"/proc/{srv.pid}/status").read_text()
    threads = int(next(ln for ln in status.splitlines() if ln.startswith("Threads:")).split()[1])
    return {"rss_mib": round(srv.rss_bytes() / 2 ** 20, 1), "threads": threads, **_open_files(srv.pid)}


def _nofile_limit(pid: int) -> str:
    line = next(ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines() if ln.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return f"{soft}:{hard}"


def _timed(http, path: str, calls: int = 10) -> dict:
    """The first call's milliseconds, and the median (and max) of the next calls'."""
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        r = http.get(path)
        ms.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: {r.status_code} {r.text[:300]}")
    return {"first_ms": round(ms[0], 1), "median_ms": round(statistics.median(ms[1:]), 1),
            "max_ms": round(max(ms[1:]), 1)}


def _vectors(dim: int, n: int, seed: int) -> list[list[float]]:
    import numpy as np

    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [[round(float(x), 5) for x in row] for row in v]


def _make(http, names: list[str], items: int) -> tuple[str, float]:
    """The galleries, each with `items` random vectors (ids i0.., label a); the model id and seconds taken."""
    info = http.get("/index", params={"limit": 0}).json()
    model, dim = info["model"], info["dimension"]
    t0 = time.perf_counter()
    for seed, name in enumerate(names):
        body = {"model": model, "items": [{"id": f"i{k}", "vector": v, "label": "a"}
                                          for k, v in enumerate(_vectors(dim, items, seed))]}
        r = http.post("/index", params={"gallery": name}, json=body)
        if r.status_code != 201:
            raise SystemExit(f"POST /index?gallery={name}: {r.status_code} {r.text[:300]}")
    return _vectors(dim, 1, 10 ** 6)[0], time.perf_counter() - t0


def _rounds(args, srv: _server.Server, names: list[str], query: list[float]) -> list[dict]:
    """--rounds rounds of --clients threads reading every gallery 4 times; a row of samples a round."""
    import httpx

    local, made, lock = threading.local(), [], threading.Lock()

    def client() -> httpx.Client:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=srv.url, timeout=60, trust_env=False)
            with lock:
                made.append(local.http)
        return local.http

    def read(k: int) -> list[str]:
        http, gallery = client(), names[k % len(names)]
        calls = (lambda: http.get("/index", params={"gallery": gallery, "limit": 1}),
                 lambda: http.get("/index/i1", params={"gallery": gallery}),
                 lambda: http.post("/search", params={"gallery": gallery, "k": 2}, json={"vector": query}))
        out = []
        for call in calls:
            try:
                out.append(str(call().status_code))
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a finding, not a crash of the bench
                out.append(type(exc).__name__)
        return out

    rows = []
    with ThreadPoolExecutor(args.clients) as pool:
        for rnd in range(args.rounds):
            t0 = time.perf_counter()
            codes = collections.Counter()
            for res in pool.map(read, range(rnd, rnd + 4 * len(names))):
                codes.update(res)
            row = {"round": rnd + 1, "seconds": round(time.perf_counter() - t0, 1), "answers": dict(codes),
                   **_sample(srv)}
            rows.append(row)
            _print_row(row)
            if srv.proc.poll() is not None:
                print(f"the server exited ({srv.proc.returncode})")
                break
    for http in made:
        http.close()
    return rows


def _print_row(row: dict) -> None:
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(row.get("answers", {}).items())) or "-"
    print(f"{str(row['round']):>9} {row.get('seconds', ''):>7} {row['fds']:6d} {row['sqlite3']:5d} {row['wal']:5d} "
          f"{row['shm']:5d} {row['socket']:6d} {row['threads']:7d} {row['rss_mib']:8.1f}  {answers}", flush=True)


def _start(data_dir: Path, artifact: Path, env: dict, nofile: int, log: Path) -> _server.Server:
    srv = _server.Server(data_dir, artifact, env=env, log_path=log)
    try:
        if nofile:
            resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
        srv.wait_ready()
    except BaseException:
        srv.stop()
        raise
    return srv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--galleries", type=int, default=100)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--items", type=int, default=3, help="vectors in each gallery")
    ap.add_argument("--nofile", type=int, default=0, help="the server's open-file limit, soft and hard (0: its own)")
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    import httpx

    artifact, art_kind = _common.chosen_artifact(args.artifact, "bench-many-galleries-")
    env = {"SIMSEARCH_MAX_GALLERIES": str(args.galleries + 1), "NO_PROXY": "127.0.0.1,localhost",
           **dict(kv.split("=", 1) for kv in args.server_env)}
    data_dir = Path(tempfile.mkdtemp(prefix="bench-many-galleries-"))
    names = [f"g{i:05d}" for i in range(args.galleries)]
    result: dict = {"command": _common.command_line(), "machine": _common.machine(), "artifact": art_kind,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "galleries": args.galleries,
                    "items_each": args.items, "clients": args.clients, "rounds": args.rounds, "nofile": args.nofile,
                    "server_env": env}
    print(f"{'round':>9} {'seconds':>7} {'files':>6} {'db':>5} {'wal':>5} {'shm':>5} {'socket':>6} {'threads':>7} "
          f"{'RSS MiB':>8}  answers")
    with _start(data_dir, artifact, env, args.nofile, data_dir / "server.log") as srv, \
            httpx.Client(base_url=srv.url, timeout=120, trust_env=False) as http:
        result["nofile_limit"] = _nofile_limit(srv.pid)
        result["started"] = {"round": "started", **_sample(srv)}
        _print_row(result["started"])
        query, result["make_seconds"] = _make(http, names, args.items)
        result["made"] = {"round": "made", **_sample(srv)}
        _print_row(result["made"])
        result["rounds_read"] = _rounds(args, srv, names, query)
        time.sleep(5)
        result["idle_5s"] = {"round": "idle 5 s", **_sample(srv)}
        _print_row(result["idle_5s"])
        result["galleries_open"] = _timed(http, "/galleries")
        result["metrics_open"] = _timed(http, "/metrics")
    with _start(data_dir, artifact, env, args.nofile, data_dir / "server-restart.log") as srv, \
            httpx.Client(base_url=srv.url, timeout=120, trust_env=False) as http:
        result["galleries_after_restart"] = _timed(http, "/galleries")
        result["metrics_after_restart"] = _timed(http, "/metrics")
        result["after_restart_listed"] = {"round": "restarted", **_sample(srv)}
        _print_row(result["after_restart_listed"])
        result["log_tail"] = srv.log_path.read_text(errors="replace")[-2000:]
    result["server_log_tail"] = (data_dir / "server.log").read_text(errors="replace")[-2000:]
    shutil.rmtree(data_dir, ignore_errors=True)
    print(f"open-file limit {result['nofile_limit']}; {args.galleries} galleries made in "
          f"{result['make_seconds']:.1f} s")
    for key in ("galleries_open", "metrics_open", "galleries_after_restart", "metrics_after_restart"):
        t = result[key]
        print(f"{key:24s} first {t['first_ms']:8.1f} ms, then median {t['median_ms']:8.1f} ms (max {t['max_ms']:.1f})")
    _common.write_result("many_galleries" + args.tag, result)


if __name__ == "__main__":
    main()
