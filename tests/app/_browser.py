"""Helpers for the browser test: a real `simsearch serve` process, headless Chromium, CIFAR-10 images.

Nothing here is a stand-in: the server is the console script over real HTTP, the browser is Debian's
Chromium driven by Selenium through chromedriver, the images come from the shared CIFAR-10 tarball.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"


def require_chromium() -> None:
    """Skip (with the reason) when Debian's chromium or chromedriver is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"headless browser test needs {' and '.join(missing)} "
                    "(apt-get install chromium chromium-driver; scripts/test installs them)")


def make_driver(profile_dir: Path, width: int = 1280, height: int = 900):
    """A headless Chromium driven through Debian's chromedriver, with a throwaway profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simsearch_command() -> list[str]:
    """The installed console script beside this interpreter (the venv's), else `python -m cli`."""
    script = Path(sys.executable).with_name("simsearch")
    if script.exists():
        return [str(script)]
    found = shutil.which("simsearch")
    return [found] if found else [sys.executable, "-m", "cli"]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)   # its own session: only this server and its children
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def start_server(env_extra: dict[str, str], workdir: Path, timeout: float = 120.0) -> LiveServer:
    """Start `simsearch serve` on a free port; return once GET /readyz answers 200 (model and index loaded)."""
    import httpx

    port = free_port()
    log = workdir / "server.log"
    env = {**os.environ, **env_extra}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*simsearch_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"simsearch serve exited with status {process.returncode}:\n{server.log_tail()}")
        try:
            response = httpx.get(f"{server.url}/readyz", timeout=5)
            if response.status_code == 200:
                return server
            last = f"{response.status_code} {response.text}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"simsearch serve was not ready within {timeout:.0f}s (GET /readyz: {last})\n"
                       f"{server.log_tail(1500)}")


def cifar10_images(shared_data: Path, per_class: int, split: str = "test",
                   skip: int = 0) -> list[tuple[str, str, bytes]]:
    """(name, label, jpeg bytes) for `per_class` real CIFAR-10 images of each class, read from the tarball.

    Member names look like cifar10-jpeg/<split>/<label>/<nnnn>.jpg; the first `skip` of each class are
    passed over, so callers can draw disjoint sets.
    """
    tar_path = shared_data / "cifar10-jpeg.tar"
    if not tar_path.exists():
        pytest.fail(f"the CIFAR-10 tarball is missing: {tar_path}")
    taken: dict[str, int] = defaultdict(int)
    seen: dict[str, int] = defaultdict(int)
    out: list[tuple[str, str, bytes]] = []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] != split or not parts[3].endswith(".jpg"):
                continue
            label = parts[2]
            seen[label] += 1
            if seen[label] <= skip or taken[label] >= per_class:
                continue
            taken[label] += 1
            out.append((f"{label}-{parts[3]}", label, tar.extractfile(member).read()))
            if len(taken) == 10 and all(v >= per_class for v in taken.values()):
                break
    return out
