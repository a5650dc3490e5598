"""Helpers for the browser test: headless Chromium and real CIFAR-10 images.

Nothing here is a stand-in: the browser is Debian's Chromium driven by Selenium through chromedriver,
the images come from the shared CIFAR-10 tarball. (The real `simsearch serve` process comes from
tests/app/conftest.py's start_server.)
"""
from __future__ import annotations

import tarfile
from collections import defaultdict
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


def make_driver(profile_dir: Path, width: int = 1280, height: int = 900, network_log: bool = False):
    """A headless Chromium driven through Debian's chromedriver, with a throwaway profile. network_log:
    keep the DevTools network events, for `sent_requests`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def sent_requests(driver) -> list[dict]:
    """The requests the page has sent since the last call, as DevTools reports them: {method, url,
    headers} (a driver made with network_log=True)."""
    import json

    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            sent.append({"method": request["method"], "url": request["url"], "headers": request["headers"]})
    return sent


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


def make_screenshot(artifact: Path, out: Path, shared_data: Path, per_class: int = 30,
                    query_label: str = "automobile", query_index: int = 3, k: int = 12) -> Path:
    """docs/screenshot.png: a real `simsearch serve` with `per_class` CIFAR-10 test images of each class,
    and the `query_index`-th `query_label` image of the *train* split (not in the gallery) as the query."""
    import io
    import tempfile
    import time

    import httpx
    from PIL import Image
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from .conftest import start_server, stop_server

    work = Path(tempfile.mkdtemp(prefix="page-screenshot-"))
    server = start_server({"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_API_KEY": "screenshot", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    try:
        by_label: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for name, label, data in cifar10_images(shared_data, per_class):
            by_label[label].append((name, data))
        with httpx.Client(base_url=server.url, timeout=300, headers={"X-API-Key": "screenshot"}) as client:
            for label, group in by_label.items():
                response = client.post("/index", data={"label": label},
                                       files=[("file", (n, d, "image/jpeg")) for n, d in group])
                response.raise_for_status()
        train = [x for x in cifar10_images(shared_data, query_index + 1, split="train") if x[1] == query_label]
        query = work / f"query-{query_label}.jpg"
        query.write_bytes(train[query_index][2])
        driver = make_driver(work / "profile")
        try:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
            driver.get(server.url + "/")
            Select(driver.find_element("id", "k")).select_by_visible_text(str(k))
            driver.find_element("id", "file").send_keys(str(query))
            WebDriverWait(driver, 60).until(
                lambda d: "ok" in (d.find_element("id", "search-status").get_attribute("class") or ""))
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img')].every(i => i.complete)"))
            driver.execute_script("document.activeElement.blur()")
            time.sleep(0.5)
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
        Image.open(io.BytesIO(png)).convert("RGB").save(out, optimize=True)
        return out
    finally:
        stop_server(server)


if __name__ == "__main__":
    # .venv/bin/python -m tests.app._browser ARTIFACT [OUT]   (from the repository root)
    import os
    import sys

    shared = Path(os.environ.get("SIMSEARCH_SHARED_DATA", REPO.parent / "shared" / "data"))
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "docs" / "screenshot.png"
    print(make_screenshot(Path(sys.argv[1]), target, shared))
