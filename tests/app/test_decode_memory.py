"""The images POST /index decodes at once hold at most SIMSEARCH_DECODE_PIXELS_IN_FLIGHT pixels in all (counted as
the request's pixel budget counts them), instead of as many decodes as the machine has cores: a 16-core host could
hold 16 whole 64-MP decodes at once (about 1 GB each for a WebP). Small images still decode side by side. The
budget's rules on the event loop (app._capacity.PixelBudget); the app in-process, its budget watched; and a real
`simsearch serve` whose peak memory (VmHWM) is measured while several large uploads arrive at once."""
from __future__ import annotations

import io
import re
import resource
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image

from app._capacity import PixelBudget

from .conftest import pattern, running, start_server, stop_server
from .test_api import upload

KEY = "decode-memory-key"
BIG = (6000, 4000)   # 24 MP; as a lossless WebP of one colour some 1 KB, whose decoding holds some 370 MB
BIG_PIXELS = BIG[0] * BIG[1]


def big_webp(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", BIG, (seed * 40 % 256, 90, 200)).save(out, "WEBP", lossless=True)
    return out.getvalue()


def small_png(seed: int) -> bytes:
    out = io.BytesIO()
    pattern(seed, (2000, 1500)).save(out, "PNG")   # 3 MP: eight of them fit in a big one's budget
    return out.getvalue()


# ---- the budget's rules --------------------------------------------------------------------------------------

async def _enter(budget: PixelBudget, pixels: int, entered: list, leave: anyio.Event, name: str) -> None:
    async with budget.hold(pixels):
        entered.append(name)
        await leave.wait()


@pytest.mark.anyio
async def test_decodes_within_the_budget_run_together_and_one_past_it_waits_for_room():
    budget = PixelBudget(100)
    entered, leave = [], {n: anyio.Event() for n in "abcd"}
    async with anyio.create_task_group() as tg:
        for name, pixels in (("a", 40), ("b", 40), ("c", 20)):   # 100 in all: together
            tg.start_soon(_enter, budget, pixels, entered, leave[name], name)
        await anyio.wait_all_tasks_blocked()
        assert entered == ["a", "b", "c"] and budget.in_flight == 100 and budget.holding == 3 and budget.waits == 0
        tg.start_soon(_enter, budget, 30, entered, leave["d"], "d")
        await anyio.wait_all_tasks_blocked()
        assert entered == ["a", "b", "c"] and budget.waits == 1   # d waits for 30 pixels of room
        leave["c"].set()
        await anyio.wait_all_tasks_blocked()
        assert entered == ["a", "b", "c"]   # 20 left: not yet
        leave["a"].set()
        await anyio.wait_all_tasks_blocked()
        assert entered == ["a", "b", "c", "d"] and budget.in_flight == 70
        leave["b"].set()
        leave["d"].set()
    assert budget.in_flight == 0 and budget.holding == 0


@pytest.mark.anyio
async def test_a_decode_larger_than_the_budget_runs_alone_and_in_turn():
    budget = PixelBudget(100)
    entered, leave = [], {n: anyio.Event() for n in ("small", "huge", "after")}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_enter, budget, 10, entered, leave["small"], "small")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(_enter, budget, 10 ** 9, entered, leave["huge"], "huge")
        await anyio.wait_all_tasks_blocked()
        # first come, first served: a small decode after a waiting one waits too (a large one is never starved)
        tg.start_soon(_enter, budget, 1, entered, leave["after"], "after")
        await anyio.wait_all_tasks_blocked()
        assert entered == ["small"]
        leave["small"].set()
        await anyio.wait_all_tasks_blocked()
        assert entered == ["small", "huge"] and budget.in_flight == 100   # alone, the whole budget its
        leave["huge"].set()
        await anyio.wait_all_tasks_blocked()
        assert entered == ["small", "huge", "after"]
        leave["after"].set()
    assert budget.in_flight == 0 and budget.holding == 0


@pytest.mark.anyio
async def test_a_decode_cancelled_while_it_waits_gives_its_place_to_the_next():
    budget = PixelBudget(100)
    entered, leave = [], {n: anyio.Event() for n in ("first", "gone", "next")}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_enter, budget, 60, entered, leave["first"], "first")
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as inner:
                inner.start_soon(_enter, budget, 80, entered, leave["gone"], "gone")   # waits
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(_enter, budget, 40, entered, leave["next"], "next")     # waits behind it
                await anyio.wait_all_tasks_blocked()
                assert entered == ["first"]
                scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert entered == ["first", "next"] and budget.in_flight == 100
        leave["first"].set()
        leave["next"].set()
    assert budget.in_flight == 0 and budget.holding == 0 and not budget._waiting


# ---- the app: what its budget lets through -------------------------------------------------------------------

async def _watch(budget: PixelBudget, seen: dict, stop: anyio.Event) -> None:
    """The most decodes and pixels the budget held at once, looked at every millisecond."""
    while not stop.is_set():
        seen["holding"] = max(seen["holding"], budget.holding)
        seen["pixels"] = max(seen["pixels"], budget.in_flight)
        await anyio.sleep(0.001)


async def _post_all(client: httpx.AsyncClient, bodies: list[bytes], gallery: str) -> tuple[list[int], dict]:
    budget = client.app.state.service.decode_budget
    seen, stop, codes = {"holding": 0, "pixels": 0}, anyio.Event(), []

    async def post(i: int, data: bytes) -> None:
        r = await client.post(f"/index?gallery={gallery}", data={"id": [f"{gallery}-{i}"]},
                              files=[upload(data, f"{i}.img")])
        codes.append(r.status_code)

    async with anyio.create_task_group() as watching:
        watching.start_soon(_watch, budget, seen, stop)
        async with anyio.create_task_group() as tg:
            for i, data in enumerate(bodies):
                tg.start_soon(post, i, data)
        stop.set()
    return codes, seen


@pytest.mark.anyio
async def test_large_uploads_decode_one_at_a_time_under_the_budget_and_small_ones_side_by_side(make_settings):
    async with running(make_settings(decode_pixels_in_flight=BIG_PIXELS)) as client:
        budget = client.app.state.service.decode_budget
        codes, seen = await _post_all(client, [small_png(i) for i in range(8)], "small")
        assert codes == [201] * 8
        assert budget.waits == 0 and seen["holding"] >= 2, seen   # side by side: none waited for room
        codes, seen = await _post_all(client, [big_webp(i) for i in range(3)], "big")
        assert codes == [201] * 3
        assert seen["holding"] == 1 and seen["pixels"] == BIG_PIXELS, seen   # one at a time
        assert budget.waits >= 2 and budget.in_flight == 0 and budget.holding == 0
        metrics = (await client.get("/metrics")).text   # what an operator sees of it
        waits = re.search(r"^simsearch_decode_budget_waits_total (\S+)$", metrics, re.M)
        assert waits and float(waits[1]) == budget.waits, metrics[-3000:]
        assert re.search(r"^simsearch_decode_pixels_in_flight 0\.0$", metrics, re.M), metrics[-3000:]


# ---- a real server's memory ----------------------------------------------------------------------------------

def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _peak_growth_mb(pid: int, work) -> float:
    """How far the server's resident memory rose above where it was while `work()` ran, in MB."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")   # the server's peak resident size (VmHWM) starts again from the present
    before = _status_kb(pid, "VmRSS")
    work()
    return (_status_kb(pid, "VmHWM") - before) / 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_server_given_several_large_uploads_at_once_holds_about_one_decode(hybrid1_artifact, tmp_path):
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0",
                           "SIMSEARCH_DECODE_PIXELS_IN_FLIGHT": str(BIG_PIXELS)}, tmp_path)
    try:
        pid = server.proc.pid
        bigs = [big_webp(i) for i in range(4)]
        with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=300) as client:
            def post(i: int, data: bytes, gallery: str = "big") -> int:
                return client.post(f"/index?gallery={gallery}", data={"id": [f"{gallery}-{i}"]},
                                   files=[upload(data, f"{i}.webp")]).status_code

            assert post(0, small_png(0), "warm") == 201 and post(0, bigs[0], "warm") == 201   # every path warmed
            # should the budget not hold, the server fails those requests rather than take the test machine's memory
            cap = (_status_kb(pid, "VmSize") + 3 * 1024 * 1024) * 1024
            resource.prlimit(pid, resource.RLIMIT_AS, (cap, cap))
            codes: list[int] = []
            alone = _peak_growth_mb(pid, lambda: codes.append(post(1, bigs[1], "alone")))

            def at_once():
                with ThreadPoolExecutor(len(bigs)) as pool:
                    codes.extend(pool.map(post, range(len(bigs)), bigs))

            together = _peak_growth_mb(pid, at_once)
            assert codes == [201] * (1 + len(bigs)), codes
            # one decode at a time: about what one alone took (two at once, as the cores allowed before: twice it)
            assert alone > 200 and together < 1.4 * alone, f"one alone: {alone:.0f} MB; {len(bigs)} at once: " \
                                                            f"{together:.0f} MB"
            # and one request of two of them holds one at a time too
            two = _peak_growth_mb(pid, lambda: codes.append(client.post(
                "/index?gallery=two", data={"id": ["x", "y"]},
                files=[upload(bigs[2], "x.webp"), upload(bigs[3], "y.webp")]).status_code))
            print(f"server peak memory growth: one alone {alone:.0f} MB, {len(bigs)} at once {together:.0f} MB, "
                  f"two in one request {two:.0f} MB")
            assert codes[-1] == 201 and two < 1.4 * alone, f"one alone: {alone:.0f} MB; two in one request: {two:.0f}"
            assert client.get("/index?gallery=big&limit=0").json()["count"] == len(bigs)
            assert client.get("/healthz").status_code == 200
    finally:
        stop_server(server)
