"""Scoped API keys from SIMSEARCH_API_KEY_FILE (`KEY read`, `KEY galleries=a,b`), over a real `simsearch serve`:
a read-only key refused every write, a gallery-limited key refused every other gallery (by the `gallery` query
parameter, repeated or percent-encoded, and by /galleries/{name}, with the path prefix kept or not), its list of
galleries cut to its own, scopes changed by editing the file without a restart, and a malformed file refused at
start (and kept out on a re-read) naming the line, never the key."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, start_server, stop_server

PREFIX = "/simsearch"
ORIGIN = "https://shop.example"
FULL, READ, SHOP, SHOP_READ, CHANGING = "full-key-1", "read-key-2", "shop-key-3", "shop-read-key-4", "changing-key-5"
KEY_FILE = (f"# the service's keys\n{FULL}\n{READ} read\n{SHOP} galleries=shoes,default\n"
            f"{SHOP_READ} read galleries=shoes\n")
ALL_KEYS = (FULL, READ, SHOP, SHOP_READ, CHANGING)


@pytest.fixture(scope="module")
def scoped(hybrid1_artifact, tmp_path_factory):
    """A server with the keys of KEY_FILE under --root-path /simsearch, with CORS for ORIGIN, reads open, a body
    limit of 1 MB; the galleries `shoes` and `hats` made. Yields (client on the server, key file, server)."""
    tmp = tmp_path_factory.mktemp("scoped-keys")
    keys = tmp / "keys"
    keys.write_text(KEY_FILE)
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_BODY_BYTES": str(1 << 20),
                         "SIMSEARCH_CORS_ORIGINS": ORIGIN},
                        tmp, ["--api-key-file", str(keys), "--root-path", PREFIX, "--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            for name in ("shoes", "hats"):
                assert c.put(f"/galleries/{name}", headers={"X-API-Key": FULL}).status_code == 201
            yield c, keys, live
    finally:
        stop_server(live)
        log = live.log_tail(200_000)
        assert not [k for k in ALL_KEYS if k in log], "a key was written to the log"


def _as(key: str | None) -> dict[str, str]:
    return {"X-API-Key": key} if key else {}


def _refused_by_scope(r: httpx.Response) -> str:
    """The message of a 403 key_scope (asserted), which never holds a key."""
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "key_scope", r.text
    message = r.json()["error"]["message"]
    assert not [k for k in ALL_KEYS if k in message]
    return message


def test_a_read_only_key_may_read_and_search_but_every_write_is_refused_before_its_body_is_read(scoped):
    c, _, _ = scoped
    assert c.get("/index", headers=_as(READ)).status_code == 200
    assert c.get("/index", params={"gallery": "hats"}, headers=_as(READ)).status_code == 200
    assert c.post("/search", json={"vector": [1.0]}, headers=_as(READ)).status_code == 422   # a read: the route's
    message = _refused_by_scope(c.delete("/index/absent", headers=_as(READ)))
    assert "read only" in message and "DELETE /index/absent is a write" in message
    _refused_by_scope(c.put("/galleries/socks", headers=_as(READ)))
    _refused_by_scope(c.delete("/galleries/hats", headers=_as(READ)))
    _refused_by_scope(c.patch("/index/absent", json={"label": "x"}, headers=_as(READ)))
    # a body past the 1 MB limit: the scope is refused first (413 would mean the body was read)
    _refused_by_scope(c.post("/index", content=b"x" * (2 << 20), headers={**_as(READ), "Content-Type": "image/png"}))
    assert c.delete("/index/absent", headers=_as(FULL)).status_code == 404   # the same write, a full key


def test_a_gallery_limited_key_reads_and_writes_its_galleries_and_no_other(scoped):
    c, _, _ = scoped
    assert c.get("/index", params={"gallery": "shoes"}, headers=_as(SHOP)).status_code == 200
    assert c.get("/index", headers=_as(SHOP)).status_code == 200   # `default` is in its list
    assert c.delete("/index/absent", params={"gallery": "shoes"}, headers=_as(SHOP)).status_code == 404
    message = _refused_by_scope(c.get("/index", params={"gallery": "hats"}, headers=_as(SHOP)))
    assert "'hats'" in message and "default, shoes" in message
    _refused_by_scope(c.delete("/index/absent", params={"gallery": "hats"}, headers=_as(SHOP)))
    _refused_by_scope(c.post("/search", json={"vector": [1.0]}, params={"gallery": "hats"}, headers=_as(SHOP)))
    # a gallery it may not use is not made, nor deleted; its own is found
    assert "'socks'" in _refused_by_scope(c.put("/galleries/socks", headers=_as(SHOP)))
    _refused_by_scope(c.delete("/galleries/hats", headers=_as(SHOP)))
    assert c.put("/galleries/shoes", headers=_as(SHOP)).status_code == 200
    assert "socks" not in [g["name"] for g in c.get("/galleries", headers=_as(FULL)).json()["galleries"]]
    # a route on no gallery is open to it
    assert c.post("/embed", headers=_as(SHOP)).status_code != 403


def test_a_key_limited_to_galleries_and_to_reads_is_held_to_both(scoped):
    c, _, _ = scoped
    assert c.get("/index", params={"gallery": "shoes"}, headers=_as(SHOP_READ)).status_code == 200
    assert "read only" in _refused_by_scope(c.delete("/index/absent", params={"gallery": "shoes"},
                                                     headers=_as(SHOP_READ)))
    _refused_by_scope(c.get("/index", headers=_as(SHOP_READ)))   # the default gallery is not in its list


def test_the_gallery_checked_is_every_one_the_request_names_however_it_is_written(scoped):
    c, _, _ = scoped
    # repeated: refused whichever comes last (the route would take the last, and refuses a repeat with 422)
    _refused_by_scope(c.get("/index?gallery=shoes&gallery=hats", headers=_as(SHOP)))
    _refused_by_scope(c.get("/index?gallery=hats&gallery=shoes", headers=_as(SHOP)))
    assert c.get("/index?gallery=shoes&gallery=shoes", headers=_as(SHOP)).status_code == 422
    # percent-encoded, in the query and in the path, read as the routes read them
    assert "'hats'" in _refused_by_scope(c.get("/index?gallery=h%61ts", headers=_as(SHOP)))
    assert c.get("/index?gallery=sh%6Fes", headers=_as(SHOP)).status_code == 200
    assert "'hats'" in _refused_by_scope(c.delete("/galleries/h%61ts", headers=_as(SHOP)))
    # with the path prefix kept (a gateway that passes it on) as without it
    assert "'hats'" in _refused_by_scope(c.delete(f"{PREFIX}/galleries/hats", headers=_as(SHOP)))
    _refused_by_scope(c.get(f"{PREFIX}/index", params={"gallery": "hats"}, headers=_as(SHOP)))
    assert c.get(f"{PREFIX}/index", params={"gallery": "shoes"}, headers=_as(SHOP)).status_code == 200
    _refused_by_scope(c.delete(f"{PREFIX}/index/absent", headers=_as(READ)))
    # HEAD is read as its GET
    assert c.head("/index", params={"gallery": "hats"}, headers=_as(SHOP)).status_code == 403
    assert c.head("/index", params={"gallery": "shoes"}, headers=_as(SHOP)).status_code == 200


def test_a_browsers_preflight_carries_no_key_and_is_answered_whatever_the_gallery(scoped):
    c, _, _ = scoped
    r = c.options("/index?gallery=hats", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE",
                                                  "Access-Control-Request-Headers": "x-api-key"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN


def test_a_gallery_limited_key_lists_only_its_galleries(scoped):
    c, _, _ = scoped

    def names(key: str | None) -> set[str]:
        r = c.get("/galleries", headers=_as(key))
        assert r.status_code == 200, r.text
        assert int(r.headers["content-length"]) == len(r.content)
        return {g["name"] for g in r.json()["galleries"]}

    assert {"default", "shoes", "hats"} <= names(FULL)
    assert names(SHOP) == {"default", "shoes"}
    assert names(SHOP_READ) == {"shoes"}
    assert "hats" in names(None)   # reads need no key here: an anonymous read is not limited


def test_reads_without_a_key_stay_open_when_they_need_none_while_a_limited_key_is_held_to_its_scope(scoped):
    c, _, _ = scoped
    assert c.get("/index", params={"gallery": "hats"}).status_code == 200
    _refused_by_scope(c.get("/index", params={"gallery": "hats"}, headers=_as(SHOP)))


def test_a_scope_changed_in_the_key_file_applies_without_a_restart_and_a_bad_edit_keeps_the_last_good_keys(scoped):
    c, keys, live = scoped

    def write_keys(text: str) -> None:   # as a secret mount updates it: a new file renamed over the old
        new = keys.with_suffix(".new")
        new.write_text(text)
        new.replace(keys)

    def deleting(key: str) -> int:
        return c.delete("/index/absent", params={"gallery": "shoes"}, headers=_as(key)).status_code

    def soon(check, want) -> bool:
        deadline = time.monotonic() + 10
        while check() != want:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    try:
        write_keys(KEY_FILE + f"{CHANGING}\n")
        assert soon(lambda: deleting(CHANGING), 404)
        write_keys(KEY_FILE + f"{CHANGING} read\n")
        assert soon(lambda: deleting(CHANGING), 403)
        _refused_by_scope(c.delete("/index/absent", params={"gallery": "shoes"}, headers=_as(CHANGING)))
        write_keys(KEY_FILE + f"{CHANGING} galleries=hats\n")
        assert soon(lambda: c.get("/index", params={"gallery": "shoes"}, headers=_as(CHANGING)).status_code, 403)
        assert c.delete("/index/absent", params={"gallery": "hats"}, headers=_as(CHANGING)).status_code == 404
        bad_line = KEY_FILE.count("\n") + 1
        write_keys(KEY_FILE + f"{CHANGING} galleries=hats wirte\n")   # a typo: the keys before stay
        time.sleep(2.5)
        assert c.get("/index", params={"gallery": "shoes"}, headers=_as(CHANGING)).status_code == 403
        assert c.delete("/index/absent", params={"gallery": "hats"}, headers=_as(CHANGING)).status_code == 404
        log = live.log_tail(200_000)
        assert f"line {bad_line}: word 3 is not an option" in log and "keeping the 5 keys read before" in log
        assert "wirte" not in log   # an unknown word may be a key written after a space: never repeated
    finally:
        write_keys(KEY_FILE)


def _serve_refused(env: dict[str, str], args: list[str], tmp_path: Path) -> str:
    """What `simsearch serve` says when it refuses to start (asserted: it exits non-zero, at once)."""
    exe = Path(sys.executable).parent / "simsearch"
    run = subprocess.run([str(exe), "serve", "--port", "1", *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=tmp_path)
    assert run.returncode != 0, run.stdout + run.stderr
    return run.stdout + run.stderr


@pytest.mark.parametrize("line, said", [
    ("secret-key wrte", "line 3: word 2 is not an option"),
    ("secret-key read read", "line 3: word 3 repeats an option"),
    ("secret-key galleries=Shoes", "line 3: galleries= holds 'Shoes', not a gallery name"),
    ("secret-key galleries=", "line 3: galleries= holds '', not a gallery name"),
    ("secret-key other-secret-key", "line 3: word 2 is not an option"),
    ("secret-key\nsecret-key read", "line 4: a key of line 3 again"),
])
def test_a_key_file_with_an_unknown_option_or_a_bad_line_is_refused_at_start_naming_the_line_not_the_key(
        hybrid1_artifact, tmp_path, line, said):
    keys = tmp_path / "keys"
    keys.write_text(f"# keys\nfull-key\n{line}\n")
    out = _serve_refused({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact)}, ["--api-key-file", str(keys)], tmp_path)
    assert said in out and "SIMSEARCH_API_KEY_FILE" in out, out
    assert "secret-key" not in out and "full-key" not in out, out


def test_the_key_variable_takes_full_access_keys_only_and_refuses_a_scope_written_after_a_key(hybrid1_artifact,
                                                                                               tmp_path):
    out = _serve_refused({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_API_KEY": "secret-key read"},
                         [], tmp_path)
    assert "SIMSEARCH_API_KEY" in out and "SIMSEARCH_API_KEY_FILE" in out and "secret-key" not in out, out
