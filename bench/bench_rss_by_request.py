"""Which kind of request grows a `simsearch serve`'s resident memory: rounds of one kind at a time, one
client, one server, RSS read before and after each phase. It narrows what `bench_soak.py` finds.

    .venv/bin/python bench/bench_rss_by_request.py [--phases churn,adddel,adddel,patch,search] [--rounds 4000]
        [--server-env SIMSEARCH_THUMBNAIL_SIZE=0] [--tag _s40]

Phases (a phase may come twice, to see whether its growth continues or levels off):
- churn: drop the gallery "churn" and make it again with 4 CIFAR-10 JPEGs;
- adddel: add 2 JPEGs to the default gallery, then delete both (the gallery keeps its size);
- patch: change one item's label;
- search: search the default gallery with one JPEG.
The server is warmed first with 50 adds of 2 images. The reference is the server's own RSS once warm.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402

PHASES = ("churn", "adddel", "patch", "search")


class _Rounds:
    def __init__(self, http, jpegs: list[bytes], seed: int = 0):
        self.http, self.jpegs, self.rng, self.counter = http, jpegs, random.Random(seed), 0

    def files(self, n: int) -> list:
        return [("file", (f"f{i}.jpg", self.rng.choice(self.jpegs), "image/jpeg")) for i in range(n)]

    def expect(self, r, status: int) -> None:
        if r.status_code != status:
            raise SystemExit(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")

    def churn(self, i: int) -> None:
        self.http.delete("/galleries/churn")   # 404 the first time
        self.expect(self.http.post("/index", params={"gallery": "churn"}, files=self.files(4)), 201)

    def adddel(self, i: int) -> None:
        ids = [f"a{self.counter}", f"a{self.counter + 1}"]
        self.counter += 2
        self.expect(self.http.post("/index", files=self.files(2), data={"id": ids}), 201)
        for item_id in ids:
            self.expect(self.http.delete(f"/index/{item_id}"), 204)

    def patch(self, i: int) -> None:
        self.expect(self.http.patch("/index/w0a", json={"label": f"l{i % 10}"}), 200)

    def search(self, i: int) -> None:
        self.expect(self.http.post("/search", files=self.files(1)), 200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="churn,adddel,adddel,patch,search")
    ap.add_argument("--rounds", type=int, default=4000)
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    phases = args.phases.split(",")
    if unknown := [p for p in phases if p not in PHASES]:
        ap.error(f"--phases: {unknown} are none of {PHASES}")
    import httpx

    artifact, art_kind = _common.chosen_artifact(None, "bench-rss-")
    env = dict(kv.split("=", 1) for kv in args.server_env)
    result: dict = {"command": _common.command_line(), "machine": _common.machine(), "artifact": art_kind,
                    "rounds": args.rounds, "server_env": env, "phases": []}
    with _server.Server(Path(tempfile.mkdtemp(prefix="bench-rss-")), artifact, env=env) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        srv.wait_ready()
        rounds = _Rounds(http, _common.cifar_test_jpegs(200))

        def mib() -> float:
            return round(srv.rss_bytes() / 2 ** 20, 1)

        for i in range(50):
            rounds.expect(http.post("/index", files=rounds.files(2), data={"id": [f"w{i}a", f"w{i}b"]}), 201)
        result["warm_rss_mib"] = mib()
        print(f"warm: {result['warm_rss_mib']} MiB", flush=True)
        for phase in phases:
            before, t0 = mib(), time.perf_counter()
            trace = []
            for i in range(args.rounds):
                getattr(rounds, phase)(i)
                if (i + 1) % max(1, args.rounds // 5) == 0:
                    trace.append(mib())
            row = {"phase": phase, "seconds": round(time.perf_counter() - t0, 1), "rss_before_mib": before,
                   "rss_after_mib": mib(), "trace_mib": trace}
            row["growth_bytes_per_round"] = round((row["rss_after_mib"] - before) * 2 ** 20 / args.rounds)
            result["phases"].append(row)
            print(f"{phase:7s} {args.rounds} rounds in {row['seconds']:.0f} s: {before} -> {row['rss_after_mib']} MiB "
                  f"({row['growth_bytes_per_round']} bytes a round; {trace})", flush=True)
    _common.write_result("rss_by_request" + args.tag, result)


if __name__ == "__main__":
    main()
