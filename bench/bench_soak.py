"""A long mixed load on one `simsearch serve`: does its memory, its threads or its open files grow, does
any request get a 5xx, and is every acknowledged write still there afterwards, and after a restart?

    .venv/bin/python bench/bench_soak.py [--minutes 25] [--clients 6] [--live 300] [--replica] [--tag _s39]
    .venv/bin/python bench/bench_soak.py --milvus --workers 2 [...]     # needs the milvus extra

The clients (threads, each with its own keep-alive connection) pick requests at random, by weight:
searches of PNGs and photos (with label and metadata filters), /batch/search, /classify, /embed,
neighbours of a stored item, adds of 1-4 CIFAR-10 test JPEGs into three galleries, label edits,
deletions (each client keeps about --live/--clients items of its own, so the galleries stay the same
size and growth is not data), listings, /metrics, and bad requests (bytes that are no image, a
truncated JPEG, k=0, a malformed filter, an unknown gallery, no file) that must get their 4xx.
Client 0 also drops and remakes a fourth gallery every 30 s. The main thread samples the server's
VmRSS, its threads, its open files and the size of its data folder; the growth is fitted over the
second half of the run (after the caches and the allocator have settled). At the end each client
checks its items over HTTP (present with their last label, or 404 once deleted), the server is
stopped with SIGTERM, started again on the same folder and checked once more. The reference is the
server's own size once warm.

Every read of a gallery the client has written to carries the position of its last write there
(`X-Simsearch-After`), so a search by id of its own item must answer 200, and reading one of its items
must give the label it last set (or 404 once deleted). With --replica a read-only `simsearch serve` runs
on the same data folder and the clients send every read to it, every write to the writer: the replica
must follow the writer, the churn gallery included, and give each client its own writes through the
header. Both processes are sampled, and both are checked at the end and after the restart.

With --milvus the galleries live in a Milvus Lite server process started for the run (the service's
--milvus-uri), and --workers N runs N service processes behind one port; their memory, threads and open
files are summed, and the Milvus server's memory is sampled beside them. Each new connection may land on
another worker, so after remaking the churn gallery client 0 reads its new items back on fresh
connections: a worker that has not yet seen the gallery dropped and made again must still find them.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402

GALLERIES = ("default", "a", "b")
CHURN = "churn"
# weights of the request kinds; the rest of the mix is adds and deletes, driven by --live
MIX = {"search_png": 20, "search_photo": 6, "search_filtered": 6, "batch_search": 3, "classify": 3, "embed": 2,
       "search_by_id": 5, "add": 14, "patch": 4, "delete": 10, "list": 3, "item": 3, "metrics": 1,
       "galleries": 1, "bad": 8}
BAD_EXPECTED = {"not_an_image": 415, "truncated_jpeg": 400, "k_zero": 422, "bad_where": 422,
                "unknown_gallery": 404, "no_file": 400}


def _count(pid: int, what: str) -> int:
    """Entries of /proc/PID/<what>: fd, the open files; task, the threads."""
    try:
        return len(os.listdir(f"/proc/{pid}/{what}"))
    except OSError:   # the process has just exited
        return -1


def _disk_mib(folder: Path) -> float:
    """Bytes of the files under a folder (the data folder: databases, WAL, snapshots)."""
    total = 0
    for f in folder.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:   # removed since the listing (a dropped gallery)
            pass
    return total / 2 ** 20


def _process_sample(srv: _server.Server) -> dict:
    """RSS, threads and open files of the server, summed over its workers when it has any."""
    pids = _server.process_tree(srv.pid)
    return {"rss_mib": round(sum(max(0, _server.rss_bytes(p)) for p in pids) / 2 ** 20, 1),
            "threads": sum(_count(p, "task") for p in pids), "fds": sum(_count(p, "fd") for p in pids),
            **({"processes": len(pids)} if len(pids) > 1 else {})}


def _peak_rss_mib(srv: _server.Server) -> float:
    """Peak RSS of the server (with workers: the sum of each process's own peak)."""
    return round(sum(max(0, _server.peak_rss_bytes(p)) for p in _server.process_tree(srv.pid)) / 2 ** 20, 1)


@contextlib.contextmanager
def _milvus(wanted: bool, folder: Path):
    """A Milvus Lite server process for the run, or None: (its process, its URI)."""
    if not wanted:
        yield None, None
        return
    from bench_milvus import milvus_server

    proc, uri = milvus_server(folder)
    try:
        yield proc, uri
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def _replica(wanted: bool, data_dir: Path, artifact: Path, env: dict[str, str]):
    """A read-only `simsearch serve` on the writer's data folder, or None."""
    if not wanted:
        yield None
        return
    with _server.Server(data_dir, artifact, env=env, extra_args=["--read-only"]) as rep:
        yield rep


def _slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) pairs, per hour."""
    if len(samples) < 3:
        return float("nan")
    ts, vs = zip(*samples, strict=True)
    tm, vm = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - tm) ** 2 for t in ts)
    return 3600 * sum((t - tm) * (v - vm) for t, v in samples) / den if den else float("nan")


class Client(threading.Thread):
    """One client: its own connections (one to the writer, one to the replica when there is one), its own
    items (ids c<N>-<n>), its own record of what the writer acknowledged and of where each gallery stood
    after its last write there."""

    def __init__(self, n: int, url: str, stop: threading.Event, jpegs: list[bytes], pngs: list[bytes],
                 photos: list[bytes], live_target: int, seed: int, read_url: str | None = None):
        super().__init__(daemon=True)
        import httpx

        self.n, self.stop, self.jpegs, self.pngs, self.photos = n, stop, jpegs, pngs, photos
        self.http = httpx.Client(base_url=url, timeout=60)
        self.read = httpx.Client(base_url=read_url, timeout=60) if read_url else self.http
        self.positions: dict[str, str] = {}             # gallery -> X-Simsearch-Position of the last write
        self.recently_deleted: collections.deque = collections.deque(maxlen=50)
        self.rng = random.Random(seed)
        self.live_target = live_target
        self.live: dict[str, tuple[str, str]] = {}      # id -> (gallery, label), as acknowledged
        self.deleted: dict[str, str] = {}               # id -> gallery, deletion acknowledged
        self.counter = 0
        self.statuses: collections.Counter = collections.Counter()   # (kind, status)
        self.unexpected: list[str] = []
        self.unexpected_count = 0
        self.unexpected_5xx = 0
        self.expected_503 = 0     # a read of the churn gallery as it goes (503 index_unavailable, Retry-After)
        self.last_churn = time.monotonic()

    def _expect(self, kind: str, r, ok: tuple[int, ...]) -> bool:
        self.statuses[(kind, r.status_code)] += 1
        if r.status_code not in ok:
            self.unexpected_5xx += r.status_code >= 500
            self._unexpected(f"{kind}: {r.status_code} {r.text[:300]}")
            return False
        self.expected_503 += r.status_code == 503
        return True

    def _unexpected(self, what: str) -> None:
        """Count a finding; keep the first 50 of them to print."""
        self.unexpected_count += 1
        if len(self.unexpected) < 50:
            self.unexpected.append(what)

    def _read_ok(self, gallery: str) -> tuple[int, ...]:
        """The answers a read of a gallery may get: once this client has written to it, only 200; before
        that 404 too (not made yet), and for the churn gallery 503 (a read under way as it went)."""
        if gallery in self.positions:
            return (200,)
        return (200, 404, 503) if gallery == CHURN else (200, 404)

    def _after(self, gallery: str) -> dict[str, str]:
        """The header that asks for a state holding this client's writes to the gallery."""
        return {"X-Simsearch-After": self.positions[gallery]} if gallery in self.positions else {}

    def _wrote(self, gallery: str, r) -> None:
        if "X-Simsearch-Position" in r.headers:
            self.positions[gallery] = r.headers["X-Simsearch-Position"]

    def close(self) -> None:
        self.http.close()
        if self.read is not self.http:
            self.read.close()

    def _files(self, pool: list[bytes], count: int, mime: str) -> list:
        return [("file", (f"f{i}", self.rng.choice(pool), mime)) for i in range(count)]

    def run(self) -> None:
        kinds, weights = zip(*MIX.items(), strict=True)
        while not self.stop.is_set():
            kind = self.rng.choices(kinds, weights)[0]
            # keep about live_target items: add when short, delete when over
            if kind == "add" and len(self.live) > 1.2 * self.live_target:
                kind = "delete"
            elif kind == "delete" and len(self.live) < 0.8 * self.live_target:
                kind = "add"
            try:
                getattr(self, "_" + kind)()
                if self.n == 0 and time.monotonic() - self.last_churn > 30:
                    self._churn()
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a finding, not a crash of the bench
                self.statuses[(kind, type(exc).__name__)] += 1
                self._unexpected(f"{kind}: {type(exc).__name__}: {exc}")

    def _gallery(self) -> str:
        return self.rng.choice(GALLERIES)

    def _search_png(self) -> None:
        gallery = self.rng.choice((*GALLERIES, CHURN))   # the churn gallery too
        r = self.read.post("/search", params={"k": 10, "gallery": gallery}, headers=self._after(gallery),
                           files=self._files(self.pngs, 1, "image/png"))
        self._expect("search_png", r, self._read_ok(gallery))

    def _search_photo(self) -> None:
        r = self.read.post("/search", params={"k": 10}, headers=self._after("default"),
                           files=self._files(self.photos, 1, "image/jpeg"))
        self._expect("search_photo", r, self._read_ok("default"))

    def _search_filtered(self) -> None:
        gallery = self._gallery()
        params = {"k": 5, "gallery": gallery}
        if self.rng.random() < 0.5:
            params["label"] = f"l{self.rng.randrange(10)}"
        else:
            params["where"] = json.dumps({"client": {"$in": [0, 1, 2]}, "n": {"$gte": self.rng.randrange(1000)}})
        r = self.read.post("/search", params=params, headers=self._after(gallery),
                           files=self._files(self.jpegs, 1, "image/jpeg"))
        self._expect("search_filtered", r, self._read_ok(gallery))

    def _batch_search(self) -> None:
        r = self.read.post("/batch/search", params={"k": 5}, headers=self._after("default"),
                           files=self._files(self.jpegs, 8, "image/jpeg"))
        self._expect("batch_search", r, self._read_ok("default"))

    def _classify(self) -> None:
        r = self.read.post("/classify", params={"k": 5}, headers=self._after("default"),
                           files=self._files(self.jpegs, 1, "image/jpeg"))
        self._expect("classify", r, self._read_ok("default"))

    def _embed(self) -> None:
        r = self.read.post("/embed", files=self._files(self.jpegs, 2, "image/jpeg"))
        self._expect("embed", r, (200,))

    def _search_by_id(self) -> None:
        if not self.live:
            return
        item_id, (gallery, _) = self.rng.choice(list(self.live.items()))
        r = self.read.post(f"/search/{item_id}", params={"k": 5, "gallery": gallery}, headers=self._after(gallery))
        self._expect("search_by_id", r, (200,))   # its own item, asked for with its last position there

    def _add(self) -> None:
        gallery = self._gallery()
        count = self.rng.randint(1, 4)
        ids = [f"c{self.n}-{self.counter + i}" for i in range(count)]
        self.counter += count
        labels = [f"l{self.rng.randrange(10)}" for _ in ids]
        data = {"id": ids, "label": labels,
                "metadata": [json.dumps({"client": self.n, "n": int(i.rsplit("-", 1)[1])}) for i in ids]}
        r = self.http.post("/index", params={"gallery": gallery}, files=self._files(self.jpegs, count, "image/jpeg"),
                           data=data)
        if self._expect("add", r, (201,)):
            self._wrote(gallery, r)
            for i, lb in zip(r.json()["ids"], labels, strict=True):
                self.live[i] = (gallery, lb)

    def _patch(self) -> None:
        if not self.live:
            return
        item_id, (gallery, _) = self.rng.choice(list(self.live.items()))
        label = f"l{self.rng.randrange(10)}"
        r = self.http.patch(f"/index/{item_id}", params={"gallery": gallery}, json={"label": label})
        if self._expect("patch", r, (200,)):
            self._wrote(gallery, r)
            self.live[item_id] = (gallery, label)

    def _delete(self) -> None:
        if not self.live:
            return
        item_id, (gallery, _) = self.rng.choice(list(self.live.items()))
        r = self.http.delete(f"/index/{item_id}", params={"gallery": gallery})
        if self._expect("delete", r, (204,)):
            self._wrote(gallery, r)
            del self.live[item_id]
            self.deleted[item_id] = gallery
            self.recently_deleted.append(item_id)

    def _list(self) -> None:
        gallery = self.rng.choice((*GALLERIES, CHURN))
        r = self.read.get("/index", params={"gallery": gallery, "limit": 50, "offset": self.rng.randrange(200)},
                          headers=self._after(gallery))
        self._expect("list", r, self._read_ok(gallery))

    def _item(self) -> None:
        """One of its items: the label it last set, its thumbnail, or 404 for one it deleted."""
        if self.recently_deleted and self.rng.random() < 0.2:
            item_id = self.rng.choice(self.recently_deleted)
            gallery = self.deleted[item_id]
            r = self.read.get(f"/index/{item_id}", params={"gallery": gallery}, headers=self._after(gallery))
            self._expect("item_deleted", r, (404,))
            return
        if not self.live:
            return
        item_id, (gallery, label) = self.rng.choice(list(self.live.items()))
        if self.rng.random() < 0.5:
            r = self.read.get(f"/index/{item_id}/thumbnail", params={"gallery": gallery}, headers=self._after(gallery))
            self._expect("thumbnail", r, (200,))
            return
        r = self.read.get(f"/index/{item_id}", params={"gallery": gallery}, headers=self._after(gallery))
        if self._expect("item", r, (200,)) and r.json().get("label") != label:
            self.statuses[("item", "stale_label")] += 1
            self._unexpected(f"item {gallery}/{item_id}: label {r.json().get('label')!r}, set {label!r}")

    def _metrics(self) -> None:
        http = self.read if self.rng.random() < 0.5 else self.http
        self._expect("metrics", http.get("/metrics"), (200,))

    def _galleries(self) -> None:
        http = self.read if self.rng.random() < 0.5 else self.http
        self._expect("galleries", http.get("/galleries"), (200,))

    def _bad(self) -> None:
        case = self.rng.choice(list(BAD_EXPECTED))
        jpeg = self.rng.choice(self.jpegs)
        if case == "not_an_image":
            r = self.http.post("/search", files=[("file", ("x.jpg", os.urandom(500), "image/jpeg"))])
        elif case == "truncated_jpeg":
            r = self.http.post("/search", files=[("file", ("x.jpg", jpeg[: len(jpeg) // 3], "image/jpeg"))])
        elif case == "k_zero":
            r = self.http.post("/search", params={"k": 0}, files=[("file", ("x.jpg", jpeg, "image/jpeg"))])
        elif case == "bad_where":
            r = self.http.post("/search", params={"where": '{"n": {"$gte": '},
                               files=[("file", ("x.jpg", jpeg, "image/jpeg"))])
        elif case == "unknown_gallery":
            r = self.http.post("/search", params={"gallery": f"nope{self.rng.randrange(10**6)}"},
                               files=[("file", ("x.jpg", jpeg, "image/jpeg"))])
        else:
            r = self.http.post("/search", data={"k": "3"})
        self._expect("bad:" + case, r, (BAD_EXPECTED[case],))

    def _churn(self) -> None:
        """Drop the churn gallery (if there) and make it again with a few items."""
        self.last_churn = time.monotonic()
        r = self.http.delete(f"/galleries/{CHURN}")
        self._expect("churn_drop", r, (200, 404))
        r = self.http.post("/index", params={"gallery": CHURN}, files=self._files(self.jpegs, 4, "image/jpeg"))
        if not self._expect("churn_add", r, (201,)):
            return
        import httpx

        # on fresh connections, which another worker may answer: the new gallery's items, never a 404
        for item_id in r.json()["ids"]:
            with httpx.Client(base_url=str(self.read.base_url), timeout=60) as fresh:
                got = fresh.get(f"/index/{item_id}", params={"gallery": CHURN}, headers=self._after(CHURN))
            self._expect("churn_read", got, (200,))

    def check(self, http) -> dict:
        """Every acknowledged item present with its last label; every acknowledged deletion absent (asked
        with the client's last position in each gallery, which a replica must reach first)."""
        wrong = []
        for item_id, (gallery, label) in self.live.items():
            r = http.get(f"/index/{item_id}", params={"gallery": gallery}, headers=self._after(gallery))
            if r.status_code != 200 or r.json().get("label") != label:
                wrong.append(f"{gallery}/{item_id}: {r.status_code} {r.text[:120]} (expected label {label})")
        for item_id, gallery in self.deleted.items():
            r = http.get(f"/index/{item_id}", params={"gallery": gallery}, headers=self._after(gallery))
            if r.status_code != 404:
                wrong.append(f"{gallery}/{item_id}: deleted but {r.status_code}")
        return {"live": len(self.live), "deleted": len(self.deleted), "wrong": wrong[:20], "wrong_count": len(wrong)}


def _check_all(url: str, clients: list[Client]) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        parts = [c.check(http) for c in clients]
    return {"live": sum(p["live"] for p in parts), "deleted": sum(p["deleted"] for p in parts),
            "wrong_count": sum(p["wrong_count"] for p in parts), "wrong": [w for p in parts for w in p["wrong"]][:20]}


def _soak(args, srv: _server.Server, rep: _server.Server | None, milvus, data_dir: Path, pools, result: dict
          ) -> list[Client]:
    """Run the clients for --minutes while sampling the processes into result["samples"]; the clients,
    stopped."""
    stop = threading.Event()
    clients = [Client(i, srv.url, stop, *pools, max(1, args.live // args.clients), seed=i,
                      read_url=rep.url if rep is not None else None)
               for i in range(args.clients)]
    t0 = time.monotonic()
    for c in clients:
        c.start()
    samples = result["samples"] = []
    end = t0 + 60 * args.minutes
    while time.monotonic() < end:
        time.sleep(min(args.sample_seconds, max(0.0, end - time.monotonic())))
        exited = {name: p.returncode for name, p in (("server", srv.proc), ("replica", rep and rep.proc),
                                                     ("milvus", milvus)) if p is not None and p.poll() is not None}
        if exited:
            result["server_exited"] = exited
            break
        s = {"t": round(time.monotonic() - t0, 1), **_process_sample(srv),
             "disk_mib": round(_disk_mib(data_dir), 2),
             "requests": sum(sum(c.statuses.values()) for c in clients)}
        if rep is not None:
            s.update({"replica_" + k: v for k, v in _process_sample(rep).items()})
        if milvus is not None:
            s["milvus_rss_mib"] = round(_server.rss_bytes(milvus.pid) / 2 ** 20, 1)
        samples.append(s)
        print(f"  {s['t']:7.0f} s  rss {s['rss_mib']:7.1f} MiB  threads {s['threads']:3d}  fds {s['fds']:4d}  "
              f"disk {s['disk_mib']:6.1f} MiB  requests {s['requests']}"
              + (f"  replica: rss {s['replica_rss_mib']:7.1f} MiB  threads {s['replica_threads']:3d}  "
                 f"fds {s['replica_fds']:4d}" if rep is not None else "")
              + (f"  milvus: rss {s['milvus_rss_mib']:7.1f} MiB" if milvus is not None else ""), flush=True)
    stop.set()
    for c in clients:
        c.join(120)
        c.close()
    return clients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--live", type=int, default=300, help="items the clients keep in all (adds and deletes balance)")
    ap.add_argument("--sample-seconds", type=float, default=10.0)
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--replica", action="store_true",
                    help="reads go to a read-only simsearch serve on the same data folder, writes to the writer")
    ap.add_argument("--milvus", action="store_true", help="the galleries in a Milvus Lite server started for the run")
    ap.add_argument("--workers", type=int, default=1, help="service processes (more than 1 needs --milvus)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if args.workers > 1 and not args.milvus:
        ap.error("--workers above 1 needs --milvus (serve runs several workers only on a Milvus server)")
    if args.replica and args.milvus:
        ap.error("--replica is for a data folder; with --milvus every worker reads and writes the same galleries")

    machine = _common.machine()
    artifact, art_kind = _common.chosen_artifact(args.artifact, "bench-soak-")
    jpegs = _common.cifar_test_jpegs(200)
    pngs = _common.png_32(32)
    photos = _common.photo_640x480()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    env = dict(kv.split("=", 1) for kv in args.server_env)
    result: dict = {"command": _common.command_line(), "machine": machine, "artifact": art_kind,
                    "minutes": args.minutes, "clients": args.clients, "live_target": args.live, "mix": MIX,
                    "replica": args.replica, "milvus": args.milvus, "workers": args.workers}
    with _milvus(args.milvus, data_dir / "milvus") as (mproc, uri):
        serve_args = ["--milvus-uri", uri, "--workers", str(args.workers)] if args.milvus else []
        with _server.Server(data_dir, artifact, env=env, extra_args=serve_args) as srv, \
                _replica(args.replica, data_dir, artifact, env) as rep:
            srv.wait_ready()
            if rep is not None:
                rep.wait_ready()
            clients = _soak(args, srv, rep, mproc, data_dir, (jpegs, pngs, photos), result)
            result["peak_rss_mib"] = _peak_rss_mib(srv)
            result["check_before_restart"] = _check_all(srv.url, clients)
            result["log_tail"] = srv.log_path.read_text(errors="replace")[-3000:]
            if rep is not None:
                result["replica_peak_rss_mib"] = _peak_rss_mib(rep)
                result["replica_check_before_restart"] = _check_all(rep.url, clients)
                result["replica_log_tail"] = rep.log_path.read_text(errors="replace")[-3000:]
        with _server.Server(data_dir, artifact, env=env, extra_args=serve_args) as srv, \
                _replica(args.replica, data_dir, artifact, env) as rep:
            srv.wait_ready()
            result["check_after_restart"] = _check_all(srv.url, clients)
            if rep is not None:
                rep.wait_ready()
                result["replica_check_after_restart"] = _check_all(rep.url, clients)
    samples = result["samples"]

    statuses: collections.Counter = collections.Counter()
    for c in clients:
        statuses.update(c.statuses)
    by_kind: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (kind, status), n in sorted(statuses.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        by_kind[kind][str(status)] = n
    second_half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2] if samples else []
    result.update({
        "requests": sum(statuses.values()),
        "requests_per_second": round(sum(statuses.values()) / max(samples[-1]["t"], 1e-9), 1) if samples else 0,
        "server_5xx": sum(c.unexpected_5xx for c in clients),
        "expected_503": sum(c.expected_503 for c in clients),
        "unexpected": [u for c in clients for u in c.unexpected][:50],
        "unexpected_count": sum(c.unexpected_count for c in clients),
        "statuses": by_kind,
        "samples": samples,
        "warm_rss_mib": second_half[0]["rss_mib"] if second_half else None,
        "final_rss_mib": samples[-1]["rss_mib"] if samples else None,
        "rss_growth_mib_per_hour_second_half": round(_slope_per_hour([(s["t"], s["rss_mib"]) for s in second_half]), 2),
        **{f"{key}_min_max": [min(s[key] for s in samples), max(s[key] for s in samples)] if samples else None
           for key in ("threads", "fds", "disk_mib")},
    })
    if args.replica:
        result.update({
            "replica_warm_rss_mib": second_half[0]["replica_rss_mib"] if second_half else None,
            "replica_final_rss_mib": samples[-1]["replica_rss_mib"] if samples else None,
            "replica_rss_growth_mib_per_hour_second_half": round(
                _slope_per_hour([(s["t"], s["replica_rss_mib"]) for s in second_half]), 2),
            **{f"replica_{key}_min_max": [min(s["replica_" + key] for s in samples),
                                          max(s["replica_" + key] for s in samples)] if samples else None
               for key in ("threads", "fds")},
        })
    print(f"{result['requests']} requests ({result['requests_per_second']}/s), 5xx: {result['server_5xx']}, "
          f"unexpected: {result['unexpected_count']}")
    print(f"RSS warm {result['warm_rss_mib']} MiB -> final {result['final_rss_mib']} MiB, second-half growth "
          f"{result['rss_growth_mib_per_hour_second_half']} MiB/h; threads "
          f"{result['threads_min_max']}, fds {result['fds_min_max']}, data folder {result['disk_mib_min_max']} MiB")
    if args.replica:
        print(f"replica: RSS warm {result['replica_warm_rss_mib']} MiB -> final {result['replica_final_rss_mib']} "
              f"MiB, second-half growth {result['replica_rss_growth_mib_per_hour_second_half']} MiB/h; threads "
              f"{result['replica_threads_min_max']}, fds {result['replica_fds_min_max']}")
    for when in ("check_before_restart", "check_after_restart") + (
            ("replica_check_before_restart", "replica_check_after_restart") if args.replica else ()):
        c = result[when]
        print(f"{when}: {c['live']} live, {c['deleted']} deleted, {c['wrong_count']} wrong {c['wrong'][:3]}")
    for u in result["unexpected"][:10]:
        print("  unexpected:", u)
    _common.write_result("soak" + args.tag, result)


if __name__ == "__main__":
    main()
