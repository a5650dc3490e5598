"""The search page's accessibility and mobile behaviour, in headless Chromium against a real `simsearch serve`.

The same set-up as test_page_browser.py (its fixtures and helpers): a real server process with 30 CIFAR-10
test images indexed over HTTP, Debian's Chromium driven by Selenium. Each test proves one property a
keyboard, screen-reader, phone or high-contrast user depends on (docs/page.md, "Accessibility"); each
fails on the page as it was before that property was made to hold. Phones and zoomed pages are Chromium's
device emulation; touches are DevTools touch events; forced colours are DevTools' emulated media.
"""
from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from . import test_page_browser as pages
from ._browser import cifar10_images, require_chromium
from .conftest import start_server, stop_server
from .test_page_browser import (
    API_KEY,
    MAX_BODY_BYTES,
    PER_CLASS,
    WAIT,
    _artifact,
    _focused,
    _mark,
    _open_add_panel,
    choose_k,
    gallery_image_file,
    upload,
    wait_for_search,
)

pytestmark = pytest.mark.browser

# The page tests' fixtures, for this module's server (page_server below): the gallery indexed over HTTP,
# the browser, and the page freshly loaded.
gallery = pages.gallery
browser = pages.browser
page = pages.page


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, hybrid1_artifact):
    """This module's own `simsearch serve`, as test_page_browser.py's (its `gallery` and `page` use it)."""
    require_chromium()
    work = tmp_path_factory.mktemp("a11y-server")
    live = start_server({"SIMSEARCH_MODEL_PATH": str(_artifact(hybrid1_artifact)),
                         "SIMSEARCH_DATA_DIR": str(work / "data"), "SIMSEARCH_API_KEY": API_KEY,
                         "SIMSEARCH_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}, work)
    yield live
    stop_server(live)


# ---- helpers -----------------------------------------------------------------------------------------

def _wait(driver, condition, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(condition, message)


def _ids(driver) -> list[str]:
    """The result cards' ids, read in one go (a card replaced while they are read is never stale)."""
    return driver.execute_script("return [...document.querySelectorAll('#results button.result')].map(b => b.dataset.id)")


def _wait_for_new_results(driver, previous: list[str]) -> None:
    """Until a finished search shows other cards than `previous` (wait_for_search's, read in one go)."""
    _wait(driver, lambda d: d.execute_script(
        "return document.getElementById('search-status').classList.contains('ok')") and _ids(d) != previous)


def _emulate(driver, width: int, height: int, mobile: bool = True, scale: int = 1) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})


def _box(driver, css: str) -> dict:
    """Where `css` is on the screen (its bounding box) and the screen's height and scroll position."""
    return driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, height: innerHeight, scrollY: scrollY};", css)


def _in_view(driver, css: str, upper_half: bool = False) -> bool:
    b = _box(driver, css)
    return b["top"] >= -1 and b["bottom"] <= b["height"] + 1 and (not upper_half or b["top"] <= b["height"] / 2)


def _still(driver) -> None:
    """Until the page has stopped scrolling (a smooth scroll takes a moment)."""
    last = None
    for _ in range(40):
        now = driver.execute_script("return scrollY")
        if now == last:
            return
        last = now
        time.sleep(0.15)


def _swipe_up(driver, x: float, y: float, steps: int = 10, step: int = 15, across: int = 1) -> None:
    """A finger put down at (x, y) and moved up steps x step pixels (and `across` a step to the right), then
    lifted (DevTools touch events)."""
    driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for i in range(1, steps + 1):
        driver.execute_cdp_cmd("Input.dispatchTouchEvent",
                               {"type": "touchMove", "touchPoints": [{"x": x + i * across, "y": y - i * step}]})
        time.sleep(0.02)
    driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def _photo(gallery, i: int, folder) -> tuple[str, object]:
    """Gallery item i enlarged to a 640x480 JPEG, a phone photo's shape: (its gallery id, the path)."""
    from PIL import Image

    from ..photo_formats import phone_sized

    item_id, _, path = gallery_image_file(gallery, i, folder)
    photo = folder / f"photo-{i}.jpg"
    phone_sized(Image.open(path)).save(photo, "JPEG", quality=90)
    return item_id, photo


def _luminance(rgb) -> float:
    c = [v / 255 for v in rgb[:3]]
    c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]


def _contrast(a, b) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(float(v)) for v in re.findall(r"[\d.]+", css)[:3])


def _tokens(text: str) -> list[str]:
    """Words and numbers of `text`, as axe-core's label-in-name check compares them (bracketed parts left
    out, punctuation a separator, lower case)."""
    previous = None
    while previous != text:
        previous, text = text, re.sub(r"\([^()]*\)", "", text)
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).split()


def _contains(name: list[str], shown: list[str]) -> bool:
    return any(name[i:i + len(shown)] == shown for i in range(len(name) - len(shown) + 1))


# ---- tests -------------------------------------------------------------------------------------------

def test_show_more_results_and_add_to_gallery_keep_the_keyboard_focus_on_their_button(page, page_server, gallery,
                                                                                       tmp_path):
    from selenium.webdriver.common.keys import Keys

    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    choose_k(page, 8)
    upload(page, query)
    wait_for_search(page)
    more = page.find_element("id", "search-more")
    more.send_keys(Keys.ENTER)   # the next page comes while the focus waits on the button, not on <body>
    _wait(page, lambda d: len(_ids(d)) == 16)
    assert _focused(page) == "BUTTON#search-more"
    assert more.get_attribute("aria-disabled") is None   # not busy once the page has come

    label = "a11y-focus-temp"
    _, _, extra = gallery_image_file(gallery, 1, tmp_path)
    try:
        _open_add_panel(page)
        page.find_element("id", "api-key").send_keys(API_KEY)
        page.find_element("id", "add-label").send_keys(label)
        page.find_element("id", "add-files").send_keys(str(extra))
        page.find_element("id", "add-submit").send_keys(Keys.ENTER)
        _wait(page, lambda d: d.find_element("id", "add-status").text.startswith("Added 1 image"),
              "the image was not added")
        assert _focused(page) == "BUTTON#add-submit"
    finally:
        listed = httpx.get(page_server.url + "/index", params={"label": label}, timeout=60).json()["items"]
        for item in listed:
            httpx.delete(f"{page_server.url}/index/{item['id']}", headers={"X-API-Key": API_KEY}, timeout=60)


def test_the_galleries_choice_moves_with_the_arrow_keys_and_opens_a_gallery_only_on_enter(page, page_server,
                                                                                          shared_data):
    from selenium.webdriver.common.keys import Keys

    extra = cifar10_images(shared_data, 1, skip=PER_CLASS + 5)[:2]
    r = httpx.post(page_server.url + "/index", params={"gallery": "toys"}, headers={"X-API-Key": API_KEY},
                   files=[("file", (name, data, "image/jpeg")) for name, _, data in extra], timeout=60)
    assert r.status_code == 201, r.text
    page.get(page_server.url + "/")
    _wait(page, lambda d: d.find_element("id", "gallery-choice").is_displayed())
    assert page.title == "simsearch: image similarity search"
    choice = page.find_element("id", "gallery-select")
    page.execute_script("arguments[0].focus()", choice)
    choice.send_keys(Keys.ARROW_DOWN)   # on the closed list: the next option, nothing opened
    time.sleep(1.5)
    assert choice.get_attribute("value") == "toys"
    assert page.current_url == page_server.url + "/", "an arrow key opened another gallery's page"
    assert _focused(page) == "SELECT#gallery-select"
    choice.send_keys(Keys.ENTER)
    _wait(page, lambda d: d.current_url.endswith("/?gallery=toys"))
    _wait(page, lambda d: d.find_element("id", "gallery-count").text == "2")
    assert page.title == "Gallery toys · simsearch: image similarity search"   # the tab names the gallery
    # and the Open button, for a pointer or a screen reader: back to the default one
    page.execute_script("const s = document.getElementById('gallery-select'); s.value = 'default';")
    page.find_element("id", "gallery-open").click()
    _wait(page, lambda d: d.current_url == page_server.url + "/")


def test_on_a_phone_the_results_and_errors_come_into_view_and_a_focused_card_stays_in_view(page, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _, _, query = gallery_image_file(gallery, 2, tmp_path)
    _emulate(page, 375, 667)
    try:
        page.get(page.current_url)
        _wait(page, lambda d: d.find_element("id", "gallery-count").text not in ("", "…"))
        choose_k(page, 8)
        assert not _in_view(page, "#results-title"), "the results are not below the form on this screen"
        upload(page, query)
        wait_for_search(page)
        _still(page)
        # the photo picked, the query and its results are on the screen, not below the whole form
        assert _in_view(page, "#results-title", upper_half=True), _box(page, "#results-title")
        assert _box(page, "#results li")["top"] < _box(page, "#results li")["height"]
        # an error too: a file that is not an image, picked from the top of the page
        page.execute_script("scrollTo(0, 0)")
        text = tmp_path / "notes.txt"
        text.write_text("not an image")
        upload(page, text)
        _wait(page, lambda d: d.find_element("id", "search-error").text)
        _still(page)
        assert _in_view(page, "#search-error"), _box(page, "#search-error")
        # a card tapped: its search shows there, not at the top of the page
        upload(page, query)
        wait_for_search(page)
        before = _ids(page)
        page.find_element("css selector", f'#results button.result[data-id="{before[2]}"]').click()
        _wait_for_new_results(page, before)
        _still(page)
        assert page.execute_script("return scrollY") > 0
        assert _in_view(page, "#results-title", upper_half=True), _box(page, "#results-title")
        # a desktop page at 200 % zoom (640x400 CSS pixels): Enter on a card, and the card focused next is seen
        _emulate(page, 640, 400, mobile=False, scale=2)
        before = _ids(page)
        page.find_element("css selector", f'#results button.result[data-id="{before[-1]}"]').send_keys(Keys.ENTER)
        _wait_for_new_results(page, before)
        _still(page)
        assert _focused(page) == _ids(page)[0]
        assert _in_view(page, "#results button.result:focus"), _box(page, "#results button.result:focus")
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_swipe_over_the_query_photo_scrolls_a_touch_screen_and_draws_a_region_only_after_select_a_region(
        page, gallery, tmp_path):
    _, photo = _photo(gallery, 3, tmp_path)
    _emulate(page, 375, 667)
    page.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    try:
        page.get(page.current_url)
        _wait(page, lambda d: d.find_element("id", "gallery-count").text not in ("", "…"))
        upload(page, photo)
        wait_for_search(page)
        page.execute_script("document.getElementById('query-frame').scrollIntoView({block: 'start'});"
                            "window.searches = 0; const send = window.fetch;"
                            "window.fetch = (...a) => { window.searches += /search/.test(a[0]) ? 1 : 0;"
                            "                           return send(...a); };")
        _still(page)
        frame = _box(page, "#query-frame")
        y0 = page.execute_script("return scrollY")
        _swipe_up(page, 120, frame["top"] + 0.85 * (frame["bottom"] - frame["top"]))
        time.sleep(1.5)
        assert page.execute_script("return window.searches") == 0, "a swipe searched a region"
        assert not page.find_element("id", "crop-box").is_displayed()
        assert page.execute_script("return scrollY") > y0 + 50, "a swipe over the photo did not scroll the page"
        # Select a region: now the same gesture draws one, and it is searched
        mode = page.find_element("id", "region-mode")
        mode.click()
        assert mode.get_attribute("aria-pressed") == "true"
        page.execute_script("document.getElementById('query-frame').scrollIntoView({block: 'start'})")
        _still(page)
        frame = _box(page, "#query-frame")
        y0 = page.execute_script("return scrollY")
        _swipe_up(page, 120, frame["top"] + 0.85 * (frame["bottom"] - frame["top"]), steps=8, step=12, across=8)
        _wait(page, lambda d: "Searching a region" in d.find_element("id", "crop-hint").text)
        assert page.execute_script("return window.searches") == 1
        assert abs(page.execute_script("return scrollY") - y0) < 2   # drawing, not scrolling
        assert mode.get_attribute("aria-pressed") == "false"   # one region a press: then swipes scroll again
    finally:
        page.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_enter_in_a_filter_or_search_again_applies_the_filters_to_the_same_photo(page, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _, _, query = gallery_image_file(gallery, 0, tmp_path)
    assert not page.find_element("id", "search-again").is_displayed()   # nothing to search again yet
    choose_k(page, 8)
    upload(page, query)
    wait_for_search(page)
    first = _ids(page)
    assert len(first) == 8
    labels = lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results button.result .label')].map(e => e.textContent)")
    page.find_element("id", "label-filter").send_keys("ship", Keys.ENTER)
    _wait(page, lambda d: labels(d) == ["ship"] * PER_CLASS, "Enter in the label filter did not search again")
    assert _focused(page) == "INPUT#label-filter"
    page.find_element("id", "label-filter").clear()
    choose_k(page, 4)
    again = page.find_element("id", "search-again")
    assert again.is_displayed() and again.text == "Search again"
    again.click()
    _wait(page, lambda d: len(_ids(d)) == 4)
    assert _ids(page) == first[:4]   # the same photo, k = 4 and no filter


def test_without_javascript_the_page_says_so_and_the_add_form_never_puts_the_key_in_the_address(
        browser, page_server):
    from selenium.webdriver.common.keys import Keys

    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(page_server.url + "/")
        note = browser.find_element("css selector", ".noscript")
        assert note.is_displayed() and "needs JavaScript" in note.text
        assert browser.find_element("css selector", ".noscript a").get_attribute("href") == page_server.url + "/docs"
        browser.find_element("css selector", "#add-panel summary").click()
        browser.find_element("id", "api-key").send_keys("my-secret-key", Keys.ENTER)
        time.sleep(1.5)
        assert "secret" not in browser.current_url and "api_key" not in browser.current_url, browser.current_url
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    browser.get(page_server.url + "/")
    form = browser.find_element("id", "add-form")
    assert form.get_attribute("method") == "post"
    assert browser.find_element("id", "api-key").get_attribute("name") == ""   # never a form field that is sent


def test_the_region_picker_takes_its_keys_in_a_screen_readers_browse_mode_and_says_how(page, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _, photo = _photo(gallery, 4, tmp_path)
    upload(page, photo)
    wait_for_search(page)
    frame = page.find_element("id", "query-frame")
    # role=application: NVDA and JAWS pass the arrow keys and Enter through to it (a group keeps them)
    assert frame.aria_role == "application"
    assert frame.get_attribute("aria-roledescription") == "region picker"
    described = page.find_element("id", frame.get_attribute("aria-describedby"))
    assert "Enter" in described.get_attribute("textContent") and "arrow keys" in described.get_attribute("textContent")
    # Enter sent as a click (a screen reader's default action, no pointer): as Enter
    page.execute_script("arguments[0].click()", frame)
    assert "Region 25%–75% across, 25%–75% down" in page.find_element("id", "crop-hint").text
    frame.send_keys(Keys.ESCAPE)
    assert not page.find_element("id", "crop-box").is_displayed()


def test_cards_name_what_they_show_with_the_distance_and_a_card_marked_less_keeps_its_text_contrast(
        page, gallery, tmp_path):
    _, _, query = gallery_image_file(gallery, 5, tmp_path)
    choose_k(page, 4)
    upload(page, query)
    wait_for_search(page)
    cards = page.execute_script("""return [...document.querySelectorAll('#results button.result')].map(b =>
        ({id: b.dataset.id, name: b.getAttribute('aria-label'), shown: b.textContent,
          distance: b.querySelector('.score small').textContent}));""")
    for card in cards:
        # label in name: what the card shows (its text as axe-core reads it: the parts' text run together, so
        # they need a space between them) is, word for word and in order, part of what it is called
        assert _contains(_tokens(card["name"]), _tokens(card["shown"])), card
        assert "distance" in card["name"] and card["distance"] in card["name"], card   # "d 0.454 (distance)"
    _mark(page, cards[1]["id"], "unlike")
    texts = page.execute_script("""
        const card = document.querySelector('#results li.unliked button.result');
        return [...card.querySelectorAll('.score small, .id, .label')].map(e => {
          let opacity = 1;
          for (let n = e; n; n = n.parentElement) opacity *= Number(getComputedStyle(n).opacity);
          return {opacity, color: getComputedStyle(e).color, bg: getComputedStyle(card).backgroundColor};
        });""")
    for t in texts:
        assert t["opacity"] == 1, t   # not dimmed as a whole: the picture is
        assert _contrast(_rgb(t["color"]), _rgb(t["bg"])) >= 4.5, t


def test_control_borders_contrast_forced_colours_states_and_text_sizes_follow_the_browsers_setting(
        page, gallery, tmp_path):
    _, _, query = gallery_image_file(gallery, 6, tmp_path)
    choose_k(page, 4)
    upload(page, query)
    wait_for_search(page)
    # borders of the controls and cards: 3:1 or more against what is around them (WCAG 1.4.11)
    borders = page.execute_script("""
        const bg = (e) => { for (let n = e.parentElement; n; n = n.parentElement) {
            const c = getComputedStyle(n).backgroundColor; if (c !== 'rgba(0, 0, 0, 0)') return c; } return 'rgb(255, 255, 255)'; };
        return ['#k', '#label-filter', '#max-distance', '#browse', '#results button.result', '.marks button.like',
                '#drop-zone'].map(css => { const e = document.querySelector(css);
          return {css, border: getComputedStyle(e).borderTopColor, around: bg(e)}; });""")
    for b in borders:
        assert _contrast(_rgb(b["border"]), _rgb(b["around"])) >= 3, b
    # the text follows the browser's font size (rem throughout): body text as the labels and headings
    sizes = page.execute_script("""
        document.documentElement.style.fontSize = '24px';
        const px = (css) => parseFloat(getComputedStyle(document.querySelector(css)).fontSize);
        const out = {body: px('body'), drop: px('#drop-zone span'), h2: px('h2')};
        document.documentElement.style.fontSize = '';
        return out;""")
    assert sizes == {"body": 22.5, "drop": 22.5, "h2": 24}, sizes
    # forced colours (Windows High Contrast): a pressed mark, a marked card and a primary button still show
    ids = _ids(page)
    _mark(page, ids[0], "like")
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "forced-colors", "value": "active"}]})
    try:
        style = page.execute_script("""
            const s = (css, p) => getComputedStyle(document.querySelector(css))[p];
            return {pressed: s('#results li.liked .marks button.like', 'backgroundColor'),
                    plain: s('#results li:not(.liked) .marks button.like', 'backgroundColor'),
                    liked: s('#results li.liked button.result', 'outlineStyle'),
                    primary: s('#feedback-search', 'borderTopStyle'),
                    primaryWidth: s('#feedback-search', 'borderTopWidth')};""")
    finally:
        page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert style["pressed"] != style["plain"], style
    assert style["liked"] != "none", style
    assert style["primary"] != "none" and float(style["primaryWidth"].rstrip("px")) >= 1, style


def test_a_skip_link_is_the_first_tab_stop_shown_on_focus_and_takes_the_focus_to_the_results(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    address = page.current_url
    assert _box(page, "#skip-link")["bottom"] <= 0, "the skip link is on the screen before it has the focus"
    ActionChains(page).send_keys(Keys.TAB).perform()   # the first stop on the page
    assert _focused(page) == "A#skip-link"
    _wait(page, lambda d: _box(d, "#skip-link")["top"] >= 0, "the focused skip link did not come onto the screen")
    link = page.find_element("id", "skip-link")
    assert link.is_displayed() and link.text == "Skip to the results"
    assert _in_view(page, "#skip-link")
    link.send_keys(Keys.ENTER)
    assert _focused(page) == "H2#results-title"
    assert page.current_url == address   # no #fragment left in the address (nor in a gallery's link)
    ActionChains(page).send_keys(Keys.TAB).perform()   # on into the results, past the whole search form
    assert _focused(page) == "BUTTON#browse"
    _wait(page, lambda d: _box(d, "#skip-link")["bottom"] <= 0, "the skip link stayed on the screen without the focus")


def _editor_state(page, card: str) -> dict:
    return page.execute_script("""
        const li = document.querySelector(arguments[0]), form = li.querySelector('.edit');
        return {open: !!form && !form.hidden, expanded: li.querySelector('.edit-open').getAttribute('aria-expanded'),
                label: form && form.querySelector('input').value, meta: form && form.querySelector('textarea').value,
                remove: form && form.querySelector('.danger').textContent,
                focusOnEdit: document.activeElement === li.querySelector('.edit-open')};""", card)


def test_escape_in_a_cards_editor_closes_it_unsaved_and_gives_the_focus_back_to_its_edit_button(
        page, page_server, gallery, tmp_path):
    from urllib.parse import quote

    from selenium.webdriver.common.keys import Keys

    _, _, query = gallery_image_file(gallery, 7, tmp_path)
    choose_k(page, 4)
    upload(page, query)
    wait_for_search(page)
    item_id = _ids(page)[1]
    item_url = f"{page_server.url}/index/{quote(item_id, safe='')}"
    stored = httpx.get(item_url, timeout=60).json()
    card = f'#results li:has(button.result[data-id="{item_id}"])'
    shown_label = page.find_element("css selector", f"{card} button.result .label").text
    edit = page.find_element("css selector", f"{card} button.edit-open")
    edit.send_keys(Keys.ENTER)
    _wait(page, lambda d: _editor_state(d, card)["open"])
    label = page.switch_to.active_element
    assert label.get_attribute("aria-label") == f"Label of {item_id}"
    label.send_keys(Keys.CONTROL, "a")
    label.send_keys("escaped-label", Keys.ESCAPE)   # from the label field
    state = _editor_state(page, card)
    assert not state["open"] and state["expanded"] == "false" and state["focusOnEdit"], state
    # opened again: the fields as stored; the metadata typed over, Delete armed, then Escape from Delete
    edit.send_keys(Keys.ENTER)
    _wait(page, lambda d: _editor_state(d, card)["open"] and _editor_state(d, card)["meta"])
    state = _editor_state(page, card)
    assert state["label"] == (stored["label"] or "") and json.loads(state["meta"]) == stored["metadata"], state
    meta = page.find_element("css selector", f"{card} .edit textarea")
    meta.send_keys(Keys.CONTROL, "a")
    meta.send_keys('{"escaped": true}', Keys.TAB, Keys.TAB, Keys.ENTER)   # Save passed over, Delete pressed once
    assert _editor_state(page, card)["remove"] == "Really delete?"
    assert page.switch_to.active_element.text == "Really delete?"
    page.switch_to.active_element.send_keys(Keys.ESCAPE)
    state = _editor_state(page, card)
    assert not state["open"] and state["expanded"] == "false" and state["focusOnEdit"], state
    edit.send_keys(Keys.ENTER)
    _wait(page, lambda d: _editor_state(d, card)["open"])
    state = _editor_state(page, card)
    assert json.loads(state["meta"]) == stored["metadata"] and state["remove"] == "Delete", state
    # nothing was saved (nor deleted): the service and the card say what they said before
    time.sleep(1)
    after = httpx.get(item_url, timeout=60)
    assert after.status_code == 200 and after.json()["label"] == stored["label"]
    assert after.json()["metadata"] == stored["metadata"]
    assert page.find_element("css selector", f"{card} button.result .label").text == shown_label
    assert "Saved" not in page.find_element("id", "search-status").text


def _tie(page, field_id: str) -> list:
    """A field's aria-invalid and aria-describedby, as a screen reader reads them."""
    return page.execute_script("const e = document.getElementById(arguments[0]);"
                               "return [e.getAttribute('aria-invalid'), e.getAttribute('aria-describedby')];", field_id)


def test_an_error_about_a_search_field_or_a_cards_metadata_is_tied_to_that_field_until_it_changes(
        page, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys

    # a file the service cannot read as an image: tied to the file input
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    upload(page, text)
    _wait(page, lambda d: d.find_element("id", "search-error").text)
    assert _tie(page, "file") == ["true", "search-error"]
    _, _, query = gallery_image_file(gallery, 8, tmp_path)
    choose_k(page, 4)
    upload(page, query)   # another file: the error and the tie go
    wait_for_search(page)
    assert page.find_element("id", "search-error").text == "" and _tie(page, "file") == ["false", None]
    # a metadata filter the service refuses: tied to that field, not to the file; typing in it clears both
    where = page.find_element("id", "where-filter")
    where.send_keys('{"n": [1]}', Keys.ENTER)
    _wait(page, lambda d: d.find_element("id", "search-error").text.startswith("where"))
    assert _tie(page, "where-filter") == ["true", "search-error"]
    assert _tie(page, "file") == ["false", None]
    where.send_keys(Keys.BACK_SPACE)
    assert page.find_element("id", "search-error").text == ""
    assert _tie(page, "where-filter") == ["false", None]
    where.clear()
    # One result per a key the service refuses: its hint kept in its description, the error added and taken off
    group = page.find_element("id", "group-by")
    group.send_keys("year", Keys.TAB)   # a change: searched again at once
    _wait(page, lambda d: d.find_element("id", "search-error").text.startswith("group_by"))
    assert _tie(page, "group-by") == ["true", "group-hint search-error"]
    group.send_keys(Keys.BACK_SPACE)
    assert _tie(page, "group-by") == ["false", "group-hint"]
    assert page.find_element("id", "search-error").text == ""
    # a card's metadata that is not a JSON object (the page's own check): tied to its box in the editor
    page.execute_script("document.getElementById('group-by').value = ''")
    page.find_element("id", "search-again").click()
    wait_for_search(page)
    card = f'#results li:has(button.result[data-id="{_ids(page)[0]}"])'
    page.find_element("css selector", f"{card} button.edit-open").click()
    meta = page.find_element("css selector", f"{card} .edit textarea")
    meta.send_keys(Keys.CONTROL, "a")
    meta.send_keys("[1]")
    page.find_element("css selector", f"{card} .edit button.secondary").click()   # Save
    _wait(page, lambda d: "must be a JSON object" in d.find_element("id", "search-error").text)
    tied = page.execute_script("const m = arguments[0];"
                               "return [m.getAttribute('aria-invalid'), m.getAttribute('aria-describedby')];", meta)
    assert tied == ["true", "search-error"]
    meta.send_keys(Keys.BACK_SPACE)
    assert page.find_element("id", "search-error").text == ""
    assert meta.get_attribute("aria-invalid") == "false" and meta.get_attribute("aria-describedby") is None


def test_an_error_about_max_distance_or_an_add_form_field_is_tied_to_that_field_until_it_changes(
        page, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _, _, query = gallery_image_file(gallery, 9, tmp_path)
    box = page.find_element("id", "max-distance")
    box.send_keys("1e")   # not a number: the page's own error
    upload(page, query)
    _wait(page, lambda d: d.find_element("id", "search-error").text.startswith("Max distance"))
    assert _tie(page, "max-distance") == ["true", "search-error"] and _tie(page, "file") == [None, None]
    box.send_keys("-1")
    assert page.find_element("id", "search-error").text == "" and _tie(page, "max-distance") == ["false", None]
    # the add form: no files chosen, then a key the service refuses
    _open_add_panel(page)
    page.find_element("id", "add-submit").click()
    _wait(page, lambda d: d.find_element("id", "add-error").text)
    assert _tie(page, "add-files") == ["true", "add-error"]
    page.find_element("id", "add-files").send_keys(str(query))
    assert page.find_element("id", "add-error").text == "" and _tie(page, "add-files") == ["false", None]
    key = page.find_element("id", "api-key")
    key.send_keys("not-the-key")
    page.find_element("id", "add-submit").click()
    _wait(page, lambda d: d.find_element("id", "add-error").text)
    assert _tie(page, "api-key") == ["true", "api-key-hint add-error"]
    assert _tie(page, "add-files") == ["false", None]
    key.send_keys(Keys.BACK_SPACE)
    assert page.find_element("id", "add-error").text == "" and _tie(page, "api-key") == ["false", "api-key-hint"]


# Every control a person can press or type in, measured as a finger meets it: a visually hidden input by the
# label that stands for it (the file input by its drop zone).
_TARGETS = """
    const controls = 'a[href], button, input, select, textarea, summary, [tabindex]:not([tabindex="-1"])';
    return [...document.querySelectorAll(controls)]
      .filter(e => e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden')
      .map(e => { const t = e.classList.contains('visually-hidden') ? e.closest('label') : e;
                  const r = t.getBoundingClientRect();
                  return {what: `${e.tagName.toLowerCase()}#${e.id}.${e.className}`,
                          text: e.textContent.trim().slice(0, 30), width: r.width, height: r.height}; });"""


def test_every_control_is_a_touch_target_of_24_css_pixels_or_more_on_a_phone_screen(
        page, page_server, gallery, shared_data, tmp_path):
    extra = cifar10_images(shared_data, 1, skip=PER_CLASS + 7)[:1]
    key = {"X-API-Key": API_KEY}
    r = httpx.post(page_server.url + "/index", params={"gallery": "zz-targets"}, headers=key,
                   files=[("file", (name, data, "image/jpeg")) for name, _, data in extra], timeout=60)
    assert r.status_code == 201, r.text   # a second gallery: the header offers the Galleries choice
    _, photo = _photo(gallery, 10, tmp_path)
    _emulate(page, 375, 667)
    try:
        page.get(page_server.url + "/")
        _wait(page, lambda d: d.find_element("id", "gallery-choice").is_displayed())
        _open_add_panel(page)
        choose_k(page, 4)
        upload(page, photo)   # a photo: the region picker and Select a region
        wait_for_search(page)
        ids = _ids(page)
        _mark(page, ids[0], "like")   # the marks line with its two buttons
        card = f'#results li:has(button.result[data-id="{ids[1]}"])'
        page.find_element("css selector", f"{card} button.edit-open").click()   # a card's editor
        targets = page.execute_script(_TARGETS)
        assert page.execute_script("return document.documentElement.clientWidth") == 375
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        httpx.delete(page_server.url + "/galleries/zz-targets", headers=key, timeout=60)
    shown = " ".join(t["what"] for t in targets)
    for what in ("#skip-link", "#gallery-select", "#gallery-open", "#file", "#k", "#search-again", "summary",
                 "#add-skip", "#add-files", "#region-mode", "#feedback-search", ".like", ".unlike", "edit-open",
                 "textarea", "danger", "#browse", "#query-frame"):
        assert what in shown, f"{what} was not measured: {shown}"
    small = [t for t in targets if t["width"] < 24 - 0.01 or t["height"] < 24 - 0.01]
    assert not small, small


# The longest transition or animation anywhere on the page (every element and its ::before and ::after), in
# seconds, and where: an animation's duration times its iterations (infinite: forever).
_LONGEST_MOTION = """
    const seconds = (t) => parseFloat(t) * (t.trim().endsWith('ms') ? 0.001 : 1);
    let longest = {seconds: 0, what: null};
    for (const e of document.querySelectorAll('*')) for (const pseudo of [null, '::before', '::after']) {
      const s = getComputedStyle(e, pseudo);
      const runs = s.transitionDuration.split(',').map(seconds);
      if (s.animationName.split(',').some(n => n.trim() !== 'none')) {
        const counts = s.animationIterationCount.split(',').map(c => c.trim() === 'infinite' ? Infinity : +c);
        s.animationDuration.split(',').forEach((d, i) => runs.push(seconds(d) * counts[i % counts.length]));
      }
      const most = Math.max(...runs);
      if (most > longest.seconds) longest = {seconds: most, what: `${e.tagName}#${e.id}.${e.className}${pseudo || ''}`};
    }
    return longest;"""


def test_with_reduced_motion_asked_for_no_transition_lasts_over_a_hundredth_of_a_second_nor_a_scroll_is_smooth(
        page, gallery, tmp_path):
    from selenium.webdriver.common.keys import Keys

    # without the setting the skip link slides in: a motion there is to take away
    moving = page.execute_script(_LONGEST_MOTION)
    assert moving["seconds"] > 0.01, moving
    _, _, query = gallery_image_file(gallery, 11, tmp_path)
    page.execute_cdp_cmd("Emulation.setEmulatedMedia",
                         {"features": [{"name": "prefers-reduced-motion", "value": "reduce"}]})
    _emulate(page, 375, 667)
    try:
        page.get(page.current_url)
        _wait(page, lambda d: d.find_element("id", "gallery-count").text not in ("", "…"))
        assert page.execute_script("return matchMedia('(prefers-reduced-motion: reduce)').matches")
        # every scroll the page asks for is instant: a search from the form brings the results up, the skip link
        page.execute_script("window.scrolls = []; const into = Element.prototype.scrollIntoView;"
                            "Element.prototype.scrollIntoView = function (o) {"
                            "  window.scrolls.push(o && o.behavior); return into.call(this, o); };")
        choose_k(page, 4)
        upload(page, query)
        wait_for_search(page)
        page.execute_script("scrollTo(0, 0); document.getElementById('skip-link').focus()")
        assert _focused(page) == "A#skip-link"
        still = page.execute_script(_LONGEST_MOTION)   # with the skip link focused, results shown
        page.switch_to.active_element.send_keys(Keys.ENTER)
        assert _focused(page) == "H2#results-title"
        scrolls = page.execute_script("return window.scrolls")
    finally:
        page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert still["seconds"] <= 0.01, still
    assert len(scrolls) >= 2 and set(scrolls) == {"auto"}, scrolls
