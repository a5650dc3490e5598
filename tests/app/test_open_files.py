"""The service and its limit of open files (RLIMIT_NOFILE), against a real `simsearch serve` run under `prlimit`:
each open gallery holds about four files, and the common soft limit of 1024 ran out at a few hundred galleries
(session 54's hunt, /tmp/s54/J). The service raises its soft limit to the hard one at start and says so; when files
still run out, a gallery that cannot be opened or made is a 503 `out_of_files` naming the limit and what to do (not
a 503 `index_unavailable` to retry every 5 s, which no retry could fix), logged once, and the service serves on and
recovers once galleries are deleted."""
from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import start_server, stop_server

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None or not Path("/proc/self/limits").exists(),
                                reason="needs prlimit(1) and /proc (Linux)")


def _nofile(pid: int) -> tuple[int, int]:
    """The soft and hard open-file limits of process `pid`, from /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def _serve(hybrid1_artifact, work: Path, nofile: str, env: dict[str, str] | None = None, log_name="server.log"):
    return start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_GALLERIES": "100000",
                         "OMP_NUM_THREADS": "1", **(env or {})},
                        work, args=["--log-level", "info"], prefix=["prlimit", f"--nofile={nofile}", "--"],
                        log_name=log_name)


def test_serve_raises_its_soft_open_file_limit_to_the_hard_one_and_logs_it(hybrid1_artifact, tmp_path):
    live = _serve(hybrid1_artifact, tmp_path, "1024:4096", {"SIMSEARCH_MAX_GALLERIES": "100"})
    try:
        assert _nofile(live.proc.pid) == (4096, 4096)
        text = live.log.read_text(errors="replace")
        line = next(ln for ln in text.splitlines() if "limits: writes" in ln)
        assert "open files up to 4,096 (RLIMIT_NOFILE soft, raised from 1,024; hard 4,096)" in line, line
        assert "the open-file limit" not in text   # enough for the 100 galleries it makes
    finally:
        stop_server(live)


def _vectors(dim: int, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [{"id": f"i{k}", "vector": [round(float(x), 5) for x in row]} for k, row in enumerate(v)]


def _add_items(data: Path, name: str, dim: int) -> None:
    """Two items more in gallery `name`, written by this process (the service has not opened it)."""
    import index

    store = index.Store.open(index.StoreConfig(path=index.gallery_path(data, name)))
    try:
        store.upsert([index.Item(f"more{k}", np.asarray(v["vector"], np.float32))
                      for k, v in enumerate(_vectors(dim, 2, 55))])
    finally:
        store.close()


def _fill(client: httpx.Client, model: str, dim: int, most: int = 400) -> tuple[list[str], httpx.Response]:
    """Make galleries of 3 items (JSON vectors) until one is refused: the names made, and the refusal."""
    made = []
    for i in range(most):
        name = f"g{i:04d}"
        r = client.post("/index", params={"gallery": name}, json={"model": model, "items": _vectors(dim, 3, i)})
        if r.status_code != 201:
            return made, r
        made.append(name)
    pytest.fail(f"{most} galleries made under a limit of 256 open files")


def test_a_gallery_past_the_open_file_limit_is_a_503_out_of_files_logged_once_and_the_service_recovers(
        hybrid1_artifact, tmp_path):
    # three galleries made before, not opened by the service that runs out of files; and a backup of one
    live = _serve(hybrid1_artifact, tmp_path, "256:256")
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            info = client.get("/index", params={"limit": 0}).json()
            for i in range(3):
                r = client.post("/index", params={"gallery": f"old{i}"},
                                json={"model": info["model"], "items": _vectors(info["dimension"], 3, 100 + i)})
                assert r.status_code == 201, r.text
            backup = client.get("/galleries/old0/backup")
            assert backup.status_code == 200, backup.text
    finally:
        stop_server(live)
    live = _serve(hybrid1_artifact, tmp_path, "256:256", log_name="server2.log")
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:   # one connection: a new one needs a file too
            made, refused = _fill(client, info["model"], info["dimension"])
            assert len(made) >= 20, refused.text
            # said at start: the limit is below what SIMSEARCH_MAX_GALLERIES galleries hold
            assert ("the open-file limit (RLIMIT_NOFILE soft 256, hard 256) is below the about 600064 files that "
                    "100000 open galleries hold") in live.log.read_text(errors="replace")
            body = refused.json()["error"]
            assert (refused.status_code, body["code"]) == (503, "out_of_files"), refused.text
            message = body["message"]
            assert f"gallery 'g{len(made):04d}' was not made" in message, message
            assert "run out of open files" in message and "RLIMIT_NOFILE, is 256; hard limit 256" in message, message
            assert "SIMSEARCH_MAX_GALLERIES" in message and "raise the limit" in message, message
            assert refused.headers["Retry-After"]
            again = [client.put(f"/galleries/x{i}") for i in range(5)]   # PUT /galleries/NAME too
            assert {(r.status_code, r.json()["error"]["code"]) for r in again} == {(503, "out_of_files")}
            # a listing that cannot read a gallery not open says why (it left it out, as if deleted): one that
            # another process wrote meanwhile, whose count kept from before (UnopenedCounts) is no longer right
            _add_items(tmp_path / "data", "old1", info["dimension"])
            r = client.get("/galleries")
            assert (r.status_code, r.json()["error"]["code"]) == (503, "out_of_files"), r.text
            # a restore: not a 422 not_a_store (the file is sound)
            r = client.put("/galleries/restored/backup", content=backup.content,
                           headers={"Content-Type": "application/octet-stream"})
            assert (r.status_code, r.json()["error"]["code"]) == (503, "out_of_files"), r.text
            # said once in the log, not at every request
            log_text = live.log.read_text(errors="replace")
            assert log_text.count("out of open files") == 1, log_text[-3000:]
            assert "cannot open gallery" not in log_text
            # the galleries open serve on
            q = {"vector": _vectors(info["dimension"], 1, 999)[0]["vector"]}
            r = client.post("/search", params={"gallery": made[0], "k": 3}, json=q)
            assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
            # files freed by deleting galleries: new ones are made again, listed with the others, nothing refused
            for name in made[-20:]:
                assert client.delete(f"/galleries/{name}").status_code == 200
            r = client.post("/index", params={"gallery": "after"},
                            json={"model": info["model"], "items": _vectors(info["dimension"], 3, 7)})
            assert r.status_code == 201, r.text
            assert client.put("/galleries/after2").status_code == 201
            listed = {g["name"]: g["count"] for g in client.get("/galleries").json()["galleries"]}
            kept = [*made[:-20], "old0", "old1", "old2", "after"]
            assert {n: listed.get(n) for n in kept} == {n: 5 if n == "old1" else 3 for n in kept}
            assert set(listed) == {*kept, "after2", "default"}, "a refused gallery was left behind"
        assert "galleries open again" in live.log.read_text(errors="replace")
    finally:
        stop_server(live)


def test_a_read_of_an_open_gallery_that_finds_no_file_is_a_503_out_of_files_not_a_500(hybrid1_artifact, tmp_path):
    # a read takes a database connection of the gallery's own, opened when none is idle: at the limit it failed
    # "unable to open database file", a 500 internal_error (OperationalError) with a traceback in the log each time
    live = _serve(hybrid1_artifact, tmp_path, "256:256")
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            info = client.get("/index", params={"limit": 0}).json()
            made, refused = _fill(client, info["model"], info["dimension"])
            assert refused.json()["error"]["code"] == "out_of_files", refused.text
            answers = [client.get("/index", params={"gallery": name, "limit": 5}) for name in made]
            codes = {(r.status_code, r.json().get("error", {}).get("code")) for r in answers}
            assert codes <= {(200, None), (503, "out_of_files")}, codes
            assert (503, "out_of_files") in codes, "no read met the limit: the test tests nothing"
            message = next(r for r in answers if r.status_code == 503).json()["error"]["message"]
            assert message.startswith("GET /index was not answered: the service has run out of open files"), message
            assert "RLIMIT_NOFILE, is 256" in message, message
        log_text = live.log.read_text(errors="replace")
        assert "Traceback" not in log_text and log_text.count("out of open files") == 1, log_text[-3000:]
    finally:
        stop_server(live)
