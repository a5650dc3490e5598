"""Fixtures for the service tests: real images, an in-process app with its lifespan, and a real
`simsearch serve` process on a free port."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, ImageDraw

import model

REPO = Path(__file__).resolve().parents[2]
SERVER_KEY = "server-test-key"
SERVER_MAX_BODY = 1_000_000
SERVER_MAX_CONCURRENCY = 4


@pytest.fixture(scope="module")
def pddm_artifact(hybrid1_artifact, tmp_path_factory):
    """The seeded Hybrid-1 test artifact plus a seeded PDDM head (rerank=N re-orders with it)."""
    art = model.load_artifact(hybrid1_artifact)
    torch.manual_seed(7)
    head = model.PDDM(embed_dim=art.meta.embed_dim)
    meta = art.meta.model_copy(update={"name": "hybrid1-pddm-test", "heads": {"pddm": head.build_args}})
    return model.save_artifact(tmp_path_factory.mktemp("pddm") / "hybrid1-pddm.safetensors", art.model, meta,
                               heads={"pddm": head})


@pytest.fixture
def anyio_backend():
    return "asyncio"


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """Image -> bytes in `fmt`."""
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def pattern(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A distinct synthetic picture per seed (shapes and colours), so embeddings differ."""
    img = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    d = ImageDraw.Draw(img)
    w, h = size
    for i in range(4):
        x0, y0 = (seed * 7 + i * 13) % w, (seed * 11 + i * 17) % h
        d.rectangle([x0, y0, min(w - 1, x0 + w // 3), min(h - 1, y0 + h // 4)],
                    fill=((seed * 29 + i * 60) % 256, (i * 90) % 256, (seed * 5 + i * 45) % 256))
    d.ellipse([w // 4, h // 4, w // 2 + seed % (w // 4), h // 2 + seed % (h // 4)], fill=(255 - seed % 256, 40, 200))
    return img.convert(mode) if mode != "RGB" else img


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    """One synthetic JPEG."""
    return encode(pattern(1), "JPEG", quality=90)


@pytest.fixture(scope="session")
def cifar(shared_data) -> dict[str, list[bytes]]:
    """Real CIFAR-10 test JPEGs: 8 airplanes and 8 automobiles (read from the tar, not extracted)."""
    want = {"airplane": [], "automobile": []}
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 4 and parts[1] == "test" and parts[2] in want and member.isfile():
                if len(want[parts[2]]) < 8:
                    want[parts[2]].append(tar.extractfile(member).read())
                if all(len(v) == 8 for v in want.values()):
                    break
    assert all(len(v) == 8 for v in want.values()), {k: len(v) for k, v in want.items()}
    return want


def settings_for(artifact: Path, data_dir: Path, **overrides):
    """app.Settings for a test: the seeded artifact, a temporary data dir, no rate limit unless asked."""
    from app import Settings

    values = dict(model_path=artifact, data_dir=data_dir, rate_limit_per_minute=0)
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running(settings, wait_ready: bool = True):
    """The app in-process with its lifespan, and an httpx client speaking ASGI to it."""
    from app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if wait_ready:
            await app.state.service.wait_loaded()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            client.app = app
            yield client


@pytest.fixture
def make_settings(hybrid1_artifact, tmp_path):
    """settings_for with this test's tmp dir: make_settings(api_key="k", ...)."""
    return lambda **kw: settings_for(hybrid1_artifact, tmp_path / "data", **kw)


@pytest.fixture
def trained(tmp_path):
    """make_settings with the bundled, trained CIFAR-10 model (the service's default) in place of the seeded one."""
    import model

    return lambda **kw: settings_for(model.default_artifact_path(), tmp_path / "data", **kw)


# ---- a real server process ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    host: str
    port: int
    key: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def alive(self) -> bool:
        """The process runs and answers /healthz."""
        if self.proc.poll() is not None:
            return False
        return httpx.get(self.url + "/healthz", timeout=10).status_code == 200


def start_server(env_extra: dict[str, str], work: Path, args: list[str] = (),
                 prefix: list[str] = (), log_name: str = "server.log", ready: bool = True,
                 port: int | None = None) -> LiveServer:
    """Start `simsearch serve` on a free port (or `port`) and wait until /readyz answers 200 (or, with
    ready=False, until /readyz answers at all). prefix: a command that runs it (nsenter into a
    namespace, say)."""
    port = port or free_port()
    log = work / log_name
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    exe = Path(sys.executable).parent / "simsearch"
    proc = subprocess.Popen([*prefix, str(exe), "serve", "--port", str(port), "--log-level", "warning", *args],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=work)
    server = LiveServer(f"http://127.0.0.1:{port}", "127.0.0.1", port, env_extra.get("SIMSEARCH_API_KEY", ""),
                        proc, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"simsearch serve exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            r = httpx.get(server.url + "/readyz", timeout=5)
            if r.status_code == 200 or (not ready and "loading" not in r.text):
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    pytest.fail(f"simsearch serve was not ready in 120 s:\n{server.log_tail()}")


def stop_server(server: LiveServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


@pytest.fixture(scope="session")
def server(hybrid1_artifact, tmp_path_factory) -> LiveServer:
    """A real `simsearch serve` process: API key SERVER_KEY, body limit 1 MB, at most 4 requests in
    flight, no rate limit."""
    work = tmp_path_factory.mktemp("server")
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_API_KEY": SERVER_KEY, "SIMSEARCH_MAX_BODY_BYTES": str(SERVER_MAX_BODY),
                         "SIMSEARCH_MAX_CONCURRENCY": str(SERVER_MAX_CONCURRENCY),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    yield live
    stop_server(live)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: -15 is a clean exit.
    assert live.proc.returncode in (0, -15), f"the server did not shut down cleanly:\n{live.log_tail()}"
    assert "Traceback" not in live.log.read_text(errors="replace"), live.log_tail()
