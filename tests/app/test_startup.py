"""What the service says and does at start: it waits for a writer lock another process holds (a rolling
update, a quick restart) and becomes ready once it is free; it warns when anyone who reaches its port can
write, and logs the limits in force; it exports the replica's follow timestamp only where it follows."""
from __future__ import annotations

import logging
import re
import time

import httpx
import pytest

from .conftest import running, settings_for, start_server, stop_server
from .test_api import png, upload


def test_a_service_started_while_another_holds_the_writer_lock_waits_and_serves_once_it_exits(
        hybrid1_artifact, tmp_path):
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    old = start_server(env, tmp_path, log_name="old.log")
    new = None
    try:
        with httpx.Client(base_url=old.url, timeout=60) as c:
            assert c.post("/index", files=[upload(png(1))], data={"id": "kept"}).status_code == 201
        new = start_server(env, tmp_path, log_name="new.log", ready=False)
        time.sleep(5)   # two tries more: still waiting, one log line
        r = httpx.get(new.url + "/readyz", timeout=10)
        assert r.status_code == 503, r.text
        reason = r.json()["error"]["message"]
        assert f"writer lock of the index at {tmp_path / 'data' / 'index'}" in reason, reason
        assert f"pid {old.proc.pid}" in reason and "becomes ready once that process exits" in reason, reason
        assert "SIMSEARCH_READ_ONLY=true" in reason and "read_only to inspect" not in reason, reason
        assert new.alive()
        stop_server(old)
        deadline = time.monotonic() + 30
        while httpx.get(new.url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, new.log_tail()
            time.sleep(0.2)
        with httpx.Client(base_url=new.url, timeout=60) as c:
            assert c.get("/index/kept").status_code == 200
            assert c.post("/index", files=[upload(png(2))], data={"id": "new"}).status_code == 201
        log = new.log.read_text(errors="replace")
        assert log.count(f"not ready yet: waiting for the writer lock of the index at {tmp_path / 'data'}") == 1, log
        assert "still waiting" not in log and "the writer lock of" in log and "is free" in log, log
    finally:
        stop_server(old)
        if new is not None:
            stop_server(new)
    assert "Traceback" not in new.log.read_text(errors="replace"), new.log_tail()


@pytest.mark.anyio
async def test_the_lock_wait_is_logged_once_then_once_a_minute_and_other_load_failures_stay_as_they_were(
        make_settings, hybrid1_artifact, tmp_path, caplog, monkeypatch):
    import asyncio

    from app import _service

    monkeypatch.setattr(_service, "LOCK_RETRY_SECONDS", 0.05, raising=False)
    monkeypatch.setattr(_service, "LOCK_LOG_SECONDS", 0.5, raising=False)
    settings = make_settings()
    holder = running(settings)   # another app on the same folder: it holds the writer lock
    await holder.__aenter__()
    try:
        with caplog.at_level(logging.INFO, logger="simsearch.app"):
            async with running(settings, wait_ready=False) as client:
                service = client.app.state.service
                t0 = time.monotonic()
                while time.monotonic() - t0 < 1.2:
                    r = await client.get("/readyz")
                    assert r.status_code == 503
                    await asyncio.sleep(0.05)
                assert "writer lock" in r.json()["error"]["message"] and not service.ready
                held, holder = holder, None
                await held.__aexit__(None, None, None)
                await asyncio.wait_for(service.wait_loaded(), 30)
                assert (await client.get("/readyz")).status_code == 200
        lines = [rec.getMessage() for rec in caplog.records if "not ready yet" in rec.getMessage()]
        # about 24 tries in 1.2 s: one line first, then one each 0.5 s
        assert 2 <= len(lines) <= 4 and "still waiting" in lines[1], lines
    finally:
        if holder is not None:
            await holder.__aexit__(None, None, None)
    # a failure that is not the lock is reported once, as before, and not retried
    (tmp_path / "afile").write_text("not a folder")
    async with running(settings_for(hybrid1_artifact, tmp_path / "afile")) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503 and "cannot open the index at" in r.text, r.text
        assert client.app.state.service._load_task.done()


@pytest.mark.anyio
@pytest.mark.parametrize("host, key, warned", [
    ("0.0.0.0", None, True), ("::", None, True), ("10.1.2.3", None, True),
    ("0.0.0.0", "k", False), ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False)])
async def test_open_writes_on_an_address_others_reach_are_warned_of_and_the_limits_logged(
        make_settings, caplog, host, key, warned):
    settings = make_settings(host=host, api_key=key, rate_limit_per_minute=600, max_concurrency=8)
    with caplog.at_level(logging.INFO, logger="simsearch.app"):
        async with running(settings, wait_ready=False):
            pass
    warnings = [rec for rec in caplog.records if "anyone who reaches port" in rec.getMessage()]
    assert len(warnings) == warned
    if warned:
        assert warnings[0].levelno == logging.WARNING
        message = warnings[0].getMessage()
        assert f"listens on {host}" in message and "SIMSEARCH_API_KEY" in message, message
    limits = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("limits: ")]
    assert len(limits) == 1, limits
    assert re.search(r"writes need (no|an) API key; rate limit 600 a minute per key or client IP; request bodies "
                     r"up to 10,485,760 bytes \(stalled 30 s: cut\); at most 8 requests in flight", limits[0]), limits[0]
    assert ("writes need an API key" in limits[0]) == bool(key)


@pytest.mark.anyio
async def test_a_read_only_replica_is_not_warned_of_open_writes(make_settings, caplog):
    settings = make_settings(host="0.0.0.0", read_only=True)
    with caplog.at_level(logging.INFO, logger="simsearch.app"):
        async with running(settings, wait_ready=False):
            pass
    assert not [rec for rec in caplog.records if "anyone who reaches" in rec.getMessage()]
    assert any("limits: writes none (read-only)" in rec.getMessage() for rec in caplog.records)


@pytest.mark.anyio
async def test_the_follow_timestamp_is_exported_by_replicas_that_follow_and_not_by_the_writer(make_settings):
    name = "simsearch_index_followed_timestamp_seconds"
    async with running(make_settings()) as writer:
        assert (await writer.post("/index", files=[upload(png(1))], data={"id": "a"})).status_code == 201
        text = (await writer.get("/metrics")).text
        assert name not in text   # a 0 here made time() - followed > 60 fire on every writer
        assert "simsearch_ready 1.0" in text
        async with running(make_settings(read_only=True)) as replica:
            text = (await replica.get("/metrics")).text
            found = re.search(rf"^{name} (\S+)$", text, re.M)
            assert found and time.time() - 60 < float(found[1]) <= time.time(), text
        async with running(make_settings(read_only=True, refresh_seconds=0)) as still:   # follows nothing
            assert name not in (await still.get("/metrics")).text


@pytest.mark.anyio
async def test_a_gallery_a_copy_into_did_not_finish_is_served_and_said_to_be_a_part(make_settings, tmp_path, caplog):
    import index

    async with running(make_settings()) as c:   # makes the default gallery's store
        assert (await c.post("/index", files=[upload(png(1))], data={"id": "one"})).status_code == 201
    index.mark_incomplete(tmp_path / "data" / "index", "index copy", "/srv/old")
    with caplog.at_level(logging.INFO, logger="simsearch.app"):
        async with running(make_settings()) as c:
            assert (await c.get("/index")).json()["count"] == 1
    said = [rec for rec in caplog.records if "did not finish" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, [r.getMessage() for r in caplog.records]
    assert "gallery 'default': `simsearch index copy` from /srv/old" in said[0].getMessage()
