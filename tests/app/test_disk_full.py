"""A full disk under a real server: writes are refused with 507 and change nothing, searches go on on
the same connection, writes work again once space is freed, and every acknowledged item survives a
restart. The disk is a real 16 MB tmpfs, mounted in a user and mount namespace of its own (`unshare`), so
the test needs no root; the server runs inside that namespace (`nsenter`; tests/conftest.py's
small_disk)."""
from __future__ import annotations

import logging
import re
import subprocess

import httpx
import numpy as np
import pytest

import cli

from ..conftest import noise_png as _noise_png
from .conftest import running, start_server, stop_server
from .test_api import png, upload


def fill_until_refused(client: httpx.Client, rng: np.random.Generator, acknowledged: list[str]):
    """POST /index batches of 8 noise images until one is refused; the ids of those stored are
    appended to `acknowledged`. Returns (the refused ids, their file parts, the response)."""
    for n in range(400):  # about 10-20 KB an item: a 16 MB disk is full long before
        ids = [f"noise-{n}-{j}" for j in range(8)]
        files = [upload(_noise_png(rng), f"{i}.png") for i in ids]
        r = client.post("/index", files=files, data={"id": ids}, headers={"X-Request-ID": f"fill-{ids[0]}"})
        if r.status_code != 201:
            return ids, files, r
        acknowledged += ids
    raise AssertionError("3,200 noise images were stored: the disk never filled")


def test_a_full_disk_refuses_writes_with_507_keeps_serving_and_loses_nothing_acknowledged(
        hybrid1_artifact, tmp_path, small_disk, capsys):
    mount, inside = small_disk
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(mount / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    rng = np.random.default_rng(7)
    live = start_server(env, tmp_path, prefix=inside)
    acknowledged: list[str] = []
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            ids, files, r = fill_until_refused(c, rng, acknowledged)
            assert r.status_code == 507, r.text
            err = r.json()["error"]
            assert err["code"] == "insufficient_storage" and "nothing" in err["message"]
            assert err["request_id"] == r.headers["x-request-id"] == f"fill-{ids[0]}"
            assert str(mount) not in err["message"]  # the path is for the operator's log
            assert len(acknowledged) >= 80
            # refused again while full; a deletion (it writes too) is refused the same way and deletes nothing
            assert c.post("/index", files=files, data={"id": ids}).status_code == 507
            assert c.delete(f"/index/{acknowledged[0]}").status_code == 507
            # a new gallery cannot be made either: 507, and no half-made gallery left behind
            made = c.post("/index", params={"gallery": "new"}, files=files[:1], data={"id": ids[:1]})
            assert made.status_code == 507 and "gallery 'new' was not made" in made.json()["error"]["message"], made.text
            assert c.get("/galleries").json()["galleries"] == [{"name": "default", "count": len(acknowledged), "open": True}]
            assert subprocess.run([*inside, "test", "-e", str(mount / "data" / "galleries" / "new")]).returncode == 1
            # on the same connection, reads go on and show exactly what was acknowledged
            info = c.get("/index", params={"limit": 1000}).json()
            assert info["count"] == len(acknowledged)
            assert [it["id"] for it in info["items"]] == acknowledged
            hit = c.post("/search?k=1", files=[upload(_noise_png(np.random.default_rng(7)), "q.png")]).json()
            assert hit["results"][0]["id"] == acknowledged[0] and hit["results"][0]["distance"] < 1e-3
            assert c.get("/readyz").status_code == 200
            free = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("simsearch_data_disk_free_bytes ")]
            assert len(free) == 1 and float(free[0].split()[1]) < 100_000  # what an operator alerts on

            # `index upload` stops at the 507 with what to do, rather than retrying or skipping files
            folder = tmp_path / "more" / "noise"
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}.png").write_bytes(_noise_png(rng))
            assert cli.main(["index", "upload", str(folder.parent), "--url", live.url]) == 2
            err_line = capsys.readouterr().err.strip().splitlines()[-1]
            assert "answered 507" in err_line and "Run the same command again" in err_line

            subprocess.run([*inside, "rm", str(mount / "ballast")], check=True)
            r = c.post("/index", files=files, data={"id": ids})
            assert r.status_code == 201, r.text
            acknowledged += ids
            free = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("simsearch_data_disk_free_bytes ")]
            assert float(free[0].split()[1]) > 1_000_000
        log = live.log_tail(50_000)
        assert f"write refused by the disk (request fill-{ids[0]})" in log and str(mount) in log and "is full" in log
        # one ERROR line for the run of refusals (4 writes, a gallery, the upload), then one when writes work again
        assert log.count("write refused by the disk") == 1 and "gallery new not made" not in log, log
        assert "writes succeed again: 5 were refused for lack of disk space" in log, log
    finally:
        stop_server(live)
    assert "Traceback" not in live.log.read_text(errors="replace"), live.log_tail()

    # every acknowledged item is there after a restart, in order, and nothing else is
    live = start_server(env, tmp_path, prefix=inside, log_name="server2.log")
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            info = c.get("/index", params={"limit": 1000}).json()
            assert [it["id"] for it in info["items"]] == acknowledged
            assert c.get(f"/index/{ids[-1]}/thumbnail").status_code == 200
    finally:
        stop_server(live)


@pytest.mark.anyio
async def test_refused_writes_log_one_error_then_a_count_a_minute_then_a_line_when_writes_work_again(
        make_settings, caplog):
    import index

    def full(*_args, **_kw):
        raise index.StorageError("the disk holding /data/index is full (0 bytes free)", full=True)

    now = [1000.0]
    async with running(make_settings()) as client:
        service = client.app.state.service
        service.refusals._clock = lambda: now[0]
        g = service.galleries["default"]
        assert (await client.post("/index", files=[upload(png(1))], data={"id": "kept"})).status_code == 201
        upsert = g.commits._upsert
        g.commits._upsert, g.store.delete = full, full
        with caplog.at_level(logging.INFO, logger="simsearch.app"):
            for i in range(5):
                r = await client.post("/index", files=[upload(png(2))], data={"id": f"x{i}"})
                assert r.status_code == 507, r.text
            lines = [rec for rec in caplog.records if "refused" in rec.getMessage()]
            assert len(lines) == 1 and lines[0].levelno == logging.ERROR, [rec.getMessage() for rec in lines]
            assert "write refused by the disk" in lines[0].getMessage() and "is full" in lines[0].getMessage()
            now[0] += 61   # a minute on: the next refusal brings one line counting those since the first
            assert (await client.delete("/index/kept")).status_code == 507
            assert (await client.post("/index", files=[upload(png(2))], data={"id": "y"})).status_code == 507
            lines = [rec.getMessage() for rec in caplog.records if "refused" in rec.getMessage()]
            assert len(lines) == 2 and lines[1].startswith("5 more writes refused for lack of disk space in the last "
                                                           "61 s"), lines
            g.commits._upsert = upsert
            del g.store.delete
            assert (await client.post("/index", files=[upload(png(3))], data={"id": "z"})).status_code == 201
            back = [rec for rec in caplog.records if rec.getMessage().startswith("writes succeed again")]
            assert len(back) == 1 and back[0].getMessage().startswith(
                "writes succeed again: 7 were refused for lack of disk space over 61 s (1 of them since the last "
                "line)"), back[0].getMessage()
            assert (await client.post("/index", files=[upload(png(4))], data={"id": "w"})).status_code == 201
            # a new run begins with its own ERROR line
            g.commits._upsert = full
            assert (await client.post("/index", files=[upload(png(2))], data={"id": "v"})).status_code == 507
            lines = [rec.getMessage() for rec in caplog.records if "refused" in rec.getMessage()]
            assert len(lines) == 4 and lines[3].startswith("write refused by the disk"), lines
            assert len([rec for rec in caplog.records if rec.getMessage().startswith("writes succeed again")]) == 1
            g.commits._upsert = upsert
        metrics = (await client.get("/metrics")).text
        # every refusal is counted, logged or not
        assert re.search(r'^simsearch_requests_total\{method="POST",route="/index",status="507"\} 7.0$', metrics, re.M)
        assert re.search(r'^simsearch_requests_total\{method="DELETE",route="/index/\{id\}",status="507"\} 1.0$',
                         metrics, re.M), metrics
