"""Galleries in Milvus (SIMSEARCH_MILVUS_URI) over real HTTP: two `simsearch serve` processes, each with a
data folder of its own, share one Milvus server (Milvus Lite's own server process, real gRPC): what one
stores the other finds at once, either may write, a gallery one makes or drops the other sees, and when
Milvus is down both keep serving /healthz, answer 503 and recover once it is back."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("pymilvus")

import index  # noqa: E402

from cli import main as cli_main  # noqa: E402

from ..index.test_milvus import _milvus_server  # noqa: E402
from .conftest import free_port, start_server, stop_server  # noqa: E402
from .test_api import assert_error, png, upload  # noqa: E402

KEY = {"X-API-Key": "mv-key"}


@pytest.fixture
def two_services(hybrid1_artifact, tmp_path):
    port = free_port()
    milvus = _milvus_server(tmp_path / "milvus", port)
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_MILVUS_URI": f"http://127.0.0.1:{port}",
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": "mv-key", "SIMSEARCH_REFRESH_SECONDS": "0.3"}
    services = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            services.append(start_server({**env, "SIMSEARCH_DATA_DIR": str(tmp_path / name / "data")},
                                         tmp_path / name, log_name=f"{name}.log"))
        yield services, (milvus, tmp_path / "milvus", port)
    finally:
        for s in services:
            stop_server(s)
        if milvus.poll() is None:
            os.killpg(milvus.pid, signal.SIGKILL)
            milvus.wait()
    for s in services:
        assert "Traceback" not in s.log.read_text(errors="replace"), s.log_tail()


def test_two_services_on_one_milvus_see_each_others_writes_at_once(two_services):
    (a, b), (_, folder, port) = two_services
    milvus_uri = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=60) as c:
        r = c.post(a.url + "/index", files=[upload(png(i)) for i in range(4)],
                   data={"id": [f"p{i}" for i in range(4)], "label": ["x", "x", "y", "y"],
                         "metadata": ['{"n": 0}', '{"n": 1}', '{"n": 2}', '{"n": 3}']}, headers=KEY)
        assert r.status_code == 201, r.text
        hits = c.post(b.url + "/search?k=2", files=[upload(png(2))]).json()["results"]   # no refresh, no wait
        assert hits[0]["id"] == "p2" and hits[0]["score"] > 0.999 and hits[0]["label"] == "y"
        listing = c.get(b.url + "/index").json()
        assert listing["count"] == 4 and [it["id"] for it in listing["items"]] == ["p0", "p1", "p2", "p3"]
        assert c.get(b.url + "/index/p1/thumbnail").headers["content-type"] == "image/jpeg"
        r = c.post(b.url + "/index?skip_duplicates=0.98", files=[upload(png(2))], data={"id": "copy"}, headers=KEY)
        assert r.status_code == 201 and r.json()["count"] == 0, r.text   # a's p2, found by b's check
        assert r.json()["skipped"][0]["duplicate_of"] == "p2"
        # a search refined by marks (like=/unlike=) reads the marked items' vectors from Milvus
        def vector(i):
            return np.array(c.get(b.url + f"/index/{i}?vector=true").json()["vector"], np.float32)[None]
        query = np.array(c.post(b.url + "/embed", files=[upload(png(2))]).json()["vectors"][0])
        refined = c.post(b.url + "/search?k=2&like=p1&unlike=p0", files=[upload(png(2))])
        assert refined.status_code == 200, refined.text
        want = index.refine_query(query, vector("p1"), vector("p0"))
        plain = c.post(a.url + "/search?k=4", json={"vector": want.tolist()}).json()["results"]
        assert [h["id"] for h in refined.json()["results"]] == [h["id"] for h in plain if h["id"] not in ("p0", "p1")]
        # groups over Milvus: the nearest item of each label, the labels nearest first
        grouped = c.post(b.url + "/search?k=5&group_by=label", files=[upload(png(2))])
        assert grouped.status_code == 200, grouped.text
        nearest = c.post(b.url + "/search?k=4", files=[upload(png(2))]).json()["results"]
        want: list[tuple[str, str]] = []
        for h in nearest:
            if h["label"] not in [label for label, _ in want]:
                want.append((h["label"], h["id"]))
        assert [(g["value"], g["results"][0]["id"]) for g in grouped.json()["groups"]] == want and len(want) == 2
        # the look-alike pairs over HTTP read Milvus too, the same pairs `simsearch index duplicates` finds there
        dup = c.get(b.url + "/duplicates", params={"min_score": 0.1, "k": 3}, headers=KEY)
        assert dup.status_code == 200, dup.text
        assert dup.json()["items"] == 4 and dup.json()["pairs_found"] > 0
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert cli_main(["index", "duplicates", "--milvus-uri", milvus_uri, "--min-score", "0.1", "-k", "3",
                             "--json"]) == 0
        assert [(p["a"], p["b"]) for p in json.loads(out.getvalue())["pairs"]] == \
            [(p["a"], p["b"]) for p in dup.json()["pairs"]]
        # metadata from a file onto the items in Milvus (`index edit`), seen by the services and by `index facets`
        (folder.parent / "later.jsonl").write_text(
            '{"id": "p1", "album": "trip"}\n{"id": "p2", "album": "trip"}\n{"id": "p0", "n": null}\n')
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert cli_main(["index", "edit", "--metadata", str(folder.parent / "later.jsonl"), "--milvus-uri", milvus_uri]) == 0
        assert "updated the metadata of 3 items" in out.getvalue()
        assert c.get(a.url + "/index/p2").json()["metadata"] == {"n": 2, "album": "trip"}
        assert c.get(a.url + "/index/p0").json()["metadata"] == {}
        facets = c.get(b.url + "/facets", params={"field": "metadata.album"}).json()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert cli_main(["index", "facets", "metadata.album", "--milvus-uri", milvus_uri, "--json"]) == 0
        assert json.loads(out.getvalue())["values"] == facets["values"] == [{"value": "trip", "count": 2}]
        # either one writes: b edits and deletes, a sees it
        assert c.patch(b.url + "/index/p0", json={"label": "z"}, headers=KEY).status_code == 200
        assert c.delete(b.url + "/index/p3", headers=KEY).status_code == 204
        assert c.get(a.url + "/index/p0").json()["label"] == "z"
        assert_error(c.get(a.url + "/index/p3"), 404, "not_found")
        filtered = c.post(a.url + "/search?k=5", files=[upload(png(1))], params={"where": '{"n": {"$gte": 1}}'})
        assert sorted(h["id"] for h in filtered.json()["results"]) == ["p1", "p2"]
        r = c.delete(a.url + "/index", params={"label": "y"}, headers=KEY)
        assert r.json()["deleted"] == 1 and c.get(b.url + "/index").json()["count"] == 2


def test_a_gallery_made_by_one_service_is_served_by_the_other_until_one_drops_it(two_services):
    (a, b), _ = two_services
    with httpx.Client(timeout=60) as c:
        r = c.post(a.url + "/index?gallery=shoes", files=[upload(png(7))], data={"id": "boot"}, headers=KEY)
        assert r.status_code == 201, r.text
        assert c.post(b.url + "/search?k=1&gallery=shoes", files=[upload(png(7))]).json()["results"][0]["id"] == "boot"
        listed = {g["name"]: g["count"] for g in c.get(a.url + "/galleries").json()["galleries"]}
        assert listed == {"default": 0, "shoes": 1}
        assert c.delete(a.url + "/galleries/shoes", headers=KEY).json()["deleted"] == 1
        # b forgets it at its next check (SIMSEARCH_REFRESH_SECONDS 0.3): a 503 meanwhile, then 404
        deadline = time.monotonic() + 10
        while True:
            r = c.post(b.url + "/search?k=1&gallery=shoes", files=[upload(png(7))])
            if r.status_code == 404 or time.monotonic() > deadline:
                break
            assert r.status_code == 503 and r.json()["error"]["code"] == "index_unavailable", r.text
            time.sleep(0.2)
        assert_error(r, 404, "gallery_not_found")
        assert [g["name"] for g in c.get(b.url + "/galleries").json()["galleries"]] == ["default"]


def test_with_milvus_down_the_services_answer_503_keep_serving_and_recover(two_services):
    (a, b), (milvus, data, port) = two_services
    with httpx.Client(timeout=60) as c:
        assert c.post(a.url + "/index", files=[upload(png(1))], data={"id": "kept"}, headers=KEY).status_code == 201
        os.killpg(milvus.pid, signal.SIGKILL)
        milvus.wait()
        assert_error(c.post(b.url + "/search?k=1", files=[upload(png(1))]), 503, "index_unavailable")
        r = c.post(a.url + "/index", files=[upload(png(2))], data={"id": "lost"}, headers=KEY)
        assert_error(r, 503, "index_unavailable")
        assert_error(c.get(a.url + "/index"), 503, "index_unavailable")
        assert c.get(a.url + "/healthz").status_code == 200 and c.get(b.url + "/healthz").status_code == 200
        restarted = _milvus_server(data, port)
        try:
            deadline = time.monotonic() + 30   # gRPC waits out its reconnect backoff (about a second here)
            while (r := c.post(b.url + "/search?k=1", files=[upload(png(1))])).status_code == 503 and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            assert r.status_code == 200, r.text
            hits = r.json()["results"]
            assert hits[0]["id"] == "kept"   # what was acknowledged before Milvus died; nothing of the refused write
            while (r := c.get(a.url + "/index")).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert r.json()["count"] == 1
        finally:
            os.killpg(restarted.pid, signal.SIGKILL)
            restarted.wait()


def test_milvus_settings_refuse_an_index_kind_milvus_does_not_build(monkeypatch):
    from pydantic import ValidationError

    from app import Settings

    with pytest.raises(ValidationError, match="index kinds are flat, hnsw, ivf"):
        Settings(milvus_uri="galleries.db", index="ivfpq")
    with pytest.raises(ValidationError, match="SIMSEARCH_THUMBNAIL_SIZE 512: with SIMSEARCH_MILVUS_URI it is at most 384"):
        Settings(milvus_uri="galleries.db", thumbnail_size=512)
    assert Settings(thumbnail_size=512).thumbnail_size == 512 and Settings(milvus_uri="g.db", thumbnail_size=384)
    s = Settings(milvus_uri=" ", milvus_token="", index="hnsw")
    assert s.milvus_uri is None and s.milvus_token_value() is None
    assert Settings(milvus_uri="http://m:19530", milvus_token="u:p").milvus_token_value() == "u:p"


def _sample(metrics_text: str, name: str, labels: dict | None = None) -> list[float]:
    """The values of the samples `name` with exactly these labels, from Prometheus's text format."""
    from prometheus_client.parser import text_string_to_metric_families

    return [s.value for f in text_string_to_metric_families(metrics_text) for s in f.samples
            if s.name == name and s.labels == (labels or {})]


def _requests(metrics_text: str, route: str) -> float:
    """simsearch_requests_total for POST `route` with status 200."""
    return sum(_sample(metrics_text, "simsearch_requests_total", {"method": "POST", "route": route, "status": "200"}))


def _each_workers_searches(folder, status: str | None = None) -> dict[str, float]:
    """{pid: POST /search answered (with `status`, when given)} read from each worker's own counter file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for f in folder.glob("counter_*.db"):
        counts[f.stem.split("_")[1]] = sum(
            s.value for m in MultiProcessCollector.merge([str(f)]) for s in m.samples
            if s.name == "simsearch_requests_total" and s.labels.get("route") == "/search"
            and s.labels.get("status") == (status or s.labels.get("status")))
    return counts


@contextlib.contextmanager
def _two_workers(hybrid1_artifact, tmp_path, rate_limit: int):
    """A Milvus Lite server, and `serve --workers 2` on it (its temporary folders in tmp_path/tmp); after
    both are stopped, the workers' temporary folder is gone and their log has no Traceback."""
    port = free_port()
    milvus = _milvus_server(tmp_path / "milvus", port)
    (tmp_path / "tmp").mkdir()
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_MILVUS_URI": f"http://127.0.0.1:{port}",
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": str(rate_limit), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "TMPDIR": str(tmp_path / "tmp")}
    live = None
    try:
        live = start_server(env, tmp_path, args=["--workers", "2", "--log-level", "info"])
        yield live
    finally:
        if live is not None:
            stop_server(live)
        os.killpg(milvus.pid, signal.SIGKILL)
        milvus.wait()
    assert not list((tmp_path / "tmp").glob("simsearch-metrics-*"))
    assert "Traceback" not in live.log.read_text(errors="replace"), live.log_tail()


def _wait_ready(live, n: int) -> None:
    """Until the log says `n` workers are ready (a minute at most)."""
    deadline = time.monotonic() + 60
    while live.log.read_text(errors="replace").count("ready in") < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live.log.read_text(errors="replace").count("ready in") == n, live.log_tail()


def test_serve_with_two_worker_processes_answers_every_request_and_its_metrics_count_both_workers(hybrid1_artifact, tmp_path):
    """`serve --workers 2` on a Milvus server: both workers start and answer; every scrape of /metrics,
    whichever worker answers it, counts the searches of both (each worker's own file holds its share),
    counts 2 workers still after one is killed and replaced, and the metrics folder goes at exit."""
    from concurrent.futures import ThreadPoolExecutor

    def search(i: int) -> None:
        with httpx.Client(timeout=60) as fresh:   # a new connection: the kernel spreads them over both workers
            r = fresh.post(live.url + "/search?k=1", files=[upload(png(i % 3))])
        assert r.status_code == 200 and r.json()["results"][0]["id"] == f"w{i % 3}", r.text

    def scrape() -> str:
        with httpx.Client(timeout=60) as fresh:
            r = fresh.get(live.url + "/metrics")
        assert r.status_code == 200, r.text
        return r.text

    with _two_workers(hybrid1_artifact, tmp_path, rate_limit=0) as live:
        _wait_ready(live, 2)
        [folder] = (tmp_path / "tmp").glob("simsearch-metrics-*")
        with httpx.Client(timeout=60) as c:
            r = c.post(live.url + "/index", files=[upload(png(i)) for i in range(3)], data={"id": ["w0", "w1", "w2"]})
            assert r.status_code == 201, r.text
        sent, shares = 0, {}
        with ThreadPoolExecutor(4) as pool:
            # until both workers have answered some: which one accepts a connection is the kernel's choice, and
            # on some machines one wins a round of 40 whole now and then
            while sent < 200 and len([n for n in shares.values() if n > 0]) < 2:
                list(pool.map(search, range(sent, sent + 40)))
                sent += 40
                shares = _each_workers_searches(folder)
        assert all(n > 0 for n in shares.values()) and sum(shares.values()) == sent and len(shares) == 2, shares
        for _ in range(6):   # each scrape may reach either worker
            text = scrape()
            assert _requests(text, "/search") == sent and _requests(text, "/index") == 0, text
            assert _sample(text, "simsearch_worker_processes") == [2.0]
            assert _sample(text, "simsearch_ready") == [1.0]
            assert _sample(text, "simsearch_gallery_items", {"gallery": "default"}) == [3.0]
            assert 'pid="' not in text and len(_sample(text, "simsearch_data_disk_free_bytes")) == 1
        assert sum(_sample(scrape(), "simsearch_requests_total", {"method": "POST", "route": "/index",
                                                                  "status": "201"})) == 1

        os.kill(int(next(iter(shares))), signal.SIGKILL)   # uvicorn starts another in its place
        _wait_ready(live, 3)
        for _ in range(4):
            text = scrape()
            assert _sample(text, "simsearch_worker_processes") == [2.0] and _sample(text, "simsearch_ready") == [1.0]
            assert _requests(text, "/search") == sent   # a dead worker's counts stay: a total never goes back
        search(1)
        assert _requests(scrape(), "/search") == sent + 1


def test_two_worker_processes_share_one_rate_limit(hybrid1_artifact, tmp_path):
    """`serve --workers 2` with a limit of 20 a minute: searches from one client, on fresh connections that
    both workers answer, get 20 in all (plus what refills meanwhile), not 20 from each worker."""
    from concurrent.futures import ThreadPoolExecutor

    def search(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as fresh:   # a new connection: the kernel spreads them over both workers
            return fresh.post(live.url + "/search?k=1", json={"vector": [1.0] * 256})

    with _two_workers(hybrid1_artifact, tmp_path, rate_limit=20) as live:
        _wait_ready(live, 2)
        [folder] = (tmp_path / "tmp").glob("simsearch-metrics-*")
        assert (folder / "rate-limits.sqlite").is_file()
        start, answers = time.monotonic(), []
        with ThreadPoolExecutor(4) as pool:
            # until both workers have refused some: which one accepts a connection is the kernel's choice, and on
            # some machines one wins a round's refusals whole now and then
            while len(answers) < 200 and (not answers or len(_each_workers_searches(folder, "429")) < 2):
                answers += pool.map(search, range(40))
        refilled = (time.monotonic() - start) * 20 / 60
        ok = [r for r in answers if r.status_code == 200]
        limited = [r for r in answers if r.status_code == 429]
        assert len(ok) + len(limited) == len(answers), [r.text for r in answers]
        assert 20 <= len(ok) <= 20 + refilled + 1, (len(ok), refilled)
        assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
        # both workers answered, and both refused
        assert all(n > 0 for n in _each_workers_searches(folder, "200").values())
        refused = _each_workers_searches(folder, "429")
        assert len(refused) == 2 and all(n > 0 for n in refused.values()), refused


def test_two_worker_processes_store_a_new_picture_sent_to_both_at_once_only_once(hybrid1_artifact, cifar, tmp_path):
    """`skip_duplicates` across `serve --workers 2`: the same new picture sent 8 times at once, on fresh
    connections that both workers answer, is stored once (each of 16 rounds in a gallery of its own); the
    other 7 are skipped as its duplicates. Without the workers' lock, 2 runs in 3 had a round store it twice."""
    from concurrent.futures import ThreadPoolExecutor

    with _two_workers(hybrid1_artifact, tmp_path, rate_limit=0) as live:
        _wait_ready(live, 2)
        [folder] = (tmp_path / "tmp").glob("simsearch-metrics-*")
        pictures = cifar["airplane"] + cifar["automobile"]
        for round_ in range(16):
            gallery = f"dup{round_}"
            with httpx.Client(timeout=60) as c:   # made first and emptied: the round races on the picture alone
                r = c.post(f"{live.url}/index?gallery={gallery}", files=[upload(png(round_))], data={"id": "seed"})
                assert r.status_code == 201, r.text
                assert c.delete(f"{live.url}/index/seed?gallery={gallery}").status_code == 204
            together = threading.Barrier(8)

            def send(i: int) -> dict:
                with httpx.Client(timeout=60) as fresh:
                    fresh.get(f"{live.url}/healthz")   # connected (to one worker or the other) before the race
                    together.wait()
                    r = fresh.post(f"{live.url}/index?skip_duplicates=0.98&gallery={gallery}",
                                   files=[upload(pictures[round_], "a.jpg", "image/jpeg")],
                                   data={"id": f"copy{i}"})
                assert r.status_code == 201, r.text
                return r.json()

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(send, range(8)))
            stored = [a["ids"] for a in answers if a["count"]]
            assert len(stored) == 1, (round_, answers)
            [[kept]] = stored
            skipped = [a["skipped"][0] for a in answers if not a["count"]]
            assert len(skipped) == 7 and {d["duplicate_of"] for d in skipped} == {kept}, answers
            with httpx.Client(timeout=60) as c:
                assert c.get(f"{live.url}/index?gallery={gallery}").json()["count"] == 1
        assert (folder / "skip-duplicates.lock").exists()


def test_the_largest_thumbnail_the_settings_allow_fits_a_milvus_store(tmp_path):
    """Noise is JPEG's worst case: its thumbnail at the largest size allowed with Milvus is stored; one
    size up it would be refused, which is why the settings stop at that size."""
    import numpy as np
    from PIL import Image

    import index
    from model import make_thumbnail
    from app._settings import MILVUS_MAX_THUMBNAIL_SIZE

    noise = Image.fromarray((np.random.default_rng(0).random((1200, 1600, 3)) * 255).astype("uint8"))
    store = index.MilvusStore.open(index.MilvusConfig(str(tmp_path / "m.db"), dim=4, model_id="m@1"))
    try:
        thumb = make_thumbnail(noise, MILVUS_MAX_THUMBNAIL_SIZE)
        store.upsert([index.Item("noise", np.ones(4, np.float32), thumbnail=thumb)])
        assert store.thumbnail("noise") == thumb
        with pytest.raises(index.InvalidItemError, match="thumbnail is"):
            store.upsert([index.Item("big", np.ones(4, np.float32), thumbnail=make_thumbnail(noise, 512))])
    finally:
        store.close()
