"""The search page's findings of a browser bug hunt (session 52), each driven in headless Chromium against a real
`simsearch serve`, as test_page_browser.py drives the page (its fixtures and helpers: a server of this module's
own with 30 CIFAR-10 test images indexed over HTTP, one browser for the module).

Each test names a behaviour the page lacked: a paste with the focus on a control that takes no text, a thumbnail
that failed for a passing reason, a mark or a delete that crossed into a newer search, the focus after the
listing's last page, a double click, a key the service asked for, a region picker with no picture, the galleries'
sizes, and one search per Enter. Answers are held back in the page (its `fetch` wrapped: the request is sent at
once, its answer handed over when the test says) to make the races happen every time; thumbnail requests are
made to fail with DevTools' blocked URLs (the browser's own network failure).
"""
from __future__ import annotations

import base64
import io
import time
from urllib.parse import quote

import httpx
import pytest

from . import test_page_browser as pages
from ._browser import cifar10_images
from .conftest import start_server, stop_server
from .test_page_browser import (
    API_KEY,
    WAIT,
    _artifact,
    _open_add_panel,
    _status,
    choose_k,
    gallery_image_file,
    result_ids,
    upload,
    wait_for_search,
)

pytestmark = pytest.mark.browser

# The page tests' fixtures, for this module's own server and browser.
page_server = pages.page_server
gallery = pages.gallery
browser = pages.browser
page = pages.page


# ---- helpers -----------------------------------------------------------------------------------------

def _wait(driver, condition, timeout: float = WAIT, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message)


# The page's fetch wrapped: every request noted (method, URL) in window.__sent, and the answers of those that
# window.__holdIf picks held until the test hands them over (the request itself goes out at once).
_RECORD = """
  if (!window.__sent) {
    window.__sent = []; window.__held = []; window.__holdIf = null;
    const fetch0 = window.fetch.bind(window);
    window.fetch = (url, options = {}) => {
      const method = (options && options.method) || 'GET';
      window.__sent.push([method, String(url)]);
      const answer = fetch0(url, options);
      const hold = window.__holdIf && window.__holdIf(String(url), method);
      return hold ? new Promise((resolve, reject) => window.__held.push(() => answer.then(resolve, reject))) : answer;
    };
  }"""


def _record(page) -> None:
    page.execute_script(_RECORD)


def _sent(page, method: str, part: str) -> list[str]:
    """The URLs of the requests the page has sent with `method` whose URL holds `part`, since _record."""
    return [u for m, u in page.execute_script("return window.__sent") if m == method and part in u]


def _release(page) -> None:
    page.execute_script("window.__holdIf = null; window.__held.splice(0).forEach((f) => f());")


def _card(page, item_id: str, css: str = ""):
    return page.find_element("css selector", f'#results li:has(> button.result[data-id="{item_id}"]) {css}'.strip())


def _active(page) -> str:
    return page.execute_script("const a = document.activeElement;"
                               "return a.matches('button.result') ? 'card ' + a.dataset.id : a.tagName + '#' + a.id;")


def _png(jpeg: bytes) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


# ---- pasting an image --------------------------------------------------------------------------------

def test_ctrl_v_of_an_image_searches_it_with_the_focus_on_a_file_input_a_checkbox_or_a_text_field(
        page, page_server, gallery, tmp_path):
    """A real Ctrl+V, the image on the browser's clipboard: with the focus on the drop zone's file input (where a
    keyboard user stands to choose a photo), the add form's checkbox or file input, it is searched; in a text
    field too (an image is no text to type there); text on the clipboard goes into the text field, unsearched."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    own, _, query = gallery_image_file(gallery, 7, tmp_path)
    page.execute_cdp_cmd("Emulation.setFocusEmulationEnabled", {"enabled": True})   # the clipboard needs focus
    page.execute_cdp_cmd("Browser.grantPermissions", {"origin": page_server.url,
                                                      "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    said = page.execute_async_script("""
        const [b64, done] = arguments; const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        navigator.clipboard.write([new ClipboardItem({'image/png': new Blob([bytes], {type: 'image/png'})})])
          .then(() => done('ok'), (e) => done(String(e)));""", _png(query.read_bytes()))
    assert said == "ok"
    _record(page)
    choose_k(page, 4)
    for field in ("file", "add-skip", "add-files", "label-filter"):
        if field.startswith("add-"):
            _open_add_panel(page)
        page.execute_script("document.getElementById('query').textContent = '';"
                            "document.getElementById('search-status').textContent = '';"
                            "document.getElementById(arguments[0]).focus();", field)
        before = len(_sent(page, "POST", "/search?"))
        ActionChains(page).key_down(Keys.CONTROL).send_keys("v").key_up(Keys.CONTROL).perform()
        wait_for_search(page)
        assert len(_sent(page, "POST", "/search?")) == before + 1, field
        assert "Query: image.png" in page.find_element("id", "query").text, field
        assert result_ids(page)[0] == own, field
    assert page.find_element("id", "label-filter").get_attribute("value") == ""
    # text: typed into the field, no search
    said = page.execute_async_script("navigator.clipboard.writeText('cat').then(() => arguments[0]('ok'), "
                                     "(e) => arguments[0](String(e)))")
    assert said == "ok"
    before = len(_sent(page, "POST", "/search?"))
    ActionChains(page).key_down(Keys.CONTROL).send_keys("v").key_up(Keys.CONTROL).perform()
    _wait(page, lambda d: d.find_element("id", "label-filter").get_attribute("value") == "cat", 10)
    time.sleep(0.5)
    assert len(_sent(page, "POST", "/search?")) == before


# ---- a photo the browser cannot show -----------------------------------------------------------------

def test_for_a_photo_the_browser_cannot_show_select_a_region_is_not_offered(page, gallery, tmp_path):
    """A HEIC photo is searched, but Chromium cannot draw it: there is no picture to select a region of, so
    neither the Select a region button nor the region picker's key help is there."""
    from PIL import Image

    from ..photo_formats import encode_as, phone_sized

    _, _, jpeg = gallery_image_file(gallery, 4, tmp_path)
    heic = tmp_path / "IMG_0002.HEIC"
    heic.write_bytes(encode_as(phone_sized(Image.open(jpeg)), "HEIC"))
    choose_k(page, 4)
    upload(page, heic)
    wait_for_search(page)
    _wait(page, lambda d: "(no preview)" in d.find_element("id", "query").text)
    shown = page.execute_script("""return ['region-mode', 'crop-keys', 'crop-hint', 'query-frame'].filter((id) => {
        const n = document.getElementById(id); return n && !n.hidden && n.isConnected; });""")
    assert shown == []


# ---- a thumbnail that could not be loaded ------------------------------------------------------------

def _block_thumbnails(page, on: bool) -> None:
    page.execute_cdp_cmd("Network.enable", {})
    page.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/thumbnail*"] if on else []})


_THUMBS = """return [...document.querySelectorAll('#results button.result')].map((b) => {
    const img = b.querySelector('img'), none = b.querySelector('.no-thumb');
    return none ? none.textContent
      : !img ? 'nothing' : !img.complete ? 'loading' : img.naturalWidth ? 'shown' : 'failed';
  });"""


def test_a_thumbnail_that_failed_to_load_is_tried_again_and_shown(page, gallery, tmp_path):
    """A thumbnail request that failed for a passing reason (here the network: the request blocked) is asked again
    after a short while, and the picture shown, not "no thumbnail stored" for ever."""
    _, _, query = gallery_image_file(gallery, 10, tmp_path)
    choose_k(page, 4)
    _block_thumbnails(page, True)
    try:
        upload(page, query)
        wait_for_search(page)
        _wait(page, lambda d: (s := d.execute_script(_THUMBS)) and all(t != "loading" for t in s), 20)
        states = page.execute_script(_THUMBS)
    finally:
        _block_thumbnails(page, False)
    assert states == ["failed"] * 4, states   # failed, and not said to be missing
    try:
        _wait(page, lambda d: d.execute_script(_THUMBS) == ["shown"] * 4, 15)
    except Exception:
        raise AssertionError(f"the thumbnails were not tried again: {page.execute_script(_THUMBS)}") from None


def test_a_thumbnail_that_still_fails_says_it_could_not_be_loaded_not_that_none_is_stored(page, gallery, tmp_path):
    _, _, query = gallery_image_file(gallery, 11, tmp_path)
    choose_k(page, 4)
    _block_thumbnails(page, True)
    try:
        upload(page, query)
        wait_for_search(page)
        _wait(page, lambda d: all(t.startswith("thumbnail") or t.startswith("no thumbnail")
                                  for t in d.execute_script(_THUMBS)), 20)
        time.sleep(0.3)
        assert page.execute_script(_THUMBS) == ["thumbnail could not be loaded"] * 4
    finally:
        _block_thumbnails(page, False)


# ---- a mark pressed on the old results while a new query is searched ---------------------------------

def test_a_mark_pressed_on_the_old_results_while_a_new_photo_is_searched_does_not_carry_over(page, gallery, tmp_path):
    """docs/page.md: a new query starts with no marks. The old grid, shown until the new answer comes, is marked
    busy and takes no mark: a More pressed on it (a slow upload) is not carried into the new photo's search."""
    from selenium.webdriver.common.action_chains import ActionChains

    _, _, first = gallery_image_file(gallery, 0, tmp_path)
    _, _, second = gallery_image_file(gallery, 13, tmp_path)
    choose_k(page, 4)
    upload(page, first)
    wait_for_search(page)
    old = result_ids(page)
    _record(page)
    page.execute_script("window.__holdIf = (u, m) => m === 'POST' && u.includes('/search')")
    upload(page, second)
    _wait(page, lambda d: d.execute_script("return window.__held.length") == 1)
    busy = page.find_element("id", "results").get_attribute("aria-busy")
    like = _card(page, old[1], ".marks .like")
    ActionChains(page).move_to_element(like).click().perform()   # a real click where the button is
    pressed = like.get_attribute("aria-pressed")
    _release(page)
    wait_for_search(page, previous=old)
    assert not page.find_element("id", "feedback").is_displayed()
    assert not page.find_elements("css selector", "#results li.liked, #results .marks [aria-pressed=true]")
    page.find_element("id", "search-again").click()
    wait_for_search(page)
    time.sleep(0.3)
    assert not [u for u in _sent(page, "POST", "/search?") if "like=" in u]
    assert pressed == "false" and busy == "true"   # the old grid, while busy, took no mark
    assert page.find_element("id", "results").get_attribute("aria-busy") in (None, "false")


# ---- a delete answered after a new search began ------------------------------------------------------

def test_a_delete_answered_after_a_new_search_leaves_that_searchs_status_and_next_page_alone(
        page, page_server, gallery, tmp_path):
    """A card's delete whose answer comes once the next photo's results are shown: the status line is the new
    search's still, and its Show more results asks for the page after what it shows (the deleted card was
    not one of them), as the API answers that search."""
    own, _, copy = gallery_image_file(gallery, 2, tmp_path)
    _, _, other = gallery_image_file(gallery, 28, tmp_path)
    temp = "tmp/late-delete.jpg"
    r = httpx.post(page_server.url + "/index", headers={"X-API-Key": API_KEY}, data={"id": temp}, timeout=120,
                   files={"file": ("c.jpg", copy.read_bytes(), "image/jpeg")})
    assert r.status_code == 201, r.text
    try:
        page.refresh()
        _wait(page, lambda d: d.find_element("id", "gallery-count").text not in ("", "…"))
        _open_add_panel(page)
        page.find_element("id", "api-key").send_keys(API_KEY)
        choose_k(page, 4)
        upload(page, copy)
        wait_for_search(page)
        assert temp in result_ids(page)
        _record(page)
        _card(page, temp, ".edit-open").click()
        delete = _card(page, temp, ".danger")
        page.execute_script("window.__holdIf = (u, m) => m === 'DELETE'")
        delete.click()
        delete.click()
        _wait(page, lambda d: d.execute_script("return window.__held.length") == 1)
        page.execute_script("window.__holdIf = null")
        shown = result_ids(page)
        upload(page, other)
        wait_for_search(page, previous=shown)
        status = _status(page)
        assert status.startswith("4 results")
        _release(page)
        _wait(page, lambda d: not d.execute_script("return window.__held.length") and
              d.find_element("id", "gallery-count").text == str(len(gallery)))
        time.sleep(0.3)
        assert _status(page) == status
        page.find_element("id", "search-more").click()
        _wait(page, lambda d: len(result_ids(d)) >= 8 or d.find_element("id", "search-error").text)
        api = httpx.post(page_server.url + "/search", params={"k": 8, "vote": "true"}, timeout=120,
                         files={"file": (other.name, other.read_bytes(), "image/jpeg")}).json()
        assert result_ids(page) == [h["id"] for h in api["results"]]
        assert _sent(page, "POST", "offset=4")
    finally:
        httpx.delete(f"{page_server.url}/index/{temp}", headers={"X-API-Key": API_KEY}, timeout=30)


# ---- the gallery listing's last page from the keyboard -----------------------------------------------

def test_enter_on_the_listings_show_more_asks_once_and_on_the_last_page_leaves_the_focus_on_its_first_new_card(
        page, page_server, gallery):
    from selenium.webdriver.common.keys import Keys

    count = httpx.get(page_server.url + "/index?limit=0", timeout=30).json()["count"]
    assert 16 < count <= 32, count   # one Show more lists the rest
    choose_k(page, 16)
    page.find_element("id", "browse").click()
    _wait(page, lambda d: _status(d).startswith(f"16 of {count}"))
    _record(page)
    more = page.find_element("id", "browse-more")
    more.send_keys(Keys.ENTER, Keys.ENTER)   # pressed twice before the page comes
    _wait(page, lambda d: _status(d).startswith(f"{count} of {count}"))
    time.sleep(0.3)
    assert not more.is_displayed()
    cards = page.find_elements("css selector", "#results button.result")
    assert len(cards) == count and len({c.get_attribute("data-id") for c in cards}) == count
    assert _active(page) == "card " + cards[16].get_attribute("data-id")
    assert len(_sent(page, "GET", "offset=16")) == 1


# ---- a double click on Search again with these marks -------------------------------------------------

def test_a_double_click_on_search_again_with_these_marks_runs_one_round(page, gallery, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    _, _, query = gallery_image_file(gallery, 16, tmp_path)
    choose_k(page, 4)
    upload(page, query)
    wait_for_search(page)
    _record(page)
    for gap in (0.0, 0.15):
        shown = result_ids(page)
        _card(page, shown[1], ".marks .like").click()
        before = len(_sent(page, "POST", "/search?"))
        button = page.find_element("id", "feedback-search")
        ActionChains(page).move_to_element(button).click().pause(gap).click().perform()
        wait_for_search(page, previous=shown)
        time.sleep(0.5)
        assert len(_sent(page, "POST", "/search?")) == before + 1, f"{gap} s apart"


# ---- Enter in One result per -------------------------------------------------------------------------

def test_enter_in_one_result_per_or_search_again_after_editing_it_sends_one_search(page, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _, _, query = gallery_image_file(gallery, 19, tmp_path)
    choose_k(page, 4)
    upload(page, query)
    wait_for_search(page)
    _record(page)
    group = page.find_element("id", "group-by")
    group.send_keys("label", Keys.ENTER)
    _wait(page, lambda d: d.find_elements("css selector", "#results li[data-group]"))
    wait_for_search(page)
    time.sleep(0.5)
    assert len(_sent(page, "POST", "group_by=label")) == 1
    assert len(_sent(page, "POST", "/search?")) == 1
    shown = page.execute_script("return document.getElementById('results').innerHTML")
    group.send_keys(Keys.BACKSPACE * 5)
    page.find_element("id", "search-again").click()
    _wait(page, lambda d: d.execute_script("return document.getElementById('results').innerHTML") != shown)
    wait_for_search(page)
    time.sleep(0.5)
    assert len(_sent(page, "POST", "/search?")) == 2


# ---- a key the service asks for ----------------------------------------------------------------------

def _key_field_state(page) -> dict:
    return page.execute_script("""const k = document.getElementById('api-key');
        return {open: document.getElementById('add-panel').open, focused: document.activeElement === k,
                invalid: k.getAttribute('aria-invalid'), shown: k.getClientRects().length > 0};""")


def test_a_save_refused_for_want_of_a_key_opens_the_add_panel_on_the_key_field(page, gallery):
    """A card's edit saved without the key: the 401 is about the key field, which was inside the closed
    "Add images" panel; the panel opens and the focus goes to the field, marked invalid."""
    page.find_element("id", "browse").click()
    _wait(page, lambda d: len(result_ids(d)) > 0)
    item = result_ids(page)[0]
    assert not page.find_element("id", "add-panel").get_attribute("open")
    _card(page, item, ".edit-open").click()
    _card(page, item, ".edit .buttons button").click()   # Save
    _wait(page, lambda d: d.find_element("id", "search-error").text.strip())
    result = _key_field_state(page)
    assert result == {"open": True, "focused": True, "invalid": "true", "shown": True}, result


def test_where_reads_need_a_key_the_key_field_is_opened_and_once_typed_the_galleries_choice_appears(
        browser, hybrid1_artifact, shared_data, tmp_path_factory, tmp_path):
    """SIMSEARCH_REQUIRE_KEY_FOR_READS=true, two galleries: the page loads with nothing it may read; a photo picked
    is refused for the key, and the page opens the add panel on the key field; the key typed, the size comes and
    the Galleries choice (GET /galleries, refused at load) appears; searched again, the thumbnails show."""
    from selenium.webdriver.support.ui import Select

    work = tmp_path_factory.mktemp("page-server-key-reads")
    live = start_server({"SIMSEARCH_MODEL_PATH": str(_artifact(hybrid1_artifact)),
                         "SIMSEARCH_DATA_DIR": str(work / "data"), "SIMSEARCH_API_KEY": API_KEY,
                         "SIMSEARCH_REQUIRE_KEY_FOR_READS": "true"}, work)
    try:
        images = cifar10_images(shared_data, 1)[:3]
        key = {"X-API-Key": API_KEY}
        for gallery_name, some in (("default", images[:2]), ("pets", images[2:])):
            r = httpx.post(live.url + "/index", params={"gallery": gallery_name}, headers=key, timeout=120,
                           files=[("file", (n, d, "image/jpeg")) for n, _, d in some])
            assert r.status_code == 201, r.text
        query = tmp_path / images[0][0]
        query.write_bytes(images[0][2])
        browser.get(live.url + "/")
        browser.execute_script("sessionStorage.clear()")
        browser.get(live.url + "/")
        _wait(browser, lambda d: _status(d).startswith("Gallery unavailable"))
        assert not browser.find_element("id", "gallery-choice").is_displayed()
        upload(browser, query)
        wait_for_search(browser)
        assert browser.find_element("id", "search-error").text.strip()
        state = _key_field_state(browser)
        assert state == {"open": True, "focused": True, "invalid": "true", "shown": True}, state
        browser.switch_to.active_element.send_keys(API_KEY)
        _wait(browser, lambda d: d.find_element("id", "gallery-choice").is_displayed(), 15)
        options = [o.text for o in Select(browser.find_element("id", "gallery-select")).options]
        assert options == ["default (2)", "pets (1)"]
        assert browser.find_element("id", "gallery-count").text == "2"
        # the thumbnails (plain <img> requests, sent without the key, refused) are asked for again with it
        browser.find_element("id", "search-again").click()
        wait_for_search(browser)
        assert browser.find_element("id", "search-error").text == ""
        _wait(browser, lambda d: d.execute_script(_THUMBS) == ["shown"] * 2, 15,
              f"the thumbnails: {browser.execute_script(_THUMBS)}")
    finally:
        browser.execute_script("sessionStorage.clear()")
        stop_server(live)


# ---- the Galleries choice after the page's own writes ------------------------------------------------

def test_the_galleries_choice_says_the_sizes_after_an_image_is_added_or_deleted_from_the_page(
        page, page_server, gallery, shared_data, tmp_path):
    from selenium.webdriver.support.ui import Select

    (name, _, data), = cifar10_images(shared_data, 1, skip=pages.PER_CLASS + 3)[:1]
    key = {"X-API-Key": API_KEY}
    r = httpx.post(page_server.url + "/index", params={"gallery": "choice"}, headers=key, timeout=120,
                   files={"file": (name, data, "image/jpeg")})
    assert r.status_code == 201, r.text
    image = tmp_path / "added.jpg"
    image.write_bytes(data)
    n = len(gallery)
    added = None
    choice = lambda d: [o.text for o in Select(d.find_element("id", "gallery-select")).options]  # noqa: E731
    try:
        page.refresh()
        _wait(page, lambda d: d.find_element("id", "gallery-choice").is_displayed())
        before = choice(page)[0]
        assert before == f"default ({n})" and choice(page)[1] == "choice (1)", choice(page)
        _open_add_panel(page)
        page.find_element("id", "api-key").send_keys(API_KEY)
        page.find_element("id", "add-files").send_keys(str(image))
        page.find_element("id", "add-submit").click()
        _wait(page, lambda d: "ok" in (d.find_element("id", "add-status").get_attribute("class") or ""))
        added = page.find_element("id", "add-status").text.removeprefix("Added 1 image: ").removesuffix(".")
        _wait(page, lambda d: d.find_element("id", "gallery-count").text == str(n + 1))
        _wait(page, lambda d: choice(d)[0] == f"default ({n + 1})", 10, f"the choice says {choice(page)}")
        choose_k(page, 4)
        upload(page, image)
        wait_for_search(page)
        _card(page, added, ".edit-open").click()
        delete = _card(page, added, ".danger")
        delete.click()
        delete.click()
        _wait(page, lambda d: _status(d).startswith(f"Deleted {added}"))
        _wait(page, lambda d: choice(d)[0] == before, 10, f"the choice says {choice(page)}")
    finally:
        if added:
            httpx.delete(f"{page_server.url}/index/{quote(added, safe='')}", headers=key, timeout=30)
