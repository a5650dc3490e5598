"""How soon a write is searchable on a read-only replica, with and without X-Simsearch-After.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_read_your_writes.py [--sizes 10000,100000] [--writes 200]
        [--polled 20] [--tag _NAME]

For each gallery size: a copy of the benchmarks' random gallery (bench/_server.py build_gallery) is
served by a writer (`simsearch serve`) and a read-only replica beside it on the same folder
(`SIMSEARCH_READ_ONLY`, refreshing every `SIMSEARCH_REFRESH_SECONDS`, 5 by default). One client, one
request at a time:

- `with header`: --writes times, a CIFAR-10 (JPEG) test image indexed through the writer, then at once
  searched on the replica with the write's position as X-Simsearch-After (the replica refreshes first).
- `without header`: the same, searched at once without it: how often the write is already visible.
- `plain`: searches on the replica with no write before them (the reference).
- `polled`: --polled writes, each then searched on the replica without the header every 20 ms until
  found: how long a client that cannot send the header waits.

Reported: p50/p99 latency of each kind of request, the share of searches that found the image just
written, and the polled wait. Latencies are client-side, over real HTTP on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _server import Server, build_gallery  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(_pct(ms, 50), 2), "p99_ms": round(_pct(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


def study(size: int, artifact: Path, model_id: str, dim: int, images: list[bytes], writes: int, polled: int,
          env: dict[str, str]) -> dict:
    import httpx

    source, _ = build_gallery(size, model_id, dim)
    folder = Path(tempfile.mkdtemp(prefix="bench-ryw-"))
    data = folder / "data"
    shutil.copytree(source, data)
    writer = replica = None
    try:
        writer = Server(data, artifact, env)
        writer.wait_ready()
        replica = Server(data, artifact, {**env, "SIMSEARCH_READ_ONLY": "true"})
        replica.wait_ready()
        w, r = httpx.Client(base_url=writer.url, timeout=60), httpx.Client(base_url=replica.url, timeout=60)
        times: dict[str, list[float]] = {"write": [], "with header": [], "without header": [], "plain": []}
        found = {"with header": 0, "without header": 0}
        n = 0

        def write() -> tuple[str, bytes, str]:
            nonlocal n
            image, id_ = images[n % len(images)], f"w{n}"
            n += 1
            t0 = time.perf_counter()
            answer = w.post("/index", files={"file": ("q.jpg", image)}, data={"id": id_})
            times["write"].append((time.perf_counter() - t0) * 1000)
            answer.raise_for_status()
            return id_, image, answer.headers["x-simsearch-position"]

        def search(kind: str, image: bytes, headers: dict) -> str | None:
            t0 = time.perf_counter()
            answer = r.post("/search?k=1", files={"file": ("q.jpg", image)}, headers=headers)
            times[kind].append((time.perf_counter() - t0) * 1000)
            answer.raise_for_status()
            hits = answer.json()["results"]
            return hits[0]["id"] if hits else None

        for image in images[:20]:   # warm both processes (first batch sizes, the model's first runs)
            search("plain", image, {})
        times["plain"].clear()
        for i in range(writes):
            for kind in ("with header", "without header"):
                id_, image, position = write()
                headers = {"X-Simsearch-After": position} if kind == "with header" else {}
                found[kind] += search(kind, image, headers) == id_
            search("plain", images[i % len(images)], {})
        waits = []
        for _ in range(polled):
            id_, image, _ = write()
            t0 = time.perf_counter()
            while r.post("/search?k=1", files={"file": ("q.jpg", image)}).json()["results"][0]["id"] != id_:
                time.sleep(0.02)
            waits.append((time.perf_counter() - t0) * 1000)
        metrics = replica.metrics()
        return {"gallery": size, "writes": writes, **{k: _summary(v) for k, v in times.items()},
                "found_just_written": {k: f"{v} of {writes}" for k, v in found.items()},
                "polled_wait_without_header": _summary(waits),
                "replica_follow_errors": metrics.get("simsearch_index_follow_errors_total")}
    finally:
        for server in (replica, writer):
            if server is not None:
                server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--writes", type=int, default=200)
    p.add_argument("--polled", type=int, default=20)
    p.add_argument("--artifact", type=Path)
    p.add_argument("--server-env", action="append", default=["OMP_NUM_THREADS=1"], metavar="K=V")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    import model

    artifact, which = _common.chosen_artifact(args.artifact, "bench-ryw-")
    embedder = model.Embedder.from_file(artifact, device="cpu")
    images = _common.cifar_test_jpegs(max(64, args.writes * 2 + args.polled))
    env = _common.server_env(args.server_env, None)
    started = time.time()
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        run = study(size, artifact, embedder.model_id, embedder.dim, images, args.writes, args.polled, env)
        print(run, flush=True)
        runs.append(run)
    _common.write_result("read_your_writes" + args.tag,
                                {"command": _common.command_line(), "machine": _common.machine(), "artifact": which,
                                 "seconds": round(time.time() - started, 1), "runs": runs})


if __name__ == "__main__":
    main()
