"""The search page (GET /) driven end to end in headless Chromium against a real `simsearch serve`.

A real server process is started on a free port with the seeded Hybrid-1 artifact (or the trained
CIFAR-10 one when present) and a temporary data directory; 30 real CIFAR-10 test images are indexed
over HTTP with their labels; then Selenium drives Debian's Chromium through the page like a person:
pick a file, read the result grid, click a result, add images with the API key, upload a non-image.
Screenshots land in test-artifacts/ (git-ignored).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from ._browser import ARTIFACTS, REPO, cifar10_images, make_driver, require_chromium
from .conftest import start_server, stop_server

pytestmark = pytest.mark.browser

API_KEY = "page-test-key"
PER_CLASS = 3          # 3 x 10 classes = 30 gallery images
MAX_BODY_BYTES = 256 * 1024   # small, so that a too-large upload is cheap to make
WAIT = 60              # seconds; the CPU is shared, embedding on it is not instant


# ---- fixtures ----------------------------------------------------------------------------------------

def _artifact(hybrid1_artifact) -> Path:
    trained = REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"
    return trained if trained.exists() else hybrid1_artifact


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, hybrid1_artifact):
    """This module's own `simsearch serve` (the session-wide one of conftest.py is shared with other
    tests, whose images would tie with ours and change the gallery size under the page)."""
    require_chromium()
    work = tmp_path_factory.mktemp("page-server")
    live = start_server({"SIMSEARCH_MODEL_PATH": str(_artifact(hybrid1_artifact)), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_API_KEY": API_KEY, "SIMSEARCH_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}, work)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def gallery(page_server, shared_data):
    """30 CIFAR-10 test images indexed over HTTP, one request per class; {id: (name, label, jpeg)}.
    Ids are paths with a space ("cifar10 test/cat/cat-0001.jpg"), as `simsearch index build` makes
    them, so the page must escape them in its URLs."""
    images = cifar10_images(shared_data, PER_CLASS)
    assert len(images) == 10 * PER_CLASS
    by_label: dict[str, list[tuple[str, str, bytes]]] = {}
    for item in images:
        by_label.setdefault(item[1], []).append(item)
    indexed: dict[str, tuple[str, str, bytes]] = {}
    with httpx.Client(base_url=page_server.url, timeout=120, headers={"X-API-Key": API_KEY}) as client:
        for label, group in by_label.items():
            files = [("file", (name, data, "image/jpeg")) for name, _, data in group]
            ids = [f"cifar10 test/{label}/{name}" for name, _, _ in group]
            metadata = [json.dumps({"n": n}) for n in range(len(group))]
            response = client.post("/index", files=files, data={"label": label, "id": ids, "metadata": metadata})
            assert response.status_code == 201, \
                f"{response.status_code} {response.text}\n{page_server.log_tail()}"
            assert response.json()["ids"] == ids
            indexed.update(zip(ids, group))
    return indexed


@pytest.fixture(scope="module")
def browser(page_server, tmp_path_factory):
    driver = make_driver(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, page_server, gallery):
    """The page freshly loaded, once it has shown the gallery size."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_server.url + "/")
    browser.execute_script("sessionStorage.clear()")   # no API key left over from another test
    browser.get(page_server.url + "/")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element("id", "gallery-count").text not in ("", "…"))
    return browser


# ---- helpers -----------------------------------------------------------------------------------------

def choose_k(driver, k: int) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "k")).select_by_visible_text(str(k))


def wait_for_search(driver, previous: list[str] | None = None) -> None:
    """Until the page shows a finished search (results, or an error in words) different from `previous`."""
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d):
        if d.find_element("id", "search-error").text.strip():
            return True
        if "ok" not in (d.find_element("id", "search-status").get_attribute("class") or ""):
            return False
        return previous is None or result_ids(d) != previous

    WebDriverWait(driver, WAIT).until(done)


def result_ids(driver) -> list[str]:
    return [b.get_attribute("data-id") for b in driver.find_elements("css selector", "#results button.result")]


def result_cards(driver) -> list[dict]:
    """What a person sees on each card: id, score text, label text, and whether the thumbnail loaded."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#results button.result')].map(b => {
          const img = b.querySelector('img');
          return {id: b.dataset.id, score: b.querySelector('.score').firstChild.textContent,
                  label: b.querySelector('.label').textContent, idText: b.querySelector('.id').textContent,
                  alt: img ? img.alt : null,
                  loaded: !!img && img.complete && img.naturalWidth > 0};
        });""")


def wait_for_thumbnails(driver) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll('#results img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete);"))


def gallery_image_file(gallery, i: int, folder: Path) -> tuple[str, str, Path]:
    """Gallery item i written to a file, to upload as a query: (its gallery id, its label, the path)."""
    item_id, (name, label, data) = list(gallery.items())[i]
    path = folder / name
    path.write_bytes(data)
    return item_id, label, path


def upload(driver, path: Path) -> None:
    driver.find_element("css selector", "input#file[type=file]").send_keys(str(path))


def search_gallery_image(driver, gallery, i: int, k: int, folder: Path) -> tuple[str, str, Path]:
    """Gallery item i uploaded as a query with k results, once the page shows the answer:
    gallery_image_file's (id, label, path)."""
    item = gallery_image_file(gallery, i, folder)
    choose_k(driver, k)
    upload(driver, item[2])
    wait_for_search(driver)
    return item


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def api_error_message(page_server, path: str, **kwargs) -> str:
    """The words the service itself gives for a failing request (the page must show exactly these)."""
    response = httpx.post(page_server.url + path, timeout=120, **kwargs)
    assert 400 <= response.status_code < 500, f"{response.status_code} {response.text}"
    return response.json()["error"]["message"]


# ---- tests -------------------------------------------------------------------------------------------

def test_page_shows_gallery_size_and_model(page, page_server, gallery):
    info = httpx.get(page_server.url + "/index", timeout=30).json()
    assert page.find_element("id", "gallery-count").text == str(info["count"])
    assert info["count"] >= len(gallery)
    assert page.find_element("id", "gallery-model").text == str(info["model"])
    # the label fields offer the gallery's labels with their sizes, as GET /facets counts them
    from selenium.webdriver.support.ui import WebDriverWait

    facets = httpx.get(page_server.url + "/facets", params={"field": "label", "limit": 1000}, timeout=30).json()
    want = sorted((v["value"], f'{v["count"]} image{"" if v["count"] == 1 else "s"}') for v in facets["values"])
    options = lambda d: d.execute_script(   # noqa: E731
        "return [...document.querySelectorAll('#known-labels option')].map(o => [o.value, o.textContent]);")
    WebDriverWait(page, WAIT).until(lambda d: len(options(d)) >= len(want))
    assert sorted(map(tuple, options(page))) == want and len(want) >= 10


def test_a_heic_photo_is_searched_from_the_page_though_the_browser_cannot_show_it(page, gallery, tmp_path):
    from PIL import Image

    from ..photo_formats import encode_as, phone_sized

    query_id, label, jpeg = gallery_image_file(gallery, 4, tmp_path)
    photo = phone_sized(Image.open(jpeg))
    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(encode_as(photo, "HEIC"))
    choose_k(page, 4)
    upload(page, heic)
    wait_for_search(page)
    assert page.find_element("id", "search-error").text == ""
    cards = result_cards(page)
    # the gallery holds the 32x32 original, the query was enlarged to 640x480 first: its own copy ranks first
    assert cards[0]["id"] == query_id and cards[0]["label"] == label, cards
    query = page.find_element("id", "query").text
    assert "IMG_0001.HEIC" in query and "(no preview)" in query   # Chromium does not decode HEIC


def test_the_drop_zone_is_reached_by_keyboard_and_labelled(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(page).send_keys(Keys.TAB, Keys.TAB).perform()    # the first stop after the skip link
    focused = page.switch_to.active_element
    assert focused.get_attribute("id") == "file" and focused.get_attribute("type") == "file"
    label = page.execute_script("return arguments[0].labels[0].textContent", focused)
    assert "Choose an image" in label and "drop" in label
    outline = page.execute_script("return getComputedStyle(document.getElementById('drop-zone')).outlineStyle")
    assert outline != "none", "the drop zone shows no focus ring"


def test_uploading_a_gallery_image_shows_k_neighbours_with_its_own_copy_first(page, gallery, tmp_path):
    query_id, label, query = search_gallery_image(page, gallery, 7, 8, tmp_path)
    assert page.find_element("id", "search-error").text == ""
    wait_for_thumbnails(page)
    cards = result_cards(page)
    assert len(cards) == 8, cards
    assert cards[0]["id"] == query_id, f"the query's own gallery copy should rank first: {cards}"
    assert float(cards[0]["score"]) == pytest.approx(1.0, abs=1e-3)
    assert cards[0]["label"] == label
    scores = [float(c["score"]) for c in cards]
    assert scores == sorted(scores, reverse=True)
    assert len({c["id"] for c in cards}) == 8
    for card in cards:
        assert card["id"] in gallery and card["idText"] == card["id"]
        assert card["label"] == gallery[card["id"]][1]
        assert card["loaded"], f"thumbnail of {card['id']} did not load"
        assert card["alt"] and card["id"] in card["alt"]
    assert query.name in page.find_element("id", "query").text
    # the 32x32 query is shown whole and large enough to drag a region on (200x200), not as a 32 px speck
    shown = page.find_element("css selector", "#query-frame img").size
    assert (shown["width"], shown["height"]) == (200, 200), shown
    screenshot(page, "page.png")


def test_dragging_over_part_of_the_query_photo_searches_that_region_and_the_whole_image_comes_back(
        page, gallery, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    from ..photo_formats import made_up_photo

    # A 640x480 "photo": a car from the gallery fills the frame, an airplane of the gallery sits small in
    # its bottom-left corner, at BOX
    car_id = next(i for i in gallery if gallery[i][1] == "automobile")
    plane_id = next(i for i in gallery if gallery[i][1] == "airplane")
    box = (40, 260, 200, 420)
    photo = made_up_photo(gallery[car_id][2], gallery[plane_id][2], box)
    path = tmp_path / "street.jpg"
    photo.save(path, "JPEG", quality=92)
    choose_k(page, 4)
    upload(page, path)
    wait_for_search(page)
    whole = result_ids(page)
    assert whole[0] == car_id, whole
    img = page.find_element("css selector", "#query-frame img")
    w, h = img.size["width"], img.size["height"]
    assert w > 100 and abs(w / h - 640 / 480) < 0.02, (w, h)   # shown whole, not cut to a square
    # drag from the airplane's top-left to its bottom-right (offsets from the picture's centre)
    at = [(box[0] + 2) * w / 640 - w / 2, (box[1] + 2) * h / 480 - h / 2,
          (box[2] - 2) * w / 640 - w / 2, (box[3] - 2) * h / 480 - h / 2]
    ActionChains(page).move_to_element_with_offset(img, at[0], at[1]).click_and_hold() \
        .move_to_element_with_offset(img, (at[0] + at[2]) / 2, (at[1] + at[3]) / 2) \
        .move_to_element_with_offset(img, at[2], at[3]).release().perform()
    wait_for_search(page, previous=whole)
    region = result_ids(page)
    assert region[0] == plane_id, region
    # the region said in words: the airplane's box, 6-31 % across and 54-88 % down, to a pixel of the picture
    assert re.search(r"Searching a region: [67]%–3[01]% across, 5[45]%–8[678]% down", page.find_element("id", "query").text)
    assert page.find_element("id", "crop-box").is_displayed()
    screenshot(page, "page-region.png")
    # a click is not a region: nothing changes
    ActionChains(page).move_to_element_with_offset(img, 0, 0).click().perform()
    assert result_ids(page) == region and page.find_element("id", "crop-box").is_displayed()
    page.find_element("id", "whole-image").click()
    wait_for_search(page, previous=region)
    assert result_ids(page) == whole
    assert not page.find_element("id", "crop-box").is_displayed()
    assert not page.find_element("id", "whole-image").is_displayed()
    # the same from the keyboard: Enter shows the middle half, Shift+arrows resize it, arrows move it
    from selenium.webdriver.common.keys import Keys

    frame = page.find_element("id", "query-frame")
    frame.send_keys(Keys.ENTER)
    assert "Region 25%–75% across, 25%–75% down" in page.find_element("id", "crop-hint").text
    assert result_ids(page) == whole   # shown, not searched yet
    ActionChains(page).key_down(Keys.SHIFT).send_keys(Keys.ARROW_LEFT * 5 + Keys.ARROW_UP * 4).key_up(Keys.SHIFT) \
        .send_keys(Keys.ARROW_LEFT * 4 + Keys.ARROW_DOWN * 6).perform()
    assert "Region 5%–30% across, 55%–85% down" in page.find_element("id", "crop-hint").text
    frame.send_keys(Keys.ENTER)
    wait_for_search(page, previous=whole)
    assert result_ids(page)[0] == plane_id
    assert "Searching a region: 5%–30% across, 55%–85% down" in page.find_element("id", "crop-hint").text


def test_clicking_a_result_searches_from_that_gallery_image(page, gallery, tmp_path):
    _, _, query = search_gallery_image(page, gallery, 12, 4, tmp_path)
    before = result_ids(page)
    assert len(before) == 4
    clicked = before[1]
    page.find_element("css selector", f'#results button.result[data-id="{clicked}"]').click()
    wait_for_search(page, previous=before)
    assert page.find_element("id", "search-error").text == ""
    after = result_ids(page)
    assert len(after) == 4 and after != before
    assert clicked not in after, "a search from a gallery item excludes the item itself"
    assert clicked in page.find_element("id", "query").text
    wait_for_thumbnails(page)
    assert all(c["loaded"] for c in result_cards(page))


def _mark(driver, item_id: str, mark: str) -> None:
    card = f'#results li:has(button.result[data-id="{item_id}"])'
    driver.find_element("css selector", f"{card} .marks button.{mark}").click()


def _marked(driver) -> dict[str, str]:
    """The cards whose More (like) or Less (unlike) button is pressed."""
    return driver.execute_script("""
        const out = {};
        for (const li of document.querySelectorAll('#results li')) {
          const b = li.querySelector('button.result'), on = li.querySelector('.marks button[aria-pressed=true]');
          if (b && on) out[b.dataset.id] = on.classList.contains('like') ? 'like' : 'unlike';
        }
        return out;""")


def _api_ids(page_server, path: str, marks: dict[str, str], files=None, exclude=()) -> list[str]:
    """The ids the API itself answers for this search with these marks, these ids left out (the page must
    show exactly these)."""
    params = [("k", "8"), ("vote", "true")] + [(mark, i) for i, mark in marks.items()] + \
        [("exclude", i) for i in exclude]
    r = httpx.post(page_server.url + path, params=params, files=files, timeout=120)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_marking_results_more_or_less_like_and_searching_again_moves_the_query(page, page_server, gallery, tmp_path):
    own, label, query = search_gallery_image(page, gallery, 4, 8, tmp_path)
    cards = result_cards(page)
    feedback = page.find_element("id", "feedback")
    assert not feedback.is_displayed()
    marks = {c["id"]: "like" if c["label"] == label else "unlike" for c in cards}
    for item_id, mark in marks.items():
        _mark(page, item_id, mark)
    _mark(page, cards[-1]["id"], "unlike")   # pressed twice: unmarked
    marks.pop(cards[-1]["id"])
    assert _marked(page) == marks
    liked = sum(m == "like" for m in marks.values())
    assert feedback.is_displayed()
    assert page.find_element("id", "feedback-text").text == \
        f"Marked: {liked} more like this, {len(marks) - liked} less like this."
    before = result_ids(page)
    page.find_element("id", "feedback-search").click()
    wait_for_search(page, previous=before)
    assert page.find_element("id", "search-error").text == ""
    after = result_ids(page)
    files = [("file", (query.name, query.read_bytes(), "image/jpeg"))]
    # what was shown and left unmarked is left out too (exclude=): the page shows new images
    assert after == _api_ids(page_server, "/search", marks, files, exclude=[cards[-1]["id"]])
    assert not set(after) & {c["id"] for c in cards}, "nothing shown before is shown again"
    screenshot(page, "page-marks.png")
    # marks add up over rounds, and clearing them brings back the plain search
    marks[after[0]] = "unlike"
    _mark(page, after[0], "unlike")
    page.find_element("id", "feedback-search").click()
    wait_for_search(page, previous=after)
    assert result_ids(page) == _api_ids(page_server, "/search", marks, files, exclude=[cards[-1]["id"], *after[1:]])
    before = result_ids(page)
    page.find_element("id", "feedback-clear").click()
    wait_for_search(page, previous=before)
    assert result_ids(page)[0] == own and not feedback.is_displayed()
    # a search from a result card starts with no marks (those of the last query go), and its marks refine
    # that item's neighbours
    start = result_ids(page)[1]
    _mark(page, result_ids(page)[2], "like")
    page.find_element("css selector", f'#results button.result[data-id="{start}"]').click()
    wait_for_search(page, previous=before)
    assert not feedback.is_displayed() and _marked(page) == {}
    first = result_ids(page)
    _mark(page, first[0], "like")
    page.find_element("id", "feedback-search").click()
    wait_for_search(page, previous=first)
    assert result_ids(page) == _api_ids(page_server, f"/search/{quote(start, safe='')}", {first[0]: "like"},
                                        exclude=first[1:])


def _status(page) -> str:
    return page.find_element("id", "search-status").text


def _wait_status(page, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(page, WAIT).until(lambda d: _status(d) == text or d.find_element("id", "search-error").text.strip())
    except Exception as e:
        raise AssertionError(f"waited for {text!r}; the status says {_status(page)!r}, the error "
                             f"{page.find_element('id', 'search-error').text!r}") from e
    assert page.find_element("id", "search-error").text == "" and _status(page) == text


def test_browsing_the_gallery_lists_it_page_by_page_and_its_cards_edit_and_delete_items(page, page_server, shared_data):
    from selenium.webdriver.support.ui import WebDriverWait

    extra = cifar10_images(shared_data, 1, split="train")[:2]
    ids = ["browse/a.jpg", "browse/b.jpg"]
    key = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=page_server.url, timeout=120) as client:
        r = client.post("/index", files=[("file", (n, d, "image/jpeg")) for n, _, d in extra],
                        data={"id": ids, "label": "temp"}, headers=key)
        assert r.status_code == 201, r.text
        try:
            _open_add_panel(page)
            page.find_element("id", "api-key").send_keys(API_KEY)   # writes from a card carry it, as adding does
            count = client.get("/index").json()["count"]
            choose_k(page, 8)
            page.find_element("id", "browse").click()
            _wait_status(page, f"8 of {count} items")
            listing = client.get("/index", params={"limit": 16}).json()["items"]
            assert result_ids(page) == [it["id"] for it in listing[:8]]
            assert page.find_elements("css selector", "#results .score") == []   # listed, not scored
            page.find_element("id", "browse-more").click()
            _wait_status(page, f"16 of {count} items")
            assert result_ids(page) == [it["id"] for it in listing]
            # the filters apply to the listing
            page.find_element("id", "label-filter").send_keys("temp")
            page.find_element("id", "browse").click()
            _wait_status(page, "2 of 2 items matching the filters")
            assert result_ids(page) == ids and not page.find_element("id", "browse-more").is_displayed()
            # a card's label edited (PATCH) ...
            card = f'#results li:has(button.result[data-id="{ids[0]}"])'
            page.find_element("css selector", f"{card} .edit-open").click()
            field = page.find_element("css selector", f"{card} .edit input")
            field.clear()
            field.send_keys("renamed")
            page.find_element("css selector", f"{card} .edit button:not(.danger)").click()
            _wait_status(page, f"Saved: {ids[0]} is now labelled renamed.")
            assert client.get(f"/index/{ids[0]}").json()["label"] == "renamed"
            assert page.find_element("css selector", f"{card} .label").text == "renamed"
            # ... its metadata too: a key added, one changed, one removed; the page sends the merge patch
            box = page.find_element("css selector", f"{card} .edit textarea")
            assert json.loads(box.get_attribute("value")) == {}
            box.clear()
            box.send_keys('{"album": "x", "keep": [1, 2]}')
            page.find_element("css selector", f"{card} .edit button:not(.danger)").click()
            _wait_status(page, f'Saved: {ids[0]} is now labelled renamed. Its metadata: {{"album":"x","keep":[1,2]}}.')
            assert client.get(f"/index/{ids[0]}").json()["metadata"] == {"album": "x", "keep": [1, 2]}
            box.clear()
            box.send_keys('{"keep": [1, 2], "stars": 5}')
            page.find_element("css selector", f"{card} .edit button:not(.danger)").click()
            _wait_status(page, f'Saved: {ids[0]} is now labelled renamed. Its metadata: {{"keep":[1,2],"stars":5}}.')
            assert client.get(f"/index/{ids[0]}").json()["metadata"] == {"keep": [1, 2], "stars": 5}
            box.clear()
            box.send_keys('["not", "an object"]')
            page.find_element("css selector", f"{card} .edit button:not(.danger)").click()
            assert page.find_element("id", "search-error").text == \
                f'The metadata of {ids[0]} must be a JSON object, such as {{"album": "trip"}}: got ["not","an object"]'
            assert client.get(f"/index/{ids[0]}").json()["metadata"] == {"keep": [1, 2], "stars": 5}
            screenshot(page, "page-browse.png")
            # ... and another deleted, asked twice
            card = f'#results li:has(button.result[data-id="{ids[1]}"])'
            page.find_element("css selector", f"{card} .edit-open").click()
            delete = page.find_element("css selector", f"{card} .edit button.danger")
            delete.click()
            assert delete.text == "Really delete?" and client.get(f"/index/{ids[1]}").status_code == 200
            delete.click()
            _wait_status(page, f"Deleted {ids[1]}.")
            assert client.get(f"/index/{ids[1]}").status_code == 404 and result_ids(page) == [ids[0]]
            WebDriverWait(page, WAIT).until(lambda d: d.find_element("id", "gallery-count").text == str(count - 1))
            # marks on listed cards are a query of their own: the liked images alone
            page.find_element("id", "label-filter").clear()
            page.find_element("id", "browse").click()
            _wait_status(page, f"8 of {count - 1} items")
            listed = result_ids(page)
            _mark(page, listed[0], "like")
            _mark(page, listed[1], "like")
            page.find_element("id", "feedback-search").click()
            wait_for_search(page, previous=listed)
            assert page.find_element("id", "search-error").text == ""
            assert result_ids(page) == _api_ids(page_server, "/search", {listed[0]: "like", listed[1]: "like"})
            assert "marked More like this" in page.find_element("id", "query").text
            # with no query but the marks, clearing them goes back to the listing
            page.find_element("id", "feedback-clear").click()
            _wait_status(page, f"8 of {count - 1} items")
            assert result_ids(page) == listed
        finally:
            client.delete(f"/index/{ids[0]}", headers=key)
            client.delete(f"/index/{ids[1]}", headers=key)


def test_find_copies_shows_each_pair_of_look_alikes_and_a_copy_is_deleted_from_its_card(page, page_server, gallery):
    import io

    from PIL import Image

    from selenium.webdriver.support.ui import WebDriverWait

    key = {"X-API-Key": API_KEY}
    originals = list(gallery.items())[:2]   # (id, (name, label, jpeg))
    copies = {}
    for n, (item_id, (_, label, data)) in enumerate(originals):
        out = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=75)   # saved again, as a messenger would
        copies[f"copies/{n}.jpg"] = (out.getvalue(), label if n == 0 else "not-" + label)
    with httpx.Client(base_url=page_server.url, timeout=120) as client:
        r = client.post("/index", files=[("file", (i, d, "image/jpeg")) for i, (d, _) in copies.items()],
                        data={"id": list(copies), "label": [lb for _, lb in copies.values()]}, headers=key)
        assert r.status_code == 201, r.text
        try:
            # without the key (a scan of the whole gallery takes it, as writes do) the service's words are shown
            page.find_element("id", "find-copies").click()
            WebDriverWait(page, WAIT).until(lambda d: d.find_element("id", "search-error").text.strip())
            assert page.find_element("id", "search-error").text == \
                client.get("/duplicates").json()["error"]["message"]
            _open_add_panel(page)
            page.find_element("id", "api-key").send_keys(API_KEY)
            want = client.get("/duplicates", params={"min_score": 0.98, "limit": 200}, headers=key).json()
            assert want["pairs_found"] >= 2
            page.find_element("id", "find-copies").click()
            _wait_status(page, f"{want['pairs_found']} pairs among {want['items']} images, "
                               f"{want['labels_differ']} with different labels")
            heads = [h.text for h in page.find_elements("css selector", "#results li.pair .pair-head")]
            assert len(heads) == want["pairs_found"]
            for i, (head, pair) in enumerate(zip(heads, want["pairs"])):
                assert head.startswith(f"Pair {i + 1}: cosine {pair['score']:.3f}")
                assert ("labels differ" in head) == pair["labels_differ"]
            assert result_ids(page) == [i for p in want["pairs"] for i in (p["a"], p["b"])]
            differ = [p for p in want["pairs"] if "copies/1.jpg" in (p["a"], p["b"])]
            assert differ and differ[0]["labels_differ"]
            # the copy filed under another label, deleted from its card
            card = '#results li:has(> button.result[data-id="copies/1.jpg"])'
            page.find_element("css selector", f"{card} .edit-open").click()
            delete = page.find_element("css selector", f"{card} .edit button.danger")
            delete.click()
            delete.click()
            WebDriverWait(page, WAIT).until(lambda d: _status(d).startswith("Deleted "))
            left = client.get("/duplicates", params={"min_score": 0.98, "limit": 200}, headers=key).json()
            _wait_status(page, f"Deleted copies/1.jpg. {left['pairs_found']} pair{'' if left['pairs_found'] == 1 else 's'} "
                               f"among {left['items']} images, {left['labels_differ']} with different labels.")
            assert client.get("/index/copies/1.jpg").status_code == 404
            WebDriverWait(page, WAIT).until(lambda d: "copies/1.jpg" not in result_ids(d))
            screenshot(page, "page-copies.png")
        finally:
            for i in copies:
                client.delete(f"/index/{i}", headers=key)


def _majority(labels: list[str]) -> tuple[str, int]:
    """The label most cards have, a tie going to the nearest (POST /classify's rule), and its count."""
    counts = {label: labels.count(label) for label in labels}
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best), best


def test_the_label_most_neighbours_have_is_shown_above_them_and_not_under_a_label_filter(page, gallery, tmp_path):
    _, _, query = search_gallery_image(page, gallery, 7, 8, tmp_path)
    cards = result_cards(page)
    label, n = _majority([c["label"] for c in cards])
    vote = page.find_element("id", "vote")
    assert vote.is_displayed()
    assert vote.text == f"Most neighbours are labelled {label} ({n} of 8 labelled neighbours)"
    before = result_ids(page)
    page.find_element("css selector", f'#results button.result[data-id="{before[2]}"]').click()
    wait_for_search(page, previous=before)
    label, n = _majority([c["label"] for c in result_cards(page)])   # the new neighbours' vote
    assert vote.text == f"Most neighbours are labelled {label} ({n} of 8 labelled neighbours)"
    page.find_element("id", "label-filter").send_keys("ship")
    before = result_ids(page)
    upload(page, query)
    wait_for_search(page, previous=before)
    assert {c["label"] for c in result_cards(page)} == {"ship"} and not vote.is_displayed()


def test_label_filter_limits_results_to_that_label(page, gallery, tmp_path):
    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    choose_k(page, 4)
    page.find_element("id", "label-filter").send_keys("ship")
    upload(page, query)
    wait_for_search(page)
    cards = result_cards(page)
    assert len(cards) == PER_CLASS          # only 3 ships in the gallery, fewer than k
    assert {c["label"] for c in cards} == {"ship"}


def test_metadata_filter_limits_results_and_a_bad_one_is_explained(page, page_server, gallery, tmp_path):
    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    choose_k(page, 12)
    page.find_element("id", "where-filter").send_keys('{"n": 1}')
    upload(page, query)
    wait_for_search(page)
    assert page.find_element("id", "search-error").text == ""
    by_label: dict[str, list[str]] = {}
    for item_id, (_, label, _) in gallery.items():  # in the order indexed, so n is the place in the list
        by_label.setdefault(label, []).append(item_id)
    want = {ids[1] for ids in by_label.values()}
    assert set(result_ids(page)) == want and len(want) == 10   # one per class: the second indexed
    page.find_element("id", "where-filter").clear()
    page.find_element("id", "where-filter").send_keys('{"n": [1]}')
    expected = api_error_message(page_server, "/search?where=" + quote('{"n": [1]}'),
                                 files={"file": ("q.jpg", query.read_bytes(), "image/jpeg")})
    upload(page, query)
    wait_for_search(page)
    assert page.find_element("id", "search-error").text == expected and "'n'" in expected


def test_one_result_per_label_or_metadata_value_shows_the_services_groups_and_a_bad_key_its_error(
        page, page_server, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    files = {"file": ("q.jpg", query.read_bytes(), "image/jpeg")}

    def api_groups(params: str) -> list[tuple]:
        r = httpx.post(f"{page_server.url}/search?{params}", files=files, timeout=120)
        assert r.status_code == 200, r.text
        return [(g["value"], [h["id"] for h in g["results"]]) for g in r.json()["groups"]]

    choose_k(page, 4)
    page.find_element("id", "group-by").send_keys("label")
    upload(page, query)
    wait_for_search(page)
    want = api_groups("k=4&group_by=label")
    assert result_ids(page) == [ids[0] for _, ids in want] and len({c["label"] for c in result_cards(page)}) == 4
    # two a group: asked again at once, each group on a row of its own under its label
    before = result_ids(page)
    Select(page.find_element("id", "group-size")).select_by_visible_text("2")
    wait_for_search(page, previous=before)
    rows = page.execute_script("""return [...document.querySelectorAll('#results li.group')].map(g => [
        g.querySelector('.group-head').textContent,
        [...g.querySelectorAll('button.result')].map(b => b.dataset.id)]);""")
    assert rows == [[f"label: {value}", ids] for value, ids in api_groups("k=4&group_by=label&group_size=2")]
    # one per metadata value: the cards say which
    before = result_ids(page)
    Select(page.find_element("id", "group-size")).select_by_visible_text("1")
    wait_for_search(page, previous=before)
    box = page.find_element("id", "group-by")
    # typed over the old value (not cleared first: WebDriver's clear fires `change`, a search of its own,
    # which would race the one below)
    before = result_ids(page)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("metadata.n", Keys.TAB)
    wait_for_search(page, previous=before)
    want = api_groups("k=4&group_by=metadata.n")
    assert len(want) == PER_CLASS and result_ids(page) == [ids[0] for _, ids in want]
    captions = [e.text for e in page.find_elements("css selector", "#results button.result .group")]
    assert captions == [f"n: {value}" for value, _ in want]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("year", Keys.TAB)
    wait_for_search(page)
    expected = api_error_message(page_server, "/search?group_by=year", files=files)
    assert page.find_element("id", "search-error").text == expected and "metadata.KEY" in expected
    # a key no item has: the empty list says so, in the service's words, not "is the gallery empty?"
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("metadata.nope", Keys.TAB)
    WebDriverWait(page, 30).until(lambda d: d.find_elements("css selector", "#results li.empty"))
    empty = page.find_element("css selector", "#results li.empty").text
    assert empty.startswith("No groups: no item found has a value for metadata.nope"), empty


def test_show_more_results_adds_the_next_page_of_the_same_search_until_it_runs_out(page, page_server, gallery,
                                                                                  tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    files = {"file": ("q.jpg", query.read_bytes(), "image/jpeg")}

    def api(params: str) -> dict:
        r = httpx.post(f"{page_server.url}/search?{params}", files=files, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()

    def more(count: int) -> None:
        page.find_element("id", "search-more").click()
        WebDriverWait(page, WAIT).until(lambda d: len(result_ids(d)) == count
                                        and d.find_element("id", "search-more").is_enabled())

    choose_k(page, 8)
    upload(page, query)
    wait_for_search(page)
    assert page.find_element("id", "search-more").is_displayed()
    more(16)
    assert result_ids(page) == [h["id"] for h in api("k=16")["results"]]
    ranks = page.execute_script("return [...document.querySelectorAll('#results button.result')]"
                                ".map(b => b.getAttribute('aria-label').split(':')[0]);")
    assert ranks == [f"Result {n}" for n in range(1, 17)]   # the ranks go on from the first page
    # counted as the first page is, with the time the service took for both pages
    assert re.fullmatch(r"16 results in \d+\.\d ms", page.find_element("id", "search-status").text)
    more(24)
    more(30)   # the gallery's 30: the last page is short, and no more is offered
    assert result_ids(page) == [h["id"] for h in api("k=30")["results"]]
    assert not page.find_element("id", "search-more").is_displayed()
    # two per label: the next page is the next labels (leaving the field, or choosing, searches again at once)
    choose_k(page, 4)
    before = result_ids(page)
    page.find_element("id", "group-by").send_keys("label", Keys.TAB)
    wait_for_search(page, previous=before)
    before = result_ids(page)
    Select(page.find_element("id", "group-size")).select_by_visible_text("2")
    wait_for_search(page, previous=before)
    more(16)
    rows = page.execute_script("""return [...document.querySelectorAll('#results li.group')].map(g => [
        g.querySelector('.group-head').textContent,
        [...g.querySelectorAll('button.result')].map(b => b.dataset.id)]);""")
    assert rows == [[f"label: {g['value']}", [h["id"] for h in g["results"]]]
                    for g in api("k=8&group_by=label&group_size=2")["groups"]]
    assert re.fullmatch(r"16 results in \d+\.\d ms", page.find_element("id", "search-status").text)
    more(20)   # 10 labels in all
    assert not page.find_element("id", "search-more").is_displayed()


def test_several_photos_picked_at_once_search_together_as_the_service_answers_them(page, page_server, gallery,
                                                                                  shared_data, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    cats = [(n, d) for n, label, d in cifar10_images(shared_data, 3, split="train") if label == "cat"]
    paths = []
    for name, data in cats:   # training images: not in the gallery
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    files = [("file", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]

    def api(params: str) -> list[str]:
        r = httpx.post(f"{page_server.url}/search?{params}", files=files, timeout=120)
        assert r.status_code == 200, r.text
        return [h["id"] for h in r.json()["results"]]

    choose_k(page, 8)
    page.find_element("css selector", "input#file[type=file]").send_keys("\n".join(str(p) for p in paths))
    wait_for_search(page)
    assert result_ids(page) == api("k=8")
    assert page.find_element("id", "query-caption").text.startswith("Query: 3 photos together")
    alts = [img.get_attribute("alt") for img in page.find_elements("css selector", "#query .query-photos img")]
    assert alts == [f"Query image {i + 1} of 3: {p.name}" for i, p in enumerate(paths)]
    assert not page.find_elements("id", "query-frame")   # no region to drag: that is for one photo
    # the next page is the same three photos' next page
    page.find_element("id", "search-more").click()
    WebDriverWait(page, WAIT).until(lambda d: len(result_ids(d)) == 16)
    assert result_ids(page) == api("k=16")
    # near any of them: each photo searched, every item at its best score (combine=best), asked again at once
    before = result_ids(page)
    Select(page.find_element("id", "combine")).select_by_value("best")
    wait_for_search(page, previous=before)
    assert result_ids(page) == api("k=8&combine=best")
    # one photo again: its own answer, and a region can be chosen
    before = result_ids(page)
    upload(page, paths[0])
    wait_for_search(page, previous=before)
    assert result_ids(page) == [h["id"] for h in httpx.post(f"{page_server.url}/search?k=8", files=files[:1],
                                                             timeout=120).json()["results"]]
    assert page.find_elements("id", "query-frame")


def test_an_empty_answer_under_a_filter_says_whether_anything_matches(page, gallery, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, query = gallery_image_file(gallery, 0, tmp_path)  # its own copy in the gallery has n = 0
    for where, max_distance, words in (('{"n": {"$gt": 99}}', "", "No item in the gallery matches the filters (of 30"),
                                       ('{"n": {"$gte": 1}}', "0.0001", "20 items match the filters, but none within")):
        page.find_element("id", "where-filter").clear()
        page.find_element("id", "where-filter").send_keys(where)
        page.find_element("id", "max-distance").clear()
        page.find_element("id", "max-distance").send_keys(max_distance)
        upload(page, query)
        wait_for_search(page)
        WebDriverWait(page, 10).until(lambda d: words in d.find_element("id", "results").text,
                                      f"{words!r} not shown: {page.find_element('id', 'results').text!r}")
        assert result_cards(page) == []


def test_a_non_image_upload_shows_the_services_error_in_words(page, page_server, gallery, tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not an image, just some words\n")
    expected = api_error_message(page_server, "/search",
                                 files={"file": ("notes.txt", bogus.read_bytes(), "text/plain")})
    upload(page, bogus)
    wait_for_search(page)
    shown = page.find_element("id", "search-error").text
    assert shown == expected
    assert len(shown.split()) >= 3 and "HTTP" not in shown
    assert page.find_element("id", "search-error").get_attribute("role") == "alert"
    assert result_ids(page) == []
    screenshot(page, "page-error.png")


def test_a_too_large_upload_shows_the_services_error_in_words(page, page_server, gallery, tmp_path):
    import numpy as np
    from PIL import Image

    big = tmp_path / "noise.png"   # a real image, but random pixels do not compress: ~470 KB
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > MAX_BODY_BYTES
    expected = api_error_message(page_server, "/search",
                                 files={"file": ("noise.png", big.read_bytes(), "image/png")})
    upload(page, big)
    wait_for_search(page)
    shown = page.find_element("id", "search-error").text
    # The message names the request's size, which differs by the multipart boundary: compare the rest.
    assert re.sub(r"\d+", "N", shown) == re.sub(r"\d+", "N", expected)
    assert str(MAX_BODY_BYTES) in shown
    assert result_ids(page) == []


def _open_add_panel(page):
    panel = page.find_element("id", "add-panel")
    if not panel.get_attribute("open"):
        page.find_element("css selector", "#add-panel summary").click()


def _wait_add(page):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(page, WAIT).until(lambda d: d.find_element("id", "add-error").text.strip()
                                    or "ok" in (d.find_element("id", "add-status").get_attribute("class") or ""))


def test_adding_images_with_a_wrong_key_shows_the_error_and_adds_nothing(page, page_server, shared_data,
                                                                       tmp_path):
    (name, _, data), = cifar10_images(shared_data, 1, skip=PER_CLASS)[:1]
    image = tmp_path / name
    image.write_bytes(data)
    expected = api_error_message(page_server, "/index", files={"file": (name, data, "image/jpeg")},
                                 headers={"X-API-Key": "wrong-key"})
    count_before = httpx.get(page_server.url + "/index", timeout=30).json()["count"]
    _open_add_panel(page)
    key = page.find_element("id", "api-key")
    key.clear()
    key.send_keys("wrong-key")
    page.find_element("id", "add-files").send_keys(str(image))
    page.find_element("id", "add-submit").click()
    _wait_add(page)
    assert page.find_element("id", "add-error").text == expected
    assert httpx.get(page_server.url + "/index", timeout=30).json()["count"] == count_before


def test_adding_images_with_the_api_key_grows_the_gallery(page, page_server, shared_data, tmp_path):
    extra = cifar10_images(shared_data, 1, skip=PER_CLASS + 1)[:2]
    paths = []
    for name, _, data in extra:
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    count_before = httpx.get(page_server.url + "/index", timeout=30).json()["count"]
    assert page.find_element("id", "gallery-count").text == str(count_before)
    _open_add_panel(page)
    key = page.find_element("id", "api-key")
    key.clear()
    key.send_keys(API_KEY)
    page.find_element("id", "add-label").send_keys("newcomer")
    page.find_element("id", "add-files").send_keys("\n".join(str(p) for p in paths))
    page.find_element("id", "add-submit").click()
    _wait_add(page)
    assert page.find_element("id", "add-error").text == ""
    assert "Added 2 images" in page.find_element("id", "add-status").text
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(page, WAIT).until(
        lambda d: d.find_element("id", "gallery-count").text == str(count_before + 2))
    assert httpx.get(page_server.url + "/index", timeout=30).json()["count"] == count_before + 2
    # The key is kept for this tab (sessionStorage), so a reload still has it.
    assert page.execute_script("return sessionStorage.getItem('simsearch.apiKey')") == API_KEY
    page.refresh()
    _open_add_panel(page)
    assert page.find_element("id", "api-key").get_attribute("value") == API_KEY


def test_adding_with_copies_left_out_stores_the_new_image_and_names_the_copy(page, page_server, gallery, shared_data,
                                                                           tmp_path):
    import io

    from PIL import Image

    original_id, (_, _, original) = next(iter(gallery.items()))
    again = io.BytesIO()
    Image.open(io.BytesIO(original)).save(again, "JPEG", quality=75)   # the same picture, saved again
    (tmp_path / "copy.jpg").write_bytes(again.getvalue())
    name, _, data = cifar10_images(shared_data, 1, skip=PER_CLASS + 2)[0]
    (tmp_path / "new.jpg").write_bytes(data)
    count_before = httpx.get(page_server.url + "/index", timeout=30).json()["count"]
    _open_add_panel(page)
    key = page.find_element("id", "api-key")
    key.clear()
    key.send_keys(API_KEY)
    page.find_element("id", "add-skip").click()
    page.find_element("id", "add-files").send_keys(f"{tmp_path / 'copy.jpg'}\n{tmp_path / 'new.jpg'}")
    page.find_element("id", "add-submit").click()
    _wait_add(page)
    status = page.find_element("id", "add-status").text
    assert page.find_element("id", "add-error").text == ""
    assert status.startswith("Added 1 image: ") and f"Left out 1 copy: copy.jpg (like {original_id})." in status
    assert httpx.get(page_server.url + "/index", timeout=30).json()["count"] == count_before + 1
    page.find_element("id", "add-skip").click()   # as the other tests expect it
    assert not page.find_element("id", "add-skip").is_selected()


def test_a_gallery_without_thumbnails_still_shows_score_label_and_id(browser, hybrid1_artifact, shared_data,
                                                                      tmp_path_factory, tmp_path):
    """SIMSEARCH_THUMBNAIL_SIZE=0 (a gallery that must not store images): the cards say so in words."""
    work = tmp_path_factory.mktemp("page-server-no-thumbs")
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_THUMBNAIL_SIZE": "0"}, work)
    try:
        images = cifar10_images(shared_data, 1)[:5]
        response = httpx.post(live.url + "/index", timeout=120,
                              files=[("file", (name, data, "image/jpeg")) for name, _, data in images])
        assert response.status_code == 201, response.text
        ids = response.json()["ids"]
        assert httpx.get(f"{live.url}/index/{ids[0]}/thumbnail", timeout=30).status_code == 404
        query = tmp_path / images[0][0]
        query.write_bytes(images[0][2])
        browser.get(live.url + "/")
        choose_k(browser, 4)
        upload(browser, query)
        wait_for_search(browser)
        assert browser.find_element("id", "search-error").text == ""
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, WAIT).until(
            lambda d: len(d.find_elements("css selector", "#results .no-thumb")) == 4)
        cards = browser.find_elements("css selector", "#results button.result")
        assert [c.get_attribute("data-id") for c in cards][0] == ids[0]
        for card in cards:
            assert card.find_element("css selector", ".no-thumb").text == "no thumbnail stored"
            assert card.find_element("css selector", ".score").text
            assert card.find_element("css selector", ".id").get_attribute("textContent") in ids
    finally:
        stop_server(live)


def test_a_failure_of_the_service_is_shown_in_its_words_with_the_request_id_to_quote(hybrid1_artifact, small_disk,
                                                                                     tmp_path):
    """A 5xx (here a real full disk, tests/conftest.py's small_disk: 507) is shown as the service words
    it, followed by the request's id, which is on the service's access log line of that request."""
    import numpy as np
    from selenium.webdriver.support.ui import WebDriverWait

    from ..conftest import noise_png
    from .test_disk_full import fill_until_refused

    require_chromium()
    mount, inside = small_disk
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(mount / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path, ["--log-level", "info"], prefix=inside)
    driver = make_driver(tmp_path / "profile")
    try:
        rng = np.random.default_rng(11)
        with httpx.Client(base_url=live.url, timeout=60) as c:
            _, _, refused = fill_until_refused(c, rng, [])
        assert refused.status_code == 507, refused.text
        expected = refused.json()["error"]["message"]
        image = tmp_path / "one-more.png"
        image.write_bytes(noise_png(rng))
        driver.get(live.url + "/")
        WebDriverWait(driver, WAIT).until(lambda d: d.find_element("id", "gallery-count").text not in ("", "…"))
        _open_add_panel(driver)
        driver.find_element("id", "add-files").send_keys(str(image))
        driver.find_element("id", "add-submit").click()
        _wait_add(driver)
        shown = driver.find_element("id", "add-error").text
        found = re.fullmatch(re.escape(expected) + r" \(request id ([0-9a-f]{32})\)", shown)
        assert found, shown
        WebDriverWait(driver, WAIT).until(lambda d: f"request_id={found[1]}" in live.log.read_text())
        line = next(ln for ln in live.log.read_text().splitlines() if ln.endswith(f"request_id={found[1]}"))
        assert '"POST /index HTTP/1.1" 507' in line
    finally:
        driver.quit()
        stop_server(live)


def test_a_read_only_replica_serves_the_page_without_the_add_form(page, page_server, gallery, tmp_path,
                                                                   hybrid1_artifact):
    from selenium.webdriver.support.ui import WebDriverWait

    # a read-only process on the page server's own gallery (its data folder is beside its log)
    replica = start_server({"SIMSEARCH_MODEL_PATH": str(_artifact(hybrid1_artifact)),
                            "SIMSEARCH_DATA_DIR": str(page_server.log.parent / "data"), "SIMSEARCH_READ_ONLY": "true"},
                           tmp_path, log_name="replica.log")
    try:
        assert page.find_element("id", "add-panel").is_displayed()   # the writer's page has it
        count = httpx.get(page_server.url + "/index", timeout=30).json()["count"]
        page.get(replica.url + "/")
        WebDriverWait(page, WAIT).until(lambda d: d.find_element("id", "gallery-count").text == str(count))
        assert not page.find_element("id", "add-panel").is_displayed()
        query_id, _, query = gallery_image_file(gallery, 4, tmp_path)
        upload(page, query)
        wait_for_search(page)
        assert page.find_element("id", "search-error").text == "" and result_ids(page)[0] == query_id
        assert page.find_elements("css selector", "#results .edit-open") == []   # no Edit on a replica's cards
        assert page.find_elements("css selector", "#results .marks button.like")   # marks still
    finally:
        stop_server(replica)


def test_searches_after_adding_send_the_gallery_position_and_a_replaced_gallery_does_not_break_them(
        hybrid1_artifact, shared_data, tmp_path_factory, tmp_path):
    """Behind a gateway that shares searches among replicas, the page's searches carry the position of
    what it has added (X-Simsearch-After), so they find it; and a position from a gallery since replaced
    (the service restarted on another folder, same address) is dropped, not shown as an error."""
    from selenium.webdriver.support.ui import WebDriverWait

    from ._browser import sent_requests

    require_chromium()
    env = {"SIMSEARCH_MODEL_PATH": str(_artifact(hybrid1_artifact)), "SIMSEARCH_API_KEY": API_KEY}
    first = start_server({**env, "SIMSEARCH_DATA_DIR": str(tmp_path / "first")}, tmp_path, log_name="first.log")
    driver = make_driver(tmp_path_factory.mktemp("chromium-network"), network_log=True)
    second = None
    try:
        name, _, data = cifar10_images(shared_data, 1)[0]
        (tmp_path / name).write_bytes(data)
        driver.get(first.url + "/")
        WebDriverWait(driver, WAIT).until(lambda d: d.find_element("id", "gallery-count").text == "0")
        _open_add_panel(driver)
        driver.find_element("id", "api-key").send_keys(API_KEY)
        driver.find_element("id", "add-files").send_keys(str(tmp_path / name))
        sent_requests(driver)
        driver.find_element("id", "add-submit").click()
        _wait_add(driver)
        assert "Added 1 image" in driver.find_element("id", "add-status").text
        upload(driver, tmp_path / name)
        wait_for_search(driver)
        assert driver.find_element("id", "search-error").text == "" and len(result_ids(driver)) == 1
        searches = [r for r in sent_requests(driver) if r["method"] == "POST" and "/search?" in r["url"]]
        assert searches and all(r["headers"].get("X-Simsearch-After") == "1.0" for r in searches), searches

        # the same address, another gallery: position 0.0 there, so 1.0 is ahead of it (409)
        stop_server(first)
        second = start_server({**env, "SIMSEARCH_DATA_DIR": str(tmp_path / "second")}, tmp_path,
                              log_name="second.log", port=first.port)
        upload(driver, tmp_path / name)
        WebDriverWait(driver, WAIT).until(lambda d: "No neighbours found" in d.find_element("id", "results").text
                                          or d.find_element("id", "search-error").text)
        assert driver.find_element("id", "search-error").text == ""
        sent = [r for r in sent_requests(driver) if r["method"] == "POST" and "/search?" in r["url"]]
        assert [r["headers"].get("X-Simsearch-After") for r in sent] == ["1.0", None]   # refused once, then asked afresh
    finally:
        driver.quit()
        stop_server(second or first)


def test_the_page_of_a_named_gallery_counts_searches_and_shows_that_gallery(page, page_server, gallery, shared_data,
                                                                           tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    extra = cifar10_images(shared_data, 1, skip=PER_CLASS + 3)[:3]
    r = httpx.post(page_server.url + "/index", params={"gallery": "pets"}, headers={"X-API-Key": API_KEY}, timeout=60,
                   files=[("file", (name, data, "image/jpeg")) for name, _, data in extra],
                   data={"id": [f"pets/{name}" for name, _, _ in extra], "label": [label for _, label, _ in extra]})
    assert r.status_code == 201, r.text
    # with two galleries the page offers a choice; choosing one opens the page of that gallery
    from selenium.webdriver.support.ui import Select

    page.get(page_server.url + "/")
    WebDriverWait(page, WAIT).until(lambda d: d.find_element("id", "gallery-choice").is_displayed())
    choice = Select(page.find_element("id", "gallery-select"))
    count = httpx.get(page_server.url + "/index", timeout=30).json()["count"]
    assert [o.text for o in choice.options] == [f"default ({count})", "pets (3)"]
    assert choice.first_selected_option.text.startswith("default")
    choice.select_by_value("pets")
    WebDriverWait(page, WAIT).until(lambda d: d.current_url.endswith("/?gallery=pets"))
    WebDriverWait(page, WAIT).until(lambda d: d.find_element("id", "gallery-count").text == "3")
    assert Select(page.find_element("id", "gallery-select")).first_selected_option.text == "pets (3)"
    assert page.find_element("id", "gallery-info").text.startswith("Gallery pets: 3 images")
    name, label, data = extra[1]
    (tmp_path / name).write_bytes(data)
    upload(page, tmp_path / name)
    wait_for_search(page)
    assert page.find_element("id", "search-error").text == ""
    assert result_ids(page)[0] == f"pets/{name}" and all(i.startswith("pets/") for i in result_ids(page))
    wait_for_thumbnails(page)
    assert all(card["loaded"] for card in result_cards(page))   # the thumbnails of that gallery
    page.get(page_server.url + "/")   # the default gallery, as before
    count = httpx.get(page_server.url + "/index", timeout=30).json()["count"]
    assert count >= len(gallery)
    WebDriverWait(page, WAIT).until(lambda d: d.find_element("id", "gallery-count").text == str(count))
    assert page.find_element("id", "gallery-info").text.startswith(f"Gallery: {count} images")
    # a page shown again from the browser's history (Back) shows its own gallery in the choice, whatever it held
    page.execute_script("const s = document.getElementById('gallery-select'); s.value = 'pets';"
                        "window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}));")
    assert Select(page.find_element("id", "gallery-select")).first_selected_option.text.startswith("default")


def test_a_result_deleted_from_its_card_is_not_a_result_skipped_by_show_more(page, page_server, gallery, tmp_path):
    """The next page is asked for by offset: with a shown result deleted it starts one item sooner, or the
    first result of the next page would never be shown."""
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, query = gallery_image_file(gallery, 3, tmp_path)
    data = query.read_bytes()
    ids = [f"copies/{i}.jpg" for i in range(3)]   # the query's copies: its nearest, whatever the model
    key = {"X-API-Key": API_KEY}
    r = httpx.post(page_server.url + "/index", files=[("file", (i, data, "image/jpeg")) for i in ids],
                   data={"id": ids}, headers=key, timeout=60)
    assert r.status_code == 201, r.text
    try:
        _open_add_panel(page)
        page.find_element("id", "api-key").send_keys(API_KEY)
        choose_k(page, 4)
        upload(page, query)
        wait_for_search(page)
        first = result_ids(page)
        assert set(ids) <= set(first)
        card = f'#results li:has(button.result[data-id="{ids[1]}"])'
        page.find_element("css selector", f"{card} .edit-open").click()
        delete = page.find_element("css selector", f"{card} .edit button.danger")
        delete.click()
        delete.click()
        _wait_status(page, f"Deleted {ids[1]}.")
        page.find_element("id", "search-more").click()
        WebDriverWait(page, WAIT).until(lambda d: len(result_ids(d)) == 7)
        answer = httpx.post(page_server.url + "/search?k=7", files={"file": ("q.jpg", data, "image/jpeg")},
                            timeout=60).json()["results"]
        assert result_ids(page) == [h["id"] for h in answer]   # every result shown once, none skipped
    finally:
        for i in ids:
            httpx.delete(f"{page_server.url}/index/{i}", headers=key, timeout=60)


def test_an_api_key_no_header_can_carry_is_said_in_words_not_as_the_service_being_down(page, gallery, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    _open_add_panel(page)
    page.find_element("id", "api-key").send_keys("sekret\u2019")   # a curly quote, as pasted from a document
    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    upload(page, query)
    wait_for_search(page)
    error = page.find_element("id", "search-error").text
    assert "The API key (under Add images) holds a character a request header cannot carry" in error
    assert "could not be reached" not in error
    from selenium.webdriver.common.keys import Keys

    page.find_element("id", "api-key").send_keys(Keys.BACKSPACE)   # the key put right: searching works again
    upload(page, query)
    WebDriverWait(page, WAIT).until(lambda d: not d.find_element("id", "search-error").text and result_ids(d))


def test_an_empty_answer_after_marking_every_match_says_they_were_marked_or_shown(page, gallery, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    _, label, query = gallery_image_file(gallery, 0, tmp_path)
    page.find_element("id", "label-filter").send_keys(label)   # its 3 images
    choose_k(page, 4)
    upload(page, query)
    wait_for_search(page)
    shown = result_ids(page)
    assert len(shown) == PER_CLASS
    _mark(page, shown[0], "like")
    page.find_element("id", "feedback-search").click()
    words = f"{PER_CLASS} items match the filters, but every one of them is marked or was shown already"
    WebDriverWait(page, WAIT).until(lambda d: words in d.find_element("id", "results").text,
                                    f"{words!r} not shown: {page.find_element('id', 'results').text!r}")


def test_a_photo_with_a_long_name_on_a_phone_screen_keeps_the_page_within_the_screen(page, gallery, tmp_path):
    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    long_name = query.with_name("IMG_20240601_140322_HDR_portrait_mode_with_a_very_long_name.jpg")
    long_name.write_bytes(query.read_bytes())
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                         {"width": 375, "height": 800, "deviceScaleFactor": 1, "mobile": True})
    try:
        upload(page, long_name)
        wait_for_search(page)
        assert page.find_element("id", "search-error").text == ""
        assert page.execute_script("return document.documentElement.scrollWidth") <= 375
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _rows(page) -> list[list]:
    """Grouped results as shown: [head, [ids]] for each group row."""
    return page.execute_script("""return [...document.querySelectorAll('#results li.group')].map(g => [
        g.querySelector('.group-head').textContent,
        [...g.querySelectorAll('button.result')].map(b => b.dataset.id)]);""")


def test_no_vote_line_over_one_result_per_label_and_one_that_says_what_it_counts_per_metadata_value(
        page, page_server, gallery, tmp_path):
    """One result per label gives each label the same number of votes (Per group): the line would name the
    nearest group's label as what 'most neighbours' have. Per metadata value it counts the cards shown."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    files = {"file": ("q.jpg", query.read_bytes(), "image/jpeg")}
    answer = httpx.post(f"{page_server.url}/search?k=4&group_by=label&group_size=2&vote=true", files=files,
                        timeout=120).json()
    assert list(answer["vote"]["votes"].values()) == [2, 2, 2, 2]   # what the service says: a four-way tie
    assert answer["vote"]["label"] == answer["groups"][0]["value"]
    choose_k(page, 4)
    page.find_element("id", "group-by").send_keys("label")
    upload(page, query)
    wait_for_search(page)
    vote = page.find_element("id", "vote")
    assert len(result_ids(page)) == 4 and not vote.is_displayed()
    before = result_ids(page)
    Select(page.find_element("id", "group-size")).select_by_visible_text("2")
    wait_for_search(page, previous=before)
    assert len(_rows(page)) == 4 and not vote.is_displayed()
    # one per metadata value: the vote of the cards shown, said to be that
    box = page.find_element("id", "group-by")
    before = result_ids(page)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("metadata.n", Keys.TAB)
    wait_for_search(page, previous=before)
    labels = [c["label"] for c in result_cards(page)]
    label, n = _majority(labels)
    assert vote.is_displayed() and vote.text == \
        f"Most results shown are labelled {label} ({n} of {len(labels)} labelled results, 2 per n)"
    # and without grouping, the neighbours' vote as before
    before = result_ids(page)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE, Keys.TAB)
    wait_for_search(page, previous=before)
    label, n = _majority([c["label"] for c in result_cards(page)])
    assert vote.text == f"Most neighbours are labelled {label} ({n} of 4 labelled neighbours)"


def test_a_max_distance_that_is_not_a_number_is_said_and_nothing_is_searched_without_it(page, gallery, tmp_path):
    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    box = page.find_element("id", "max-distance")
    box.send_keys("1e")   # Chromium's number field takes it, and gives its value as ""
    assert page.execute_script("const b = document.getElementById('max-distance');"
                               "return [b.value, b.validity.badInput];") == ["", True]
    choose_k(page, 4)
    upload(page, query)
    wait_for_search(page)
    assert page.find_element("id", "search-error").text == \
        "Max distance must be a number, such as 0.6 (a cosine distance, 0 to 2), or empty for none."
    assert result_ids(page) == [] and box.get_attribute("aria-invalid") == "true"
    box.send_keys("-1")   # "1e-1": 0.1, a number
    upload(page, query)
    wait_for_search(page)
    assert page.find_element("id", "search-error").text == "" and result_ids(page)
    assert box.get_attribute("aria-invalid") == "false"


def _focused(page) -> str:
    """The focused element: a card's id, or its tag and id."""
    return page.execute_script("const a = document.activeElement;"
                               "return a.matches('button.result') ? a.dataset.id : `${a.tagName}#${a.id}`;")


def test_the_keyboard_focus_stays_on_the_results_after_enter_on_a_card_and_after_a_delete(
        page, page_server, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _, _, query = gallery_image_file(gallery, 5, tmp_path)
    data = query.read_bytes()
    ids = [f"focus/{i}.jpg" for i in range(2)]   # the query's copies: among its nearest
    key = {"X-API-Key": API_KEY}
    r = httpx.post(page_server.url + "/index", files=[("file", (i, data, "image/jpeg")) for i in ids],
                   data={"id": ids}, headers=key, timeout=60)
    assert r.status_code == 201, r.text
    try:
        _open_add_panel(page)
        page.find_element("id", "api-key").send_keys(API_KEY)
        choose_k(page, 8)
        upload(page, query)
        wait_for_search(page)
        first = result_ids(page)
        # Enter on a card searches from it: the card is gone, the focus goes to the first of the new cards
        page.find_element("css selector", f'#results button.result[data-id="{first[3]}"]').send_keys(Keys.ENTER)
        wait_for_search(page, previous=first)
        assert _focused(page) == result_ids(page)[0]
        # a card deleted from the keyboard: the focus goes on to the next card
        before = result_ids(page)
        upload(page, query)
        wait_for_search(page, previous=before)
        shown = result_ids(page)
        at = shown.index(ids[0])
        card = f'#results li:has(button.result[data-id="{ids[0]}"])'
        page.find_element("css selector", f"{card} .edit-open").send_keys(Keys.ENTER)
        delete = page.find_element("css selector", f"{card} .edit button.danger")
        delete.send_keys(Keys.ENTER)
        delete.send_keys(Keys.ENTER)
        _wait_status(page, f"Deleted {ids[0]}.")
        assert _focused(page) == shown[at + 1]
    finally:
        for i in ids:
            httpx.delete(f"{page_server.url}/index/{i}", headers=key, timeout=60)


def _resaved(data: bytes, quality: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _copy_pairs(page) -> list[tuple]:
    return [tuple(x) for x in page.execute_script("""return [...document.querySelectorAll('#results li.pair')].map(p => [
        p.querySelector('.pair-head').textContent, ...[...p.querySelectorAll('button.result')].map(b => b.dataset.id)]);""")]


def _api_pairs(want: dict) -> list[tuple]:
    return [(f"Pair {i + 1}: cosine {p['score']:.3f}" +
             (f", labels differ ({p['label_a'] or 'none'} / {p['label_b'] or 'none'})" if p["labels_differ"] else ""),
             p["a"], p["b"]) for i, p in enumerate(want["pairs"])]


def test_find_copies_after_a_delete_shows_only_the_pairs_left_and_their_counts(page, page_server, gallery):
    """Two copies of one gallery image make three pairs; one copy deleted from its card takes both of its
    pairs away (not only its own card), and the line counts what the service now counts."""
    from selenium.webdriver.support.ui import WebDriverWait

    original, (_, label, data) = list(gallery.items())[6]
    copies = {"dup/a.jpg": (data, label), "dup/b.jpg": (data, "not-" + label)}   # the very bytes: cosine 1
    key = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=page_server.url, timeout=120) as client:
        r = client.post("/index", files=[("file", (i, d, "image/jpeg")) for i, (d, _) in copies.items()],
                        data={"id": list(copies), "label": [lb for _, lb in copies.values()]}, headers=key)
        assert r.status_code == 201, r.text
        try:
            _open_add_panel(page)
            page.find_element("id", "api-key").send_keys(API_KEY)
            params = {"min_score": 0.98, "limit": 200}
            want = client.get("/duplicates", params=params, headers=key).json()
            assert sum("dup/a.jpg" in (p["a"], p["b"]) for p in want["pairs"]) == 2   # with the original, with b
            page.find_element("id", "find-copies").click()
            _wait_status(page, f"{want['pairs_found']} pairs among {want['items']} images, "
                               f"{want['labels_differ']} with different labels")
            assert _copy_pairs(page) == _api_pairs(want)
            card = '#results li:has(> button.result[data-id="dup/a.jpg"])'
            page.find_element("css selector", f"{card} .edit-open").click()
            delete = page.find_element("css selector", f"{card} .edit button.danger")
            delete.click()
            delete.click()
            WebDriverWait(page, WAIT).until(lambda d: _status(d).startswith("Deleted "))
            left = client.get("/duplicates", params=params, headers=key).json()
            assert _copy_pairs(page) == _api_pairs(left) and "dup/a.jpg" not in result_ids(page)
            n = left["pairs_found"]
            _wait_status(page, f"Deleted dup/a.jpg. {n} pair{'' if n == 1 else 's'} among {left['items']} images, "
                               f"{left['labels_differ']} with different labels.")
            # the other copy relabelled as its original: its pair no longer says the labels differ
            card = '#results li:has(> button.result[data-id="dup/b.jpg"])'
            page.find_element("css selector", f"{card} .edit-open").click()
            field = page.find_element("css selector", f"{card} .edit input")
            field.clear()
            field.send_keys(label)
            page.find_element("css selector", f"{card} .edit button:not(.danger)").click()
            WebDriverWait(page, WAIT).until(lambda d: _status(d).startswith("Saved: "))
            now = client.get("/duplicates", params=params, headers=key).json()
            n = now["pairs_found"]
            _wait_status(page, f"Saved: dup/b.jpg is now labelled {label}. {n} pair{'' if n == 1 else 's'} among "
                               f"{now['items']} images, {now['labels_differ']} with different labels.")
            assert _copy_pairs(page) == _api_pairs(now)
        finally:
            for i in copies:
                client.delete(f"/index/{i}", headers=key)


# Holds the answers of GET /index/{id} (the requests go out; their answers reach the page when released).
_HOLD_ITEM_READS = """
  window.__held = []; window.__hold = true;
  const fetch0 = window.fetch.bind(window);
  window.fetch = (url, options = {}) => {
    const answer = fetch0(url, options);
    const read = (options.method || 'GET') === 'GET' && new URL(url).pathname.startsWith('/index/');
    return read && window.__hold ? new Promise((resolve) => window.__held.push(() => resolve(answer))) : answer;
  };"""


def test_a_copy_cards_metadata_box_takes_no_typing_until_the_items_metadata_has_come(page, page_server, gallery):
    """The card of a pair does not know its item's metadata: it is read when the editor opens. Typed before
    that came, the text was overwritten by it, and a Save patched the wrong metadata."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    original, (_, _, data) = list(gallery.items())[7]   # metadata {"n": 1}
    key = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=page_server.url, timeout=120) as client:
        stored = client.get(f"/index/{original}").json()["metadata"]
        assert stored == {"n": 1}
        r = client.post("/index", files=[("file", ("c.jpg", _resaved(data, 75), "image/jpeg"))],
                        data={"id": "slow/copy.jpg"}, headers=key)
        assert r.status_code == 201, r.text
        try:
            _open_add_panel(page)
            page.find_element("id", "api-key").send_keys(API_KEY)
            page.find_element("id", "find-copies").click()
            WebDriverWait(page, WAIT).until(lambda d: original in result_ids(d))
            page.execute_script(_HOLD_ITEM_READS)
            card = f'#results li:has(> button.result[data-id="{original}"])'
            page.find_element("css selector", f"{card} .edit-open").click()
            box = page.find_element("css selector", f"{card} .edit textarea")
            save = page.find_element("css selector", f"{card} .edit button:not(.danger)")
            WebDriverWait(page, WAIT).until(lambda d: d.execute_script("return window.__held.length") == 1)
            box.click()
            ActionChains(page).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).send_keys('{"x": 1}').perform()
            typed = box.get_attribute("value")
            if save.is_enabled():
                save.click()   # what the old page allowed: a patch from {} to what was typed
            page.execute_script("window.__hold = false; window.__held.splice(0).forEach((f) => f());")
            WebDriverWait(page, WAIT).until(lambda d: box.get_attribute("value") and save.is_enabled()
                                            and not box.get_attribute("readonly"))
            shown = json.loads(box.get_attribute("value"))
            assert shown == client.get(f"/index/{original}").json()["metadata"] == stored   # nothing saved unseen
            assert "x" not in typed   # the typing was refused while reading, not taken and then overwritten
            # once read, it is edited as any card's
            box.clear()
            box.send_keys('{"n": 1, "x": 2}')
            save.click()
            saved = f'Saved: {original} is now labelled {gallery[original][1]}. Its metadata: {{"n":1,"x":2}}.'
            WebDriverWait(page, WAIT).until(lambda d: _status(d).startswith(saved)
                                            or d.find_element("id", "search-error").text.strip())
            assert page.find_element("id", "search-error").text == "" and _status(page).startswith(saved)
            assert client.get(f"/index/{original}").json()["metadata"] == {"n": 1, "x": 2}
        finally:
            client.patch(f"/index/{original}", json={"metadata": {"x": None}}, headers=key)
            client.delete("/index/slow/copy.jpg", headers=key)
            assert client.get(f"/index/{original}").json()["metadata"] == {"n": 1}


def test_grouped_show_more_after_a_delete_neither_skips_nor_repeats_a_group(page, page_server, gallery, tmp_path):
    """One result per label, k = 4: a copy of the query under a label of its own is the nearest group; deleted
    from its card, that group is gone and every later group moves up one. Show more must then give the next
    4 labels not shown (asked by offset alone, it skipped the 5th), and so on to the last label."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _, _, query = gallery_image_file(gallery, 2, tmp_path)
    data = query.read_bytes()
    files = {"file": ("q.jpg", data, "image/jpeg")}
    key = {"X-API-Key": API_KEY}
    r = httpx.post(page_server.url + "/index", files=[("file", ("solo.jpg", data, "image/jpeg"))],
                   data={"id": "group/solo.jpg", "label": "solo"}, headers=key, timeout=60)
    assert r.status_code == 201, r.text
    try:
        _open_add_panel(page)
        page.find_element("id", "api-key").send_keys(API_KEY)
        choose_k(page, 4)
        page.find_element("id", "group-by").send_keys("label", Keys.TAB)
        upload(page, query)
        wait_for_search(page)
        before = result_ids(page)
        Select(page.find_element("id", "group-size")).select_by_visible_text("2")
        wait_for_search(page, previous=before)
        first = _rows(page)
        assert "label: solo" in [head for head, _ in first]
        card = '#results li:has(> button.result[data-id="group/solo.jpg"])'
        page.find_element("css selector", f"{card} .edit-open").click()
        delete = page.find_element("css selector", f"{card} .edit button.danger")
        delete.click()
        delete.click()
        _wait_status(page, "Deleted group/solo.jpg.")
        rows = lambda d: [row for row in _rows(d) if row[1]]   # noqa: E731
        kept = rows(page)
        assert kept == [row for row in first if row[0] != "label: solo"]
        page.find_element("id", "search-more").click()
        WebDriverWait(page, WAIT).until(lambda d: len(rows(d)) == len(kept) + 4)
        answer = httpx.post(f"{page_server.url}/search?k=100&group_by=label&group_size=2", files=files,
                            timeout=120).json()["groups"]   # every label of the gallery (the 10 and any added)
        shown = {head for head, _ in kept}
        want = [[f"label: {g['value']}", [h["id"] for h in g["results"]]] for g in answer
                if f"label: {g['value']}" not in shown][:4]
        assert rows(page) == kept + want   # the next 4 labels, none skipped, none again
        assert _rows(page) == rows(page)   # no row left empty by the delete
        while page.find_element("id", "search-more").is_displayed():   # to the last label, each once
            count = len(_rows(page))
            page.find_element("id", "search-more").click()
            WebDriverWait(page, WAIT).until(lambda d: len(_rows(d)) > count
                                            or not d.find_element("id", "search-more").is_displayed())
        assert [head for head, _ in _rows(page)] == [row[0] for row in kept] + \
            [f"label: {g['value']}" for g in answer if f"label: {g['value']}" not in shown]
    finally:
        httpx.delete(f"{page_server.url}/index/group/solo.jpg", headers=key, timeout=60)
