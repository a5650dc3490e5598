"""simsearch_gallery_items counts every gallery, the ones this process has not opened too (read without opening
them, in a thread of their own, at most once a minute), so that a dashboard's sum over galleries does not undercount
after a restart; a scrape never waits on that read; and where the service reads no such sizes, the metric's HELP
says that the galleries not open are left out."""
from __future__ import annotations

import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from app._metrics import Metrics


def _items(m: Metrics) -> tuple[dict[str, float], str]:
    """({gallery: items}, HELP) of simsearch_gallery_items in one scrape."""
    family = next(f for f in text_string_to_metric_families(m.exposition().decode())
                  if f.name == "simsearch_gallery_items")
    return {s.labels["gallery"]: s.value for s in family.samples}, family.documentation


def _soon(check) -> bool:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_galleries_not_open_are_counted_beside_the_open_ones_whose_count_is_the_live_one():
    m = Metrics()
    open_now = {"default": 3}
    m.track_galleries(lambda: dict(open_now), lambda: {"shoes": 5, "hats": 0})
    assert _soon(lambda: _items(m)[0] == {"default": 3.0, "shoes": 5.0, "hats": 0.0})
    assert "not opened" in _items(m)[1] and "left out" not in _items(m)[1]
    open_now["shoes"] = 6   # opened since (and written to): its live count, not the one read before
    assert _items(m)[0] == {"default": 3.0, "shoes": 6.0, "hats": 0.0}
    open_now.pop("shoes")   # deleted while open: not brought back by the size read before it was opened
    assert _items(m)[0] == {"default": 3.0, "hats": 0.0}
    m.close()


def test_a_scrape_never_waits_on_the_read_of_the_galleries_not_open_and_reads_them_at_most_once_a_minute():
    m = Metrics()
    release, reads = threading.Event(), []

    def slow_read() -> dict[str, int]:   # a Milvus that answers slowly
        reads.append(time.monotonic())
        release.wait(10)
        return {"shoes": 5}

    m.track_galleries(lambda: {"default": 1}, slow_read)
    t0 = time.monotonic()
    assert _items(m)[0] == {"default": 1.0} and time.monotonic() - t0 < 1.0
    release.set()
    assert _soon(lambda: _items(m)[0] == {"default": 1.0, "shoes": 5.0})
    for _ in range(5):
        _items(m)
    assert len(reads) == 1   # started when tracking began; the next one a minute later
    m.close()


def test_a_failed_read_keeps_the_sizes_read_before():
    m = Metrics()
    answers = [{"shoes": 5}]

    def read() -> dict[str, int]:
        if not answers:
            raise OSError("the data folder is unmounted")
        return answers.pop()

    m.track_galleries(lambda: {"default": 1}, read)
    assert _soon(lambda: _items(m)[0] == {"default": 1.0, "shoes": 5.0})
    m._state[0]._unopened._read_at -= 120   # a minute and more later
    _items(m)
    assert _soon(lambda: not m._state[0]._unopened._reading.locked())
    assert _items(m)[0] == {"default": 1.0, "shoes": 5.0}
    m.close()


def test_without_a_reader_of_the_galleries_not_open_the_help_says_they_are_left_out():
    m = Metrics()
    m.track_galleries(lambda: {"default": 2})
    sizes, help_text = _items(m)
    assert sizes == {"default": 2.0} and "left out" in help_text
    m.close()


def test_a_restarted_service_counts_the_items_of_galleries_no_request_has_opened_yet(hybrid1_artifact, tmp_path):
    """Over a real `simsearch serve`: items written to a named gallery, the service restarted; before any request
    on that gallery, /metrics has its items (a sum over galleries is the whole), and /galleries agrees."""
    import httpx

    from .conftest import start_server, stop_server

    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    live = start_server(env, tmp_path)
    try:
        listing = httpx.get(live.url + "/index").json()
        items = [{"id": f"v{i}", "vector": [float(i == j) for j in range(listing["dimension"])]} for i in range(3)]
        r = httpx.post(live.url + "/index", params={"gallery": "shoes"},
                       json={"model": listing["model"], "items": items})
        assert r.status_code == 201, r.text
    finally:
        stop_server(live)
    live = start_server(env, tmp_path, log_name="restarted.log")
    try:
        def scraped() -> dict[str, float]:
            family = next(f for f in text_string_to_metric_families(httpx.get(live.url + "/metrics").text)
                          if f.name == "simsearch_gallery_items")
            return {s.labels["gallery"]: s.value for s in family.samples}

        assert _soon(lambda: scraped() == {"default": 0.0, "shoes": 3.0})
        shoes = next(g for g in httpx.get(live.url + "/galleries").json()["galleries"] if g["name"] == "shoes")
        assert shoes == {**shoes, "count": 3, "open": False}   # not opened by the scrape
    finally:
        stop_server(live)


def test_a_deleted_gallery_leaves_the_items_gauge_at_once_though_it_was_never_opened(hybrid1_artifact, tmp_path):
    """Over a real `simsearch serve`: a gallery on disk this process never opened, counted from its read of the
    galleries not open; DELETE /galleries/NAME, and the very next scrape leaves it out (not a minute later)."""
    import httpx
    import numpy as np

    import index

    from .conftest import start_server, stop_server

    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        listing = httpx.get(live.url + "/index").json()
        vector = np.zeros(listing["dimension"], dtype=np.float32)
        vector[0] = 1
        config = index.StoreConfig(index.gallery_path(tmp_path / "data", "other"), dim=listing["dimension"],
                                   model_id=listing["model"])
        with index.Store.open(config) as store:   # made beside the service, which has not opened it
            store.upsert([index.Item("o1", vector), index.Item("o2", vector)])
        stop_server(live)
        live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact),
                             "SIMSEARCH_DATA_DIR": str(tmp_path / "data"), "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"},
                            tmp_path, log_name="restarted.log")

        def scraped() -> dict[str, float]:
            family = next(f for f in text_string_to_metric_families(httpx.get(live.url + "/metrics").text)
                          if f.name == "simsearch_gallery_items")
            return {s.labels["gallery"]: s.value for s in family.samples}

        assert _soon(lambda: scraped().get("other") == 2.0), scraped()
        r = httpx.delete(live.url + "/galleries/other")
        assert r.status_code == 200 and r.json()["deleted"] == 2, r.text
        assert "other" not in scraped()
    finally:
        stop_server(live)
