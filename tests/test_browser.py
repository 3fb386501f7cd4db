"""The page in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium).

Uploads an image, reads the prediction and the neighbour cards, forgets a neighbour with the API key
(then another, erasing it from the memory's segments), and saves screenshots to test-artifacts/. Skips
locally without Chromium; FAILS in CI, where it must run.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.text import visible
from server import Settings, create_app
from tests._server_fixtures import API_KEY, COLORS, fill_memory, live_server, make_memory_images, texture
from tests.conftest import IN_CI, REPO

ARTIFACTS = REPO / "test-artifacts"


def _require(what: str, found: object) -> None:
    if not found:
        msg = f"{what} is needed for the browser test (scripts/install.sh installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def _launch_chromium():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    _require("Debian's chromium package", chromium)
    _require("Debian's chromium-driver package", driver_path)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require("selenium (pip install -e '.[dev]')", None)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    return driver


def _fresh_tab(driver) -> None:
    """Leave `driver` with one new tab, in front, and nothing kept from the tabs before it: a new tab has its own
    sessionStorage (the page keeps the API key there) and none of the old tab's emulation (media features, a
    phone's screen); cookies and the HTTP cache are cleared, and each old page's localStorage too."""
    old = driver.window_handles
    for handle in old:
        driver.switch_to.window(handle)
        driver.execute_script("try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}")
    driver.switch_to.new_window("tab")
    tab = driver.current_window_handle
    for handle in old:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(tab)
    driver.execute_cdp_cmd("Page.bringToFront", {})  # else the page lacks focus (document.hasFocus() is false)
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    assert driver.window_handles == [tab] and driver.execute_script("return document.hasFocus()")


@pytest.fixture(scope="module")
def _chromium():
    """One Chromium for the module (a launch is ~1-2 s of each test): each test gets a fresh tab of it."""
    held: dict = {}
    yield held
    if "driver" in held:
        held["driver"].quit()


@pytest.fixture
def browser(_chromium):
    driver = _chromium.get("driver")
    if driver is not None:
        try:
            _fresh_tab(driver)
        except Exception:  # a test left it unusable (a dialog open, a page hung): start another
            with contextlib.suppress(Exception):
                driver.quit()
            driver = None
    if driver is None:
        driver = _chromium["driver"] = _launch_chromium()
    yield driver


@pytest.fixture
def page_url(tmp_path, lite0):
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    with live_server(create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)) as url:
        yield url
    mem.close()


def confirm_forget(wait, card, choice: str = "forget-one") -> str:
    """After a card's Forget: wait for the question it asks in the card, answer it (`forget-one`, `forget-copies` or
    `forget-cancel`); the question."""
    from selenium.webdriver.common.by import By

    box = card.find_element(By.CLASS_NAME, "forget-confirm")
    wait.until(lambda d: box.is_displayed())
    question = box.find_element(By.CLASS_NAME, "forget-question").text
    box.find_element(By.CLASS_NAME, choice).click()
    return question


def test_upload_read_the_neighbours_and_forget_one(browser, page_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4242))

    browser.get(page_url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    browser.find_element(By.ID, "k").send_keys("5")
    browser.find_element(By.ID, "file").send_keys(str(query))  # choosing the file classifies it

    wait.until(lambda d: d.find_element(By.ID, "prediction").text.strip())
    assert browser.find_element(By.ID, "prediction").text == "red"
    # ... and a screen reader is told, in one sentence (a live region; the answer is drawn elsewhere)
    wait.until(lambda d: d.find_element(By.ID, "announce").get_attribute("textContent").startswith("red, "))
    assert "of 5 neighbours" in browser.find_element(By.ID, "announce").get_attribute("textContent")
    cards = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")
    assert len(cards) == 5
    first = cards[0]
    assert first.find_element(By.CLASS_NAME, "label").text == "red"
    assert first.find_element(By.CLASS_NAME, "weight").text.startswith("weight ")
    assert "novelty" in browser.find_element(By.ID, "badges").text
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('.neighbor-card img')].every(i => i.complete && i.naturalWidth > 0)"))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-classified.png"))

    # Forget the nearest neighbour: the key goes in the key box, then Forget on the card, which asks first (what
    # goes is gone for good) and names the points that look like copies of it (these textures of one colour do).
    victim = first.get_attribute("data-point-id")
    browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    first.find_element(By.CLASS_NAME, "forget").click()
    asked = first.find_element(By.CLASS_NAME, "forget-confirm")
    wait.until(lambda d: asked.is_displayed())
    assert d_active_class(browser) == "forget-one"  # the keyboard on the answer
    question = asked.find_element(By.CLASS_NAME, "forget-question").text
    assert question.startswith("Forget this point (red)? No answer will cite it again.")
    browser.save_screenshot(str(ARTIFACTS / "page-forget-asks.png"))
    assert "12 points" in browser.find_element(By.ID, "stats").text  # asking forgot nothing
    watch_focus_dropped(browser)
    asked.find_element(By.CLASS_NAME, "forget-one").click()
    wait.until(lambda d: "11 points" in d.find_element(By.ID, "stats").text)

    def card_ids(d) -> list[str]:
        cards = d.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")
        return [c.get_attribute("data-point-id") for c in cards]

    wait.until(lambda d: len(card_ids(d)) == 5 and victim not in card_ids(d))  # re-classified without it
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    assert browser.find_element(By.ID, "edit-note").text == "forgot a point labelled red"
    # Its card is gone: the keyboard's focus is on what happened, not dropped to the top of the page, even while the
    # answer was asked again
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "edit-note")
    assert focus_dropped(browser) == []
    browser.save_screenshot(str(ARTIFACTS / "page-after-forget.png"))
    assert Path(ARTIFACTS / "page-after-forget.png").stat().st_size > 10_000

    # With "also erase" ticked (an embedded memory offers it), the next forget rewrites the files too.
    erase = browser.find_element(By.ID, "erase")
    assert erase.is_enabled()
    erase.click()
    second = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    second_id = second.get_attribute("data-point-id")
    second.find_element(By.CLASS_NAME, "forget").click()
    # What the CLI says: the segments, not all the memory's files (the engine's write-ahead log keeps its latest writes)
    question = confirm_forget(wait, second)
    assert "erased from the memory's segments (the engine's write-ahead log keeps its latest writes" in question
    assert "this cannot be undone" in question
    wait.until(lambda d: "10 points" in d.find_element(By.ID, "stats").text)
    wait.until(lambda d: "erased its vector from the memory's segments" in d.find_element(By.ID, "edit-note").text)
    wait.until(lambda d: len(card_ids(d)) == 5 and second_id not in card_ids(d))
    browser.save_screenshot(str(ARTIFACTS / "page-after-erase.png"))

    # The memory's journal, newest first: the erase, then the two forgets made through the page.
    browser.find_element(By.CSS_SELECTOR, "#history-box summary").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history-list li")) == 3)
    edits = browser.find_elements(By.CSS_SELECTOR, "#history-list li")
    assert [e.get_attribute("data-op") for e in edits] == ["erase", "forget", "forget"]
    assert edits[1].text.endswith("forget 1 point (red: 1) via http (key default)")  # VMEM_API_KEY's name
    browser.save_screenshot(str(ARTIFACTS / "page-history.png"))


def test_the_history_list_says_how_many_earlier_edits_it_leaves_out_and_shows_them_a_page_at_a_time(browser,
                                                                                                     page_url):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # 43 edits over HTTP: one point relabelled back and forth; the list shows the newest 20 of them.
    with httpx.Client(base_url=page_url, headers={"X-API-Key": API_KEY}, timeout=30) as http:
        point = http.get("/v1/memory/points", params={"limit": 1}).json()["points"][0]
        other = next(c for c in COLORS if c != point["label"])  # the first point's label varies with tmp paths
        for i in range(43):
            to = other if i % 2 == 0 else point["label"]
            assert http.patch(f"/v1/memory/points/{point['id']}", json={"label": to}).status_code == 200
        journal = http.get("/v1/memory/history", params={"limit": 1000, "ids": "false"}).json()["entries"]
    assert len(journal) == 43

    browser.get(page_url + "/")
    browser.find_element(By.CSS_SELECTOR, "#history-box summary").click()
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history-list li[data-earlier]"))

    def listed() -> list[str]:
        return [e.find_element(By.TAG_NAME, "time").get_attribute("datetime")
                for e in browser.find_elements(By.CSS_SELECTOR, "#history-list li[data-op]")]

    assert listed() == [e["at"] for e in journal[:20]]
    rest = browser.find_element(By.CSS_SELECTOR, "#history-list li[data-earlier]")
    assert rest.text.startswith("… and 23 earlier edits")

    # "Show earlier", from the keyboard: the next page comes after the first, and the keyboard is on its first edit,
    # from which Tab reaches the button again
    more = rest.find_element(By.CLASS_NAME, "show-earlier")
    assert more.text == "Show 20 earlier"
    more.send_keys(Keys.ENTER)
    wait.until(lambda d: len(listed()) == 40)
    assert listed() == [e["at"] for e in journal[:40]]
    focused = browser.switch_to.active_element
    assert focused.get_attribute("data-op") == "relabel"
    assert focused.find_element(By.TAG_NAME, "time").get_attribute("datetime") == journal[20]["at"]
    rest = browser.find_element(By.CSS_SELECTOR, "#history-list li[data-earlier]")
    assert rest.text.startswith("… and 3 earlier edits")
    focused.send_keys(Keys.TAB)
    more = browser.switch_to.active_element
    assert more.text == "Show 3 earlier"

    # The last page: every edit listed once, in order, and nothing left to show
    more.send_keys(Keys.ENTER)
    wait.until(lambda d: len(listed()) == 43)
    assert listed() == [e["at"] for e in journal]
    assert browser.find_elements(By.CSS_SELECTOR, "#history-list li[data-earlier]") == []
    assert browser.switch_to.active_element.find_element(By.TAG_NAME, "time").get_attribute("datetime") == (
        journal[40]["at"])


def test_a_labels_list_asked_for_twice_at_once_shows_each_point_once(browser, page_url):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with httpx.Client(base_url=page_url, headers={"X-API-Key": API_KEY}, timeout=60) as http:
        files = [("images", (f"y{i}.png", texture((240, 230, 20), 700 + i), "image/png")) for i in range(30)]
        assert http.post("/v1/memory", files=files, data={"label": "yellow"}).status_code == 201
        assert http.put("/v1/memory/label-names", json={"names": {"yellow": "gold"}}).status_code == 200
    browser.get(page_url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#label-list li[data-label='yellow'] button"))
    browser.execute_script("document.querySelector(\"#label-list li[data-label='yellow'] button\").click()")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")) == 24)
    browser.execute_script("const more = document.getElementById('label-more'); more.click(); more.click();")
    wait.until(lambda d: d.find_element(By.ID, "label-more").get_attribute("hidden") is not None)
    cards = [c.get_attribute("data-point-id")
             for c in browser.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")]
    assert len(cards) == len(set(cards)) == 30  # a double click asked for the next page twice: shown twice
    assert browser.find_element(By.ID, "label-note").text == "30 of 30 points shown"
    # The journal's naming edit says how many labels it named (it said "0 points").
    browser.find_element(By.CSS_SELECTOR, "#history-box summary").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history-list li[data-op='name']"))
    assert " name 1 label via http" in browser.find_element(By.CSS_SELECTOR, "#history-list li[data-op='name']").text



def drop_files(driver, element, *paths: Path) -> None:
    """Drag files from outside the browser and drop them on the middle of `element`, as a person's mouse does (the
    browser's own drag events, not ones made in the page)."""
    rect = driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); "
                                 "const r = arguments[0].getBoundingClientRect(); "
                                 "return [r.x + Math.min(r.width / 2, 40), r.y + Math.min(r.height / 2, 40)]", element)
    data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}
    for step in ("dragEnter", "dragOver", "drop"):
        driver.execute_cdp_cmd("Input.dispatchDragEvent", {"type": step, "x": rect[0], "y": rect[1], "data": data})


def test_an_image_dropped_beside_the_drop_zone_is_classified(browser, page_url, tmp_path):
    # Dropped a little beside the zone (on the page's heading, or where the answer shows), the image had been refused
    # by the page, and a desktop browser then opened the file in the page's place: the answer and options gone.
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(texture(COLORS["red"], seed=4271))
    second.write_bytes(texture(COLORS["blue"], seed=4272))
    wait = WebDriverWait(browser, 30)
    browser.get(page_url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    drop_files(browser, browser.find_element(By.TAG_NAME, "h1"), first)
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "red")
    assert browser.current_url == page_url + "/"
    assert browser.find_element(By.ID, "file-chosen").get_attribute("textContent") == "chosen: first.png"
    drop_files(browser, browser.find_element(By.ID, "neighbors"), second)  # on the answer's cards
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "blue")
    drop_files(browser, browser.find_element(By.ID, "drop"), first)  # the zone itself: one request, as before
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "red")
    assert browser.execute_script("return classifySeq") == 3
    assert "over" not in browser.find_element(By.ID, "drop").get_attribute("class")


def test_a_bad_upload_shows_the_problem_detail(browser, page_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    browser.get(page_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "not a recognised image format" in browser.find_element(By.ID, "error").text




def test_an_image_the_browser_cannot_show_is_said_to_have_no_preview_and_is_classified(browser, page_url, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # A TIFF (a scanner's, a microscope's) is classified by the service, but Chromium draws none: the drop zone had
    # shown a broken image's icon beside the answer, as if the upload had failed.
    query = tmp_path / "scan.tiff"
    Image.open(io.BytesIO(texture(COLORS["red"], seed=4277))).save(query)
    wait = WebDriverWait(browser, 30)
    browser.get(page_url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "red")
    hint = browser.find_element(By.ID, "drop-hint")
    wait.until(lambda d: hint.is_displayed())
    assert hint.text == "scan.tiff: no preview in this browser"
    assert not browser.find_element(By.ID, "preview").is_displayed()
    shown = tmp_path / "shown.png"  # then an image it draws: its preview, the note gone
    shown.write_bytes(texture(COLORS["blue"], seed=4278))
    browser.find_element(By.ID, "file").send_keys(str(shown))
    wait.until(lambda d: d.execute_script("const p = document.getElementById('preview');"
                                          " return !p.hidden && p.complete && p.naturalWidth > 0"))
    assert not hint.is_displayed()



def test_the_preview_of_the_image_before_is_let_go(browser, page_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Each preview is a blob URL of its file: kept, a session of many photos held every one of them until the tab
    # closed.
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(texture(COLORS["red"], seed=4279))
    second.write_bytes(texture(COLORS["blue"], seed=4280))
    wait = WebDriverWait(browser, 30)
    browser.get(page_url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    browser.find_element(By.ID, "file").send_keys(str(first))
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "red")
    before = browser.find_element(By.ID, "preview").get_attribute("src")
    browser.find_element(By.ID, "file").send_keys(str(second))
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "blue")
    read = ("return new Promise((done) => { const i = new Image(); i.onload = () => done('read');"
            " i.onerror = () => done('gone'); i.src = arguments[0]; })")
    assert browser.execute_script(read, before) == "gone"
    assert browser.execute_script(read, browser.find_element(By.ID, "preview").get_attribute("src")) == "read"


def test_the_same_image_chosen_again_after_an_error_is_asked_again(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from starlette.responses import JSONResponse

    # The service was restarting at the first try: choosing the same file again, a person's retry, had done nothing
    # (a file input reports no change for the file it holds), the error left on show.
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    service = create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)
    refused = []

    async def restarting_at_first(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/classify" and not refused:
            refused.append(scope["path"])
            problem = {"title": "Service Unavailable", "detail": "the memory is still loading; retry shortly"}
            return await JSONResponse(problem, 503, media_type="application/problem+json")(scope, receive, send)
        return await service(scope, receive, send)

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4275))
    with live_server(restarting_at_first) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
        browser.find_element(By.ID, "file").send_keys(str(query))
        wait.until(lambda d: "still loading" in d.find_element(By.ID, "error").text)
        browser.find_element(By.ID, "file").send_keys(str(query))  # the same file, chosen again
        wait.until(lambda d: d.find_element(By.ID, "prediction").text == "red")
        assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
        assert browser.find_element(By.ID, "file-chosen").get_attribute("textContent") == "chosen: query.png"
    mem.close()


def test_re_ranking_on_the_page_asks_for_the_key_first(browser, page_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=5))
    browser.get(page_url + "/")
    # The templates to choose from, the default named once, as the blank choice.
    options = lambda d: [o.text for o in d.find_elements(By.CSS_SELECTOR, "#template option")]  # noqa: E731
    WebDriverWait(browser, 30).until(lambda d: len(options(d)) > 1)
    assert options(browser) == ["neighbors-v1 (default)", "agentic-v1", "labels-only"]
    assert not browser.find_element(By.ID, "template-errors").is_displayed()  # every template loaded
    browser.find_element(By.ID, "rerank").click()
    browser.find_element(By.ID, "file").send_keys(str(query))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == "enter the API key to re-rank with the VLM"
    assert browser.find_element(By.ID, "key-box").get_attribute("open") is not None
    # ... which the key box said it was for (it had named the edits only)
    assert browser.find_element(By.CSS_SELECTOR, "#key-box summary").text == (
        "API key (to re-rank with the VLM, or to add, forget or relabel points)")
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "classify-btn").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "prediction").text)
    assert browser.find_element(By.ID, "prediction").text.startswith("red")
    assert not browser.find_element(By.ID, "error").text



def test_the_template_is_chosen_with_re_ranking_only(browser, page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Only a re-rank reads the template: offered without it, a template chosen changed nothing, unsaid.
    browser.get(page_url + "/")
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#template option")) > 1)
    template = browser.find_element(By.ID, "template")
    assert not template.is_enabled()
    browser.find_element(By.ID, "rerank").click()
    assert template.is_enabled()
    browser.find_element(By.ID, "rerank").click()
    assert not template.is_enabled()


def test_the_page_says_which_templates_could_not_be_loaded_and_why(browser, page_url, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mine.yaml").write_text("name: mine\nversion: 1\nsystem: Classify the image.\n")
    (tmp_path / "templates" / "fine-grained.yaml").write_text("name: fine-grained\nversion: 1\n")  # no system
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path / "templates"))
    browser.get(page_url + "/")
    options = lambda d: [o.text for o in d.find_elements(By.CSS_SELECTOR, "#template option")]  # noqa: E731
    WebDriverWait(browser, 30).until(lambda d: len(options(d)) > 1)
    # The broken one is not offered, and the note beside the choice says why (it had just been missing).
    assert options(browser) == ["neighbors-v1 (default)", "agentic-v1", "labels-only", "mine"]
    note = browser.find_element(By.ID, "template-errors")
    assert note.is_displayed()
    lines = note.text.splitlines()
    assert lines[0] == "1 template could not be loaded:"
    assert [line.strip() for line in lines[1:]] == ["fine-grained: invalid template:", "system: Field required"]
    assert str(tmp_path) not in note.text  # the server's path to the file: the name says which one
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-template-errors.png"))


def test_the_page_escapes_a_lone_surrogate_as_the_cli_does(browser, page_url):
    # JSON's "\udce9" is a lone surrogate in the page: Python's visible writes it as the byte of a file name that
    # is not UTF-8 (\xe9), another as \ud800; the page had drawn it as a box (or nothing). Built in the page, by
    # code unit, and brought back as JSON text: WebDriver's JSON would carry one neither way.
    texts = [[0x63, 0x61, 0x66, 0xDCE9, 0x2E, 0x70, 0x6E, 0x67], [0x61, 0xD800, 0x62], [0x5C, 0xDCE9],
             [0x5C, 0x78, 0x65, 0x39, 0xDCE9], [0xDFFF]]
    browser.get(page_url + "/")
    shown = json.loads(browser.execute_script(
        "return JSON.stringify(arguments[0].map((units) => visible(String.fromCharCode(...units))))", texts))
    assert shown == [visible("".join(map(chr, units))) for units in texts]
    assert shown[:2] == ["caf\\xe9.png", "a\\ud800b"]


def test_a_memory_on_a_qdrant_server_offers_no_erase(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # qdrant-client's local mode runs the server backend's code: the service refuses erase there.
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: "(qdrant)" in d.find_element(By.ID, "stats").text)
        assert not browser.find_element(By.ID, "erase").is_enabled()
    mem.close()


def _served_read_only(folder: Path, lite0, **app_args):
    """The app of `vmem serve --read-only` over the memory in `folder` (closed by whoever wrote it), and its memory."""
    from retrieval import open_store
    from vmem import VisualMemory

    mem = VisualMemory(open_store(folder, read_only=True), lite0)
    return create_app(Settings(memory=str(folder), api_key=API_KEY, read_only=True), memory=mem, **app_args), mem


def edit_controls_shown(driver) -> list[str]:
    """The classes of the edit controls a user can see (and a screen reader reach): the cards' Forget and Relabel,
    their question and form, the audit's Relabel, "also erase", the answer's Add."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, ".forget, .forget-confirm button, .relabel, .relabel-form input, "
                                                  ".relabel-suggested, #erase, #teach-label, #teach-add")
    return [e.get_attribute("class") or e.get_attribute("id") for e in found if e.is_displayed()]


def test_a_memory_served_read_only_is_said_so_and_offers_no_edit(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By

    from eval.label_audit import audit_labels

    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    mem.relabel("blue", ids=[mem.store.ids_where(label="red")[0]])  # a mislabel, for the audit to find
    mem.close()
    app, mem = _served_read_only(tmp_path / "memory", lite0,
                                 auditor=lambda store, progress: audit_labels(store, k=3, progress=progress))
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4246))
    with live_server(app) as url:
        # Its Forget and Relabel had been offered, each failing with a 503 once the question was answered.
        wait = classify_on_the_page(browser, url + "/", query, k=5)
        note = browser.find_element(By.ID, "read-only-note")
        wait.until(lambda d: note.is_displayed())
        assert note.text == ("The memory is served read-only: classify and browse it here; nothing can be added to "
                             "it, and its points cannot be forgotten or relabelled on this service.")  # nor Add
        assert note.get_attribute("role") == "status"
        assert browser.find_element(By.ID, "prediction").text == "red"
        assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")) == 5
        browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()  # the key re-ranks: its box stays
        assert browser.find_element(By.CSS_SELECTOR, "#key-box summary").text == "API key (to re-rank with the VLM)"
        # The memory is read as ever: a label's points, the audit, the history, without an edit among them.
        browser.find_element(By.XPATH, "//ol[@id='scores']//button[.='red']").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")) == 3)
        browser.find_element(By.CSS_SELECTOR, "#suspects-box summary").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#suspects-list li"))
        browser.find_element(By.CSS_SELECTOR, "#history-box summary").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history-list li[data-op='relabel']"))
        assert edit_controls_shown(browser) == []
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "page-read-only.png"))
    mem.close()


def test_a_service_restarted_read_only_under_an_open_page_refuses_the_edit_and_the_page_follows(browser, tmp_path,
                                                                                                lite0):
    from selenium.webdriver.common.by import By

    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4247))
    with live_server(create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)) as url:
        wait = classify_on_the_page(browser, url + "/", query, k=3)
        browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
        browser.find_element(By.ID, "api-key").send_keys(API_KEY)
        card = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
        card.find_element(By.CLASS_NAME, "forget").click()  # asked, while the service takes edits
        wait.until(lambda d: card.find_element(By.CLASS_NAME, "forget-confirm").is_displayed())
        assert browser.find_element(By.ID, "read-only-note").text == ""
    mem.close()
    app, mem = _served_read_only(tmp_path / "memory", lite0)
    with live_server(app, port=int(url.rsplit(":", 1)[1])):  # restarted read-only, where the page is
        card.find_element(By.CLASS_NAME, "forget-one").click()
        # The service's own words, where the page says what failed; then the page says why, and offers no more edits.
        wait.until(lambda d: d.find_element(By.ID, "error").text)
        said = browser.find_element(By.ID, "error").text
        assert said.startswith("could not forget red: the memory ") and "is served read-only" in said, said
        wait.until(lambda d: d.find_element(By.ID, "read-only-note").is_displayed())
        assert edit_controls_shown(browser) == []
        # The keyboard was on "Forget it", gone: it is on the note that says why
        assert browser.switch_to.active_element.get_attribute("id") == "read-only-note"
        assert "12 points" in browser.find_element(By.ID, "stats").text
    mem.close()


def test_the_page_works_behind_a_path_prefix(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from starlette.applications import Starlette
    from starlette.routing import Mount

    # Served at /vmem, as behind a proxy with `--root-path /vmem`: the app's links carry the prefix.
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    app = create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["blue"], seed=4243))
    with live_server(Starlette(routes=[Mount("/vmem", app=app)])) as url:
        wait = classify_on_the_page(browser, url + "/vmem/", query, k=3)
        assert browser.find_element(By.ID, "prediction").text == "blue"
        thumbs = "[...document.querySelectorAll('.neighbor-card img')]"
        wait.until(lambda d: d.execute_script(f"return {thumbs}.length === 3 && {thumbs}.every(i => i.complete)"))
        srcs = browser.execute_script(f"return {thumbs}.map(i => i.src)")
        assert all(src.startswith(url + "/vmem/v1/memory/points/") for src in srcs), srcs
        assert browser.execute_script(f"return {thumbs}.every(i => i.naturalWidth > 0)")
    mem.close()


def test_a_proxy_s_own_refusal_is_explained_on_the_page(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from starlette.responses import HTMLResponse

    # In front of the service, as nginx with its default client_max_body_size (1 MB): an upload over the proxy's
    # limit gets the proxy's HTML page, not the service's problem+json. The page had shown "HTTP 413" alone.
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    service = create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)

    async def proxy(scope, receive, send):
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if scope["type"] == "http" and int(length) > 1_000:
            page = HTMLResponse("<html><center><h1>413 Request Entity Too Large</h1></center>nginx</html>", 413)
            return await page(scope, receive, send)
        return await service(scope, receive, send)

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4245))
    assert query.stat().st_size > 1_000
    with live_server(proxy) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
        browser.find_element(By.ID, "file").send_keys(str(query))
        wait.until(lambda d: d.find_element(By.ID, "error").text.strip())
        said = browser.find_element(By.ID, "error").text
        assert "larger than a proxy in front of the service accepts" in said and said.endswith("(HTTP 413)"), said
        assert said.startswith(f"query.png is {query.stat().st_size:,} bytes: "), said  # by how much, to choose
    mem.close()



def classify_requests(http) -> float:
    """Classify requests the service has answered, by /metrics (any status)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in http.get("/metrics").text.splitlines()
               if line.startswith("vmem_http_requests_total{") and "/v1/classify" in line)


def test_an_image_over_the_service_s_upload_limit_is_refused_on_the_page_with_its_size(browser, tmp_path, lite0):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The service's limit is in its stats: an image over it is refused at once, in the words of the service's 413
    # ("the request body", the limit in bytes), beside the image's size in the same unit. It had been sent whole
    # first (a 75 MB photo: seconds of upload for that one line).
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    huge = tmp_path / "photo.png"
    huge.write_bytes(texture(COLORS["red"], seed=4273, size=96))
    # Under the limit itself, over it with the form's headers: the service's own 413, said the same way
    near = tmp_path / "near.png"
    near.write_bytes(np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    small = tmp_path / "small.png"
    small.write_bytes(texture(COLORS["red"], seed=4273, size=24))
    assert huge.stat().st_size > 4096 > near.stat().st_size and small.stat().st_size < 3000
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY, max_upload_bytes=4096),
                                memory=mem)) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/v1/memory/stats").json()["max_upload_bytes"] == 4096
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
        browser.find_element(By.ID, "file").send_keys(str(huge))
        wait.until(lambda d: d.find_element(By.ID, "error").text.strip())
        assert browser.find_element(By.ID, "error").text == (
            f"photo.png is {huge.stat().st_size:,} bytes: the request body is over the limit of 4,096 bytes")
        assert classify_requests(http) == 0  # nothing was sent

        browser.find_element(By.ID, "file").send_keys(str(near))
        wait.until(lambda d: d.find_element(By.ID, "error").text.startswith("near.png"))
        assert browser.find_element(By.ID, "error").text == (
            "near.png is 4,000 bytes: the request body is over the limit of 4,096 bytes")
        assert classify_requests(http) == 1

        # An image under the limit is sent and classified as ever
        browser.find_element(By.ID, "file").send_keys(str(small))
        wait.until(lambda d: d.find_element(By.ID, "answer").is_displayed())
        assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
        assert classify_requests(http) == 2
    mem.close()


def d_active_class(driver) -> str:
    return driver.switch_to.active_element.get_attribute("class") or ""


def watch_focus_dropped(driver) -> None:
    """From now on, note each control whose going (removed, hidden) let the keyboard's focus fall to the page."""
    driver.execute_script("""window.focusDropped = [];
      document.addEventListener("focusout", (e) => setTimeout(() => {
        if (document.activeElement === document.body) window.focusDropped.push(e.target.id || e.target.className);
      }), true);""")


def focus_dropped(driver) -> list[str]:
    """What `watch_focus_dropped` noted, once every check already set off has run: each runs in a timeout after its
    focusout, and a timeout set now runs after those (timers of one delay run in the order set). Read at once, a drop
    an instant before was not noted yet."""
    return driver.execute_async_script("const done = arguments[arguments.length - 1];"
                                       "setTimeout(() => done(window.focusDropped));")


def watch_live_regions(driver) -> None:
    """From now on, note what a screen reader is told unasked: each live region's text ("id: text") as it changes,
    while the region is shown and live (a status, an alert, or aria-live other than off), and the text of what the
    page sends the keyboard to that is no control (tabindex -1: a note, a heading), which it reads there."""
    driver.execute_script("""window.liveSaid = [];
      if (window.liveWatched) return;
      window.liveWatched = true;
      document.addEventListener("focusin", (e) => {
        if (e.target.getAttribute("tabindex") === "-1") window.liveSaid.push(`${e.target.id}: ${e.target.textContent}`);
      });
      const live = (e) => e.closest("[aria-live], [role=status], [role=alert]");
      const on = (r) => r.getAttribute("aria-live") !== "off" && r.checkVisibility();
      new MutationObserver((changes) => {
        const regions = new Set(changes.map((c) => live(c.target.nodeType === 1 ? c.target : c.target.parentElement))
          .filter(Boolean));
        for (const r of regions) if (on(r) && r.textContent) window.liveSaid.push(`${r.id}: ${r.textContent}`);
      }).observe(document.body, { subtree: true, childList: true, characterData: true });""")


def live_regions_said(driver) -> list[str]:
    return driver.execute_script("return window.liveSaid")


def test_forget_offers_the_copies_of_a_point_and_escape_forgets_nothing(browser, tmp_path, page_url):
    import httpx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.conftest import make_scene, reencoded

    # A photo uploaded twice, the second time re-saved as a JPEG under another name; another photo beside them.
    photo = make_scene(3)
    with httpx.Client(base_url=page_url, headers={"X-API-Key": API_KEY}, timeout=30) as http:
        added = http.post("/v1/memory", data={"label": "shapes"}, files=[
            ("images", ("holiday.png", photo, "image/png")),
            ("images", ("IMG_0042.jpg", reencoded(photo, "JPEG", quality=90), "image/jpeg")),
            ("images", ("another.png", make_scene(0), "image/png"))]).json()["added"]
    holiday, copy, another = (p["id"] for p in added)
    query = tmp_path / "query.png"
    query.write_bytes(photo)
    wait = classify_on_the_page(browser, page_url + "/", query, k=3, points=15)
    browser.execute_script("sessionStorage.setItem('vmem-api-key', arguments[0]);"
                           "document.getElementById('api-key').value = arguments[0]", API_KEY)

    def card_of(point_id):
        return next(c for c in browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")
                    if c.get_attribute("data-point-id") == point_id)

    card = card_of(holiday)
    card.find_element(By.CLASS_NAME, "forget").click()
    box = card.find_element(By.CLASS_NAME, "forget-confirm")
    wait.until(lambda d: box.is_displayed())
    question = box.find_element(By.CLASS_NAME, "forget-question").text
    assert "1 other point looks like a copy of its image: IMG_0042.jpg (shapes, 0.9" in question, question
    assert "another.png" not in question
    assert box.find_element(By.CLASS_NAME, "forget-copies").text == "Forget it and its copy"
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # put away: nothing forgotten, the keyboard back
    wait.until(lambda d: not box.is_displayed())
    assert d_active_class(browser) == "forget" and "15 points" in browser.find_element(By.ID, "stats").text

    card.find_element(By.CLASS_NAME, "forget").click()
    confirm_forget(wait, card, "forget-copies")
    wait.until(lambda d: "13 points" in d.find_element(By.ID, "stats").text)
    wait.until(lambda d: d.find_element(By.ID, "edit-note").text == "forgot a point labelled shapes and 1 copy of it")

    def shown(d) -> set[str]:  # read at once: a card may go while a loop reads them
        return set(d.execute_script("return [...document.querySelectorAll('[data-testid=neighbor-card]')]"
                                    ".map((c) => c.dataset.pointId)"))

    wait.until(lambda d: not {holiday, copy} & shown(d))
    with httpx.Client(base_url=page_url, timeout=30) as http:
        assert [http.get(f"/v1/memory/points/{i}").status_code for i in (holiday, copy, another)] == [404, 404, 200]
        [entry] = http.get("/v1/memory/history", params={"op": "forget"}).json()["entries"]
        assert entry["selector"]["like_point"] == holiday and entry["points"] == 2


def forget_asked_of_the_nearest(browser, page_url, tmp_path):
    """The page with the key kept for the tab, a red query's 5 neighbours shown and the nearest one's Forget
    pressed: (wait, its card, its question's box, shown)."""
    from selenium.webdriver.common.by import By

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4242))
    wait = classify_on_the_page(browser, page_url + "/", query, k=5)
    browser.execute_script("sessionStorage.setItem('vmem-api-key', arguments[0]);"
                           "document.getElementById('api-key').value = arguments[0]", API_KEY)
    card = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    card.find_element(By.CLASS_NAME, "forget").click()
    box = card.find_element(By.CLASS_NAME, "forget-confirm")
    wait.until(lambda d: box.is_displayed())
    return wait, card, box


def test_forget_does_what_its_question_said_and_a_screen_reader_hears_the_question(browser, tmp_path, page_url):
    from selenium.webdriver.common.by import By

    wait, card, box = forget_asked_of_the_nearest(browser, page_url, tmp_path)
    question = box.find_element(By.CLASS_NAME, "forget-question").text
    assert "cannot be undone" not in question
    # The keyboard lands on "Forget it": the question (what goes, which copies) is the group's description
    tree = browser.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
    described = [(n.get("description") or {}).get("value") for n in tree
                 if (n.get("role") or {}).get("value") == "group" and
                 (n.get("name") or {}).get("value", "").startswith("Forget red")]
    assert described == [question], described
    # "also erase" ticked while the question is open: the answer does what the question said (it had erased the
    # vector from the files, never having said "cannot be undone")
    browser.execute_script("arguments[0].click()", browser.find_element(By.ID, "erase"))
    box.find_element(By.CLASS_NAME, "forget-one").click()
    wait.until(lambda d: "11 points" in d.find_element(By.ID, "stats").text)
    wait.until(lambda d: d.find_element(By.ID, "edit-note").text == "forgot a point labelled red")


def test_a_point_forgotten_elsewhere_while_its_question_is_open_leaves_the_page(browser, tmp_path, page_url):
    import httpx
    from selenium.webdriver.common.by import By

    wait, card, _ = forget_asked_of_the_nearest(browser, page_url, tmp_path)
    victim = card.get_attribute("data-point-id")
    with httpx.Client(base_url=page_url, headers={"X-API-Key": API_KEY}, timeout=30) as http:
        assert http.delete(f"/v1/memory/points/{victim}").status_code == 200  # another tab, another user
    card.find_element(By.CLASS_NAME, "forget-one").click()
    # Its card had stayed, the error "no point with id": the card goes, and the page says what happened
    wait.until(lambda d: victim not in d.execute_script(  # read at once: a card may go while a loop reads them
        "return [...document.querySelectorAll('[data-point-id]')].map((c) => c.dataset.pointId)"))
    assert browser.find_element(By.ID, "edit-note").text == "a point labelled red was forgotten already (elsewhere, " \
                                                            "meanwhile)"
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    wait.until(lambda d: "11 points" in d.find_element(By.ID, "stats").text)


def test_a_memory_the_page_cannot_read_after_an_edit_is_said_to_a_screen_reader(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from starlette.responses import JSONResponse

    # The stats line stopped being a live region (it changes with every edit): its "memory unavailable" and
    # "the service did not answer" went unheard. Here the memory's stats fail from the edit on.
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    service = create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)
    stats_fail = False

    async def failing_stats(scope, receive, send):
        if stats_fail and scope["type"] == "http" and scope["path"] == "/v1/memory/stats":
            problem = JSONResponse({"title": "memory unavailable", "detail": "the memory's folder cannot be read"},
                                   503, media_type="application/problem+json")
            return await problem(scope, receive, send)
        return await service(scope, receive, send)

    with live_server(failing_stats) as url:
        wait, card, _ = forget_asked_of_the_nearest(browser, url, tmp_path)
        watch_live_regions(browser)
        stats_fail = True
        card.find_element(By.CLASS_NAME, "forget-one").click()
        said = "memory unavailable: the memory's folder cannot be read"
        wait.until(lambda d: d.find_element(By.ID, "stats").text == said)
        assert f"announce: {said}" in live_regions_said(browser)
    mem.close()
    # The service gone while the page is open: the next read of the stats (after any edit) has no answer
    watch_live_regions(browser)
    browser.execute_script("loadStats()")
    wait.until(lambda d: d.find_element(By.ID, "stats").text.startswith("the service did not answer ("))
    stats = browser.find_element(By.ID, "stats").text
    assert f"announce: {stats}" in live_regions_said(browser)


def classify_on_the_page(browser, page: str, query: Path, k: int, points: int = 12):
    """Open the page on the 12-point test memory (or one of `points`), upload `query` with this k, wait for the
    prediction."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(page)
    wait.until(lambda d: f"{points:,} points" in d.find_element(By.ID, "stats").text)  # "2,512 points"
    browser.find_element(By.ID, "k").send_keys(str(k))
    browser.find_element(By.ID, "file").send_keys(str(query))  # choosing the file classifies it
    wait.until(lambda d: d.find_element(By.ID, "prediction").text.strip())
    return wait


@pytest.fixture
def named_page_url(tmp_path, lite0):
    """The page over the 12-point test memory, its labels named as `vmem build` names WordNet ids."""
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    mem.set_label_names({"red": "crimson", "green": "emerald", "blue": "navy"})
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as url:
        yield url
    mem.close()


def test_the_page_shows_the_label_names(browser, tmp_path, named_page_url):
    from selenium.webdriver.common.by import By

    # A memory of WordNet-id folders names its labels (vmem build finds classes.tsv): people read the names.
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4244))
    wait = classify_on_the_page(browser, named_page_url + "/", query, k=5)
    assert browser.find_element(By.ID, "prediction").text == "crimson (red)"
    assert browser.find_element(By.ID, "scores").text.startswith("crimson (red)")
    first = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    assert first.find_element(By.CLASS_NAME, "label").text == "crimson"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-label-names.png"))

    # A label opens what the memory holds for it: every point of "navy", not only those that voted.
    browser.find_element(By.XPATH, "//ol[@id='scores']//button[.='navy (blue)']").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")) == 4)
    assert browser.find_element(By.ID, "label-title").text == "navy (blue)"
    assert browser.find_element(By.ID, "label-note").text == "4 of 4 points shown"
    shown = browser.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")
    assert all(c.find_element(By.CLASS_NAME, "label").text.startswith("blue") for c in shown)
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#label-points img')].every(i => i.complete && i.naturalWidth > 0)"))
    browser.save_screenshot(str(ARTIFACTS / "page-label-points.png"))



def test_the_back_button_returns_from_a_label_s_points_to_the_answer(browser, tmp_path, page_url):
    from selenium.webdriver.common.by import By

    # A label opened from the answer is drawn below it, the page scrolled there: Back, as after following a link,
    # had left the page, the answer lost with it.
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4281))
    browser.get("data:text/html,<p>the page before</p>")
    wait = classify_on_the_page(browser, page_url + "/", query, k=3)
    link = browser.find_element(By.CSS_SELECTOR, "#scores .label-link")
    link.click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")) == 4)
    browser.back()
    wait.until(lambda d: not d.find_element(By.ID, "label-section").is_displayed())
    assert browser.current_url == page_url + "/"
    assert browser.find_element(By.ID, "prediction").text == "red"
    wait.until(lambda d: d.switch_to.active_element == link)  # the keyboard back on the link it followed
    assert browser.execute_script("const r = arguments[0].getBoundingClientRect();"
                                  " return r.top >= 0 && r.bottom <= innerHeight", link)
    browser.forward()  # and on to the label again
    wait.until(lambda d: d.find_element(By.ID, "label-section").is_displayed())
    assert browser.find_element(By.ID, "label-title").text == "red"
    browser.back()
    wait.until(lambda d: not d.find_element(By.ID, "label-section").is_displayed())
    browser.back()  # then Back leaves the page, as ever
    wait.until(lambda d: d.current_url.startswith("data:"))


def test_the_labels_can_be_browsed_and_opened_without_a_query(browser, named_page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(named_page_url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    browser.find_element(By.CSS_SELECTOR, "#labels-box summary").click()
    rows = lambda d: [li.text for li in d.find_elements(By.CSS_SELECTOR, "#label-list li")]  # noqa: E731
    assert sorted(rows(browser)) == ["crimson (red)\n4", "emerald (green)\n4", "navy (blue)\n4"]
    browser.find_element(By.ID, "label-filter").send_keys("emer")  # by name
    wait.until(lambda d: rows(d) == ["emerald (green)\n4"])
    browser.find_element(By.CSS_SELECTOR, "#label-list button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")) == 4)
    assert browser.find_element(By.ID, "label-title").text == "emerald (green)"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-browse-labels.png"))


def test_counts_of_thousands_are_written_with_separators(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests._server_fixtures import MemoryImages

    # A memory of 3,000 points, 1,000 a label (the 12 test images, each linked under 250 names: a point is its
    # source): the page had said "3000 points" and "1000", where its byte sizes read "23,208 bytes".
    images = make_memory_images(tmp_path / "images", lite0)
    copies = [p.with_name(f"{p.stem}-{i}{p.suffix}") for i in range(250) for p in images.paths]
    for i, copy in enumerate(copies):
        copy.hardlink_to(images.paths[i % len(images.paths)])
    many = MemoryImages(copies, images.labels * 250, np.tile(images.vectors, (250, 1)))
    mem = fill_memory(str(tmp_path / "memory"), lite0, many)  # on disk: ":memory:" calibrates novelty in ~40 s here
    with live_server(create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)) as url:
        wait = WebDriverWait(browser, 30)
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "stats").text.startswith("3,000 points · 3 labels"))
        browser.find_element(By.CSS_SELECTOR, "#labels-box summary").click()
        rows = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#label-list li")]
        assert sorted(rows) == ["blue\n1,000", "green\n1,000", "red\n1,000"]
        browser.find_element(By.CSS_SELECTOR, "#label-list button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]"))
        shown = len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]"))
        assert browser.find_element(By.ID, "label-note").text == f"{shown} of 1,000 points shown"
    mem.close()


def test_labels_named_as_a_javascript_objects_own_properties_are_labels_like_any(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Read from plain objects, "__proto__" had been named "[object Object]" and "constructor" a function, and the
    # filter threw a TypeError that left the list empty
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    for old, new in (("red", "__proto__"), ("green", "constructor"), ("blue", "toString")):
        mem.relabel(new, label=old)
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as url:
        wait = WebDriverWait(browser, 30)
        browser.get(url + "/")
        wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
        browser.find_element(By.CSS_SELECTOR, "#labels-box summary").click()
        rows = lambda d: [li.text for li in d.find_elements(By.CSS_SELECTOR, "#label-list li")]  # noqa: E731
        assert sorted(rows(browser)) == ["__proto__\n4", "constructor\n4", "toString\n4"]
        browser.find_element(By.ID, "label-filter").send_keys("proto")
        wait.until(lambda d: rows(d) == ["__proto__\n4"])
        query = tmp_path / "query.png"
        query.write_bytes(texture(COLORS["green"], seed=4244))
        classify_on_the_page(browser, url + "/", query, k=5)
        assert browser.find_element(By.ID, "prediction").text == "constructor"
        assert browser.find_element(By.ID, "scores").text.startswith("constructor")
        assert all("TypeError" not in entry["message"] for entry in browser.get_log("browser"))
    mem.close()


def test_the_label_filter_finds_a_label_or_name_typed_in_the_other_unicode_form(browser, tmp_path, lite0):
    import unicodedata

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # A name pasted from a Mac's file name is decomposed (e + a combining accent), a typed one composed: the same
    # text on screen, and the filter had found neither spelling by the other
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    mem.relabel("café", label="red")  # stored composed
    mem.set_label_names({"green": unicodedata.normalize("NFD", "crème")})  # a name is stored as given
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as url:
        wait = WebDriverWait(browser, 30)
        browser.get(url + "/")
        wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
        browser.find_element(By.CSS_SELECTOR, "#labels-box summary").click()
        rows = lambda d: [li.text for li in d.find_elements(By.CSS_SELECTOR, "#label-list li")]  # noqa: E731
        box = browser.find_element(By.ID, "label-filter")
        box.send_keys(unicodedata.normalize("NFD", "Café"))
        wait.until(lambda d: rows(d) == ["café\n4"])
        box.clear()
        box.send_keys(unicodedata.normalize("NFC", "crème"))
        wait.until(lambda d: [unicodedata.normalize("NFC", r) for r in rows(d)] == ["crème (green)\n4"])
    mem.close()


def test_a_neighbour_is_relabelled_on_the_page(browser, tmp_path, named_page_url):
    from selenium.webdriver.common.by import By

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4245))
    wait = classify_on_the_page(browser, named_page_url + "/", query, k=5)
    browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    first = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    point_id = first.get_attribute("data-point-id")

    # A name where a label belongs: the service's message, and nothing changed.
    assert not first.find_element(By.CLASS_NAME, "relabel-form").is_displayed()  # until asked for
    first.find_element(By.CLASS_NAME, "relabel").click()
    box = first.find_element(By.CLASS_NAME, "new-label")
    box.send_keys("navy")
    first.find_element(By.CSS_SELECTOR, ".relabel-form button").click()
    wait.until(lambda d: "'navy' is the name of label blue" in d.find_element(By.ID, "error").text)

    box.clear()
    box.send_keys("blue")
    first.find_element(By.CSS_SELECTOR, ".relabel-form button").click()
    wait.until(lambda d: d.find_element(By.ID, "edit-note").text
               == "relabelled a point from crimson (red) to navy (blue)")

    def nearest_label(d) -> str:
        card = d.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
        return card.get_attribute("data-point-id") == point_id and card.find_element(By.CLASS_NAME, "label").text

    wait.until(lambda d: nearest_label(d) == "navy")  # classified again: the point votes blue now
    assert "12 points" in browser.find_element(By.ID, "stats").text
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None

    # Its label's list shows it, with the label it had.
    browser.find_element(By.XPATH, "//ol[@id='scores']//button[.='navy (blue)']").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")) == 5)
    moved = browser.find_element(By.CSS_SELECTOR, f"[data-testid=point-card][data-point-id='{point_id}']")
    assert "was crimson (red)" in moved.find_element(By.CLASS_NAME, "numbers").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-after-relabel.png"))


def test_a_probable_mislabel_is_listed_and_corrected_on_the_page(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from eval.label_audit import audit_labels

    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    mem.set_label_names({"red": "crimson", "green": "emerald", "blue": "navy"})
    wrong = mem.store.ids_where(label="red")[0]
    mem.relabel("blue", ids=[wrong])  # a red image labelled blue by mistake
    app = create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem,
                     auditor=lambda store, progress: audit_labels(store, k=3, progress=progress))
    with live_server(app) as url:
        wait = WebDriverWait(browser, 30)
        browser.get(url + "/")
        wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
        browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
        browser.find_element(By.ID, "api-key").send_keys(API_KEY)
        browser.find_element(By.CSS_SELECTOR, "#suspects-box summary").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#suspects-list li"))
        [item] = browser.find_elements(By.CSS_SELECTOR, "#suspects-list li")
        assert item.get_attribute("data-point-id") == wrong
        assert item.text.startswith("navy (blue) → crimson (red)")
        assert browser.find_element(By.ID, "suspects-note").text.startswith("1 of 12 points is voted another label")
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#suspects-list img')].every(i => i.complete && i.naturalWidth > 0)"))
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "page-suspects.png"))

        # An image that does not decode is chosen first: the classify after the relabel fails, the relabel not.
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda d: "not a recognised image format" in d.find_element(By.ID, "error").text)
        item.find_element(By.CLASS_NAME, "relabel-suggested").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#suspects-list li"))
        assert browser.find_element(By.ID, "edit-note").text == "relabelled a point from navy (blue) to crimson (red)"
        assert browser.find_element(By.ID, "suspects-note").text.startswith("0 of 12 points")
        assert mem.point(wrong).label == "red"
    mem.close()


@pytest.fixture
def slow_default_page(tmp_path, lite0):
    """(url, held): the page over the 12-point memory, its service holding each query with the default vote until
    the test lets it through (`held.release()`). It had slept 2.5 s: a loaded machine could take longer between two
    of the test's steps, and the answer came before the step that was to see it pending."""
    import threading

    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    app = create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)
    service = app.state.service
    classify = service.classify
    held = threading.Semaphore(0)

    def slow_unless_a_vote_is_chosen(uploads, q, *asked_by):
        if q.vote is None:
            assert held.acquire(timeout=60), "the test never let the query through"
        return classify(uploads, q, *asked_by)

    service.classify = slow_unless_a_vote_is_chosen
    with live_server(app) as url:
        try:
            yield url, held
        finally:
            for _ in range(8):  # a query still held: answered, so that the service can stop
                held.release()
    mem.close()


def test_the_page_shows_only_the_latest_answer_and_an_error_replaces_the_answer(browser, tmp_path,
                                                                               slow_default_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, held = slow_default_page
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4243))
    wait = WebDriverWait(browser, 30)
    browser.get(url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    # Count the classify answers the page has read: a timeout set when one is read runs after the page's handler of it
    # (which goes on from the read without waiting for anything), a stale answer's render included.
    browser.execute_script("""window.classifyAnswersRead = 0;
      const json = Response.prototype.json;
      Response.prototype.json = function () {
        const read = json.call(this);
        const counted = () => setTimeout(() => { window.classifyAnswersRead += 1; });
        if (this.url.includes("/v1/classify")) read.then(counted, counted);
        return read;
      };""")
    browser.find_element(By.ID, "file").send_keys(str(query))  # asked with the default vote: held
    Select(browser.find_element(By.ID, "vote")).select_by_visible_text("plurality")  # asked again: answered
    wait.until(lambda d: "plurality vote" in d.find_element(By.ID, "badges").text)
    held.release()  # only now the first query's answer, after the second's
    # Until the page has read both answers, and its handler of each has run: the first, slower one must not replace
    # the second.
    wait.until(lambda d: d.execute_script("return window.classifyAnswersRead") >= 2)
    assert "plurality vote" in browser.find_element(By.ID, "badges").text
    assert browser.find_element(By.ID, "classify-btn").text == "Classify"

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "not a recognised image format" in d.find_element(By.ID, "error").text)
    assert not browser.find_element(By.ID, "answer").is_displayed()  # the red image's answer is gone
    assert not browser.find_element(By.ID, "neighbors-section").is_displayed()


def test_edits_on_the_page_show_everywhere_the_point_is(browser, tmp_path, page_url):
    import httpx
    from selenium.webdriver.common.by import By

    with httpx.Client(base_url=page_url, headers={"X-API-Key": API_KEY}, timeout=30) as http:
        blue = http.get("/v1/memory/points", params={"label": "blue", "limit": 1}).json()["points"][0]
        assert http.patch(f"/v1/memory/points/{blue['id']}", json={"label": "7"}).status_code == 200
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4242))
    wait = classify_on_the_page(browser, page_url + "/", query, k=12)
    # The vote's shares, highest first: the label "7" (one far point) is not put first as a number-like key.
    shares = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#scores li")]
    assert shares[0].startswith("red") and "7" in [s.split()[0] for s in shares[1:]], shares

    # A failed forget, then one that works: the error goes, and the note shows with the key box closed.
    browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
    browser.find_element(By.ID, "api-key").send_keys("wrong-key")
    first = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    point_id = first.get_attribute("data-point-id")
    first.find_element(By.CSS_SELECTOR, ".label button").click()  # its label's memory points listed too
    wait.until(lambda d: any(c.get_attribute("data-point-id") == point_id
                             for c in d.find_elements(By.CSS_SELECTOR, "#label-points [data-point-id]")))
    first.find_element(By.CLASS_NAME, "forget").click()
    wait.until(lambda d: "could not forget" in d.find_element(By.ID, "error").text)
    browser.find_element(By.ID, "api-key").clear()
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()  # closed again
    first.find_element(By.CLASS_NAME, "forget").click()
    confirm_forget(wait, first)
    wait.until(lambda d: "11 points" in d.find_element(By.ID, "stats").text)
    wait.until(lambda d: d.find_element(By.ID, "error").get_attribute("hidden") is not None)
    assert browser.find_element(By.ID, "edit-note").is_displayed()
    assert browser.find_element(By.ID, "edit-note").text.startswith("forgot a point labelled red")
    assert point_id not in [c.get_attribute("data-point-id")
                            for c in browser.find_elements(By.CSS_SELECTOR, "#label-points [data-point-id]")]


def test_a_relabel_offers_every_label_of_a_catalogue_as_you_type(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By

    # 2,500 labels: the suggestions had held the first 2,000 (most points first) and never the rest.
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    rng = np.random.default_rng(0)
    extra = rng.standard_normal((2500, lite0.spec.dim)).astype(np.float32)
    labels = [f"sku-{i:05d}" for i in range(2500)]
    labels[7] = "constructor"  # a label named as a JS object's own property: its "name" is no string
    mem.store.add(extra / np.linalg.norm(extra, axis=1, keepdims=True), labels, [f"mem://sku/{i}" for i in range(2500)])
    mem.set_label_names({"sku-02417": "Shirt, blue, XL"})
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4246))
    with live_server(create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)) as url:
        wait = classify_on_the_page(browser, url + "/", query, k=3, points=2512)
        first = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
        first.find_element(By.CLASS_NAME, "relabel").click()
        offered = "return [...document.querySelectorAll('#label-options option')].map(o => o.value)"
        assert len(browser.execute_script(offered)) == 2000
        first.find_element(By.CLASS_NAME, "new-label").send_keys("shirt")  # by its name
        wait.until(lambda d: d.execute_script(offered) == ["sku-02417"])
    mem.close()


def test_the_answer_does_not_fade_for_a_reader_who_asked_for_less_motion(browser, page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # An answer on its way dims the one on show (.stale); with less motion asked for, it dims at once.
    fade = ("const a = document.getElementById('answer'); a.classList.add('stale');"
            " return getComputedStyle(a).transitionDuration")
    for reduce, expected in ((False, "0.15s"), (True, "0s")):
        features = [{"name": "prefers-reduced-motion", "value": "reduce" if reduce else ""}]
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})
        browser.get(page_url + "/")
        WebDriverWait(browser, 30).until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
        assert browser.execute_script(fade) == expected  # the rule had come before the one it undoes, and lost


def test_the_boxes_open_from_targets_of_at_least_24_px(browser, page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # WCAG 2.5.8: the four boxes' summaries had been 21.8 px tall, stacked with nothing between them.
    browser.get(page_url + "/")
    WebDriverWait(browser, 30).until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    heights = browser.execute_script(
        "return [...document.querySelectorAll('summary')].map(s => s.getBoundingClientRect().height)")
    assert len(heights) == 4 and min(heights) >= 24, heights


def test_a_long_one_word_label_fits_a_phone_s_screen(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By

    # A folder's name is a label as it is: one word of 30 characters. At 360 px it had widened the page to 571 px
    # (scrolled sideways, the prediction cut off), and its share's label ran under the bar at any width.
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    mem.relabel("American_Staffordshire_terrier", label="red")
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4247))
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 360, "height": 640, "deviceScaleFactor": 2, "mobile": True})
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as url:
        classify_on_the_page(browser, url + "/", query, k=5)
        assert browser.find_element(By.ID, "prediction").text == "American_Staffordshire_terrier"
        page = browser.execute_script("const e = document.documentElement; return [e.scrollWidth, e.clientWidth]")
        assert page[0] <= page[1], f"the page scrolls sideways: {page[0]} px wide in a {page[1]} px screen"
        label_right, bar_left = browser.execute_script(
            "const li = document.querySelector('#scores li');"
            " return [li.querySelector('button').getBoundingClientRect().right,"
            " li.querySelector('.bar').getBoundingClientRect().left]")
        assert label_right <= bar_left
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "page-phone-long-label.png"))
    mem.close()



def drawn_lines(driver, selector: str) -> list[list[str]]:
    """The text of each line box of each element matching `selector`, as drawn (top to bottom)."""
    return driver.execute_script("""
      return [...document.querySelectorAll(arguments[0])].map((element) => {
        const byTop = new Map();
        const walk = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
        for (let t = walk.nextNode(); t; t = walk.nextNode()) {
          for (let i = 0; i < t.length; i++) {
            const r = document.createRange();
            r.setStart(t, i);
            r.setEnd(t, i + 1);
            const top = Math.round(r.getBoundingClientRect().top);
            byTop.set(top, (byTop.get(top) || "") + t.data[i]);
          }
        }
        return [...byTop.keys()].sort((a, b) => a - b).map((k) => byTop.get(k));
      });""", selector)


def test_a_long_one_word_label_on_a_narrow_card_breaks_between_its_words(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By

    # A folder's name as a label, wider than a neighbour's card on a phone: it broke where the card's edge fell
    # ("American_Staffordshir" / "e_terrier"); it breaks after a "_" now, as a file's name on a card does.
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    mem.relabel("American_Staffordshire_terrier", label="red")
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4247))
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 375, "height": 667, "deviceScaleFactor": 2, "mobile": True})
    with live_server(create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)) as url:
        classify_on_the_page(browser, url + "/", query, k=4)
        lines = drawn_lines(browser, "#neighbors .card-body .label")
        terriers = [shown for shown in lines if "".join(shown) == "American_Staffordshire_terrier"]
        assert terriers and all(len(shown) > 1 for shown in terriers), lines  # wider than its card
        for shown in terriers:
            assert all(a.endswith("_") for a in shown[:-1]), lines
        ARTIFACTS.mkdir(exist_ok=True)
        card = browser.find_element(By.CSS_SELECTOR, "#neighbors .neighbor-card")
        browser.execute_script("arguments[0].scrollIntoView()", card)
        card.screenshot(str(ARTIFACTS / "page-long-label-phone.png"))
    mem.close()


def test_a_phone_shows_the_neighbours_and_a_label_s_points_two_to_a_row(browser, tmp_path, page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # At 375 px the cards, at least 150 px each, had stood one to a row: 50 neighbours were 12,000 px to scroll.
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4274))
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 375, "height": 667, "deviceScaleFactor": 2, "mobile": True})
    classify_on_the_page(browser, page_url + "/", query, k=4)
    rows = "return new Set([...document.querySelectorAll(arguments[0])].map((c) => c.getBoundingClientRect().top)).size"
    assert browser.execute_script(rows, "#neighbors .neighbor-card") == 2  # 4 cards
    browser.find_element(By.CSS_SELECTOR, "#scores .label-link").click()  # red's 4 points
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#label-points .neighbor-card"))
                                     == 4)
    assert browser.execute_script(rows, "#label-points .neighbor-card") == 2
    page = browser.execute_script("const e = document.documentElement; return [e.scrollWidth, e.clientWidth]")
    assert page[0] <= page[1], f"the page scrolls sideways: {page[0]} px wide in a {page[1]} px screen"


def test_the_classify_button_keeps_the_keyboard_s_focus_while_it_classifies(browser, tmp_path, slow_default_page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4248))
    url, held = slow_default_page
    wait = WebDriverWait(browser, 30)
    browser.get(url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    held.release()
    browser.find_element(By.ID, "file").send_keys(str(query))  # classified once
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "red")
    wait.until(lambda d: d.find_element(By.ID, "classify-btn").text == "Classify")
    requests = ("return performance.getEntriesByType('resource')"
                ".filter(e => e.name.includes('/v1/classify')).length")
    focused = lambda d: d.switch_to.active_element.get_attribute("id")  # noqa: E731

    browser.execute_script("document.getElementById('classify-btn').focus()")
    ActionChains(browser).send_keys(Keys.ENTER).perform()  # again, from the keyboard
    wait.until(lambda d: d.find_element(By.ID, "classify-btn").text == "Classifying…")
    # Disabled while it ran, the button had dropped the focus to the page (<body>) until the user tabbed again.
    assert focused(browser) == "classify-btn"
    ActionChains(browser).send_keys(Keys.ENTER).perform()  # pressed again meanwhile (held): not asked twice
    held.release()
    wait.until(lambda d: d.find_element(By.ID, "classify-btn").text == "Classify")
    assert focused(browser) == "classify-btn"
    assert browser.execute_script(requests) == 2



def test_a_first_answer_on_its_way_is_said_where_the_answer_will_show(browser, tmp_path, slow_default_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # A re-rank takes up to a minute: with no answer yet, only the button's "Classifying…" said that one was coming,
    # and the answer's place stood empty (on a phone, below the fold, nothing at all).
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4282))
    url, held = slow_default_page
    wait = WebDriverWait(browser, 30)
    browser.get(url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    browser.find_element(By.ID, "file").send_keys(str(query))  # held
    pending = browser.find_element(By.ID, "pending")
    wait.until(lambda d: pending.is_displayed())
    assert pending.text == "Classifying query.png…"
    held.release()
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "red")
    assert not pending.is_displayed()
    bad = tmp_path / "bad.png"  # an error, the answer gone: said where errors are, nothing pending
    bad.write_bytes(b"this is not a png")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    held.release()
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert not pending.is_displayed()


def test_a_relabel_is_opened_cancelled_and_saved_from_the_keyboard(browser, tmp_path, named_page_url):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4249))
    wait = classify_on_the_page(browser, named_page_url + "/", query, k=3)
    browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    card = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    toggle = card.find_element(By.CLASS_NAME, "relabel")
    form = card.find_element(By.CLASS_NAME, "relabel-form")
    keys = lambda *k: ActionChains(browser).send_keys(*k).perform()  # noqa: E731
    focused = lambda d: d.switch_to.active_element  # noqa: E731

    browser.execute_script("arguments[0].focus()", toggle)
    keys(Keys.ENTER)  # opens the form, the keyboard in its field
    wait.until(lambda d: form.is_displayed() and focused(d) == card.find_element(By.CLASS_NAME, "new-label"))
    keys("blue", Keys.ESCAPE)  # changed their mind: the form goes, the keyboard is back on its button
    wait.until(lambda d: not form.is_displayed())
    assert toggle.get_attribute("aria-expanded") == "false"
    assert focused(browser) == toggle
    assert browser.find_element(By.ID, "edit-note").text == ""  # nothing was sent

    keys(Keys.ENTER)
    wait.until(lambda d: form.is_displayed())
    keys(Keys.ENTER)  # "blue" is still typed: saved
    wait.until(lambda d: d.find_element(By.ID, "edit-note").text
               == "relabelled a point from crimson (red) to navy (blue)")
    wait.until(lambda d: focused(d).get_attribute("id") == "edit-note")


def test_every_control_is_named_and_the_image_chooser_by_the_words_it_shows(browser, tmp_path, named_page_url):
    from selenium.webdriver.common.by import By

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4250))
    classify_on_the_page(browser, named_page_url + "/", query, k=3)
    controls = browser.find_elements(By.CSS_SELECTOR, "input, select, button, summary")
    unnamed = [c.get_attribute("outerHTML")[:80] for c in controls if c.is_displayed() and not c.accessible_name]
    assert not unnamed
    # Speech input says what it sees (WCAG 2.5.3): each button's name holds the words it shows, and the chooser had
    # been named "Image to classify", words it never shows.
    buttons = [b for b in controls if b.tag_name == "button" and b.is_displayed()]
    assert [b.text for b in buttons if b.text not in b.accessible_name] == []
    assert "Choose or drop an image" in browser.find_element(By.ID, "file").accessible_name
    card = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    assert card.find_element(By.TAG_NAME, "img").accessible_name == "crimson"  # the neighbour's label, by its name
    assert card.find_element(By.CLASS_NAME, "forget").accessible_name.startswith("Forget crimson (red), ")


def test_an_answer_under_the_confidence_asked_for_is_said_to_need_a_person_and_keeps_its_suggestion(
        browser, tmp_path, named_page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 30)
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4251))
    browser.get(named_page_url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    # A plurality vote of all 12 points: each label's share is 4/12, whatever the image
    Select(browser.find_element(By.ID, "vote")).select_by_visible_text("plurality")
    browser.find_element(By.ID, "k").send_keys("12")
    threshold = browser.find_element(By.ID, "min-confidence")
    assert threshold.accessible_name == "ask a person under"  # named by its label
    threshold.send_keys("0.5")
    browser.find_element(By.ID, "file").send_keys(str(query))
    note = browser.find_element(By.ID, "unsure-note")
    wait.until(lambda d: note.is_displayed())
    # Said in words, the label kept as the suggestion, and the confidence shown beside the vote
    assert browser.find_element(By.ID, "prediction").text == "crimson (red)"
    assert note.text == ("Unsure: a person should check this answer. crimson (red) is a suggestion: its confidence "
                         "0.333 is under the 0.5 asked for.")
    assert "confidence 0.333" in browser.find_element(By.ID, "badges").text
    wait.until(lambda d: "; unsure: a person should check it" in d.find_element(By.ID, "announce")
               .get_attribute("textContent"))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-unsure.png"))

    # A threshold the answer meets: no longer unsure, the answer the same (asked again, from the service's cache)
    threshold.send_keys(Keys.BACKSPACE * 3, "0.3", Keys.TAB)
    wait.until(lambda d: not note.is_displayed())
    assert note.text == ""
    assert browser.find_element(By.ID, "prediction").text == "crimson (red)"
    badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#badges span")]
    assert "confidence 0.333" in badges and "cached" in badges
    # Out of 0..1: said at the field, not sent
    threshold.send_keys(Keys.BACKSPACE * 5, "1.5", Keys.TAB)
    wait.until(lambda d: threshold.get_attribute("aria-invalid") == "true")


def test_a_screen_reader_is_told_how_many_labels_the_filter_leaves(browser, named_page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(named_page_url + "/")
    wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
    browser.find_element(By.CSS_SELECTOR, "#labels-box summary").click()
    count = lambda d: d.find_element(By.ID, "label-count").get_attribute("textContent")  # noqa: E731
    # The list changes where a screen reader's user is not (in the filter): a status says what is left.
    assert browser.find_element(By.ID, "label-count").get_attribute("role") == "status"
    browser.find_element(By.ID, "label-filter").send_keys("emer")
    wait.until(lambda d: count(d) == "1 of 3 labels match")
    browser.find_element(By.ID, "label-filter").send_keys("x")
    wait.until(lambda d: count(d) == "no label matches")
    # ... and the eyes are told so too, where the list was (it had been an empty box)
    assert browser.find_element(By.ID, "label-list").text == "no label matches “emerx”"
    browser.find_element(By.ID, "label-filter").clear()
    browser.find_element(By.ID, "label-filter").send_keys(" ")  # an input event, with nothing to filter by
    wait.until(lambda d: count(d) == "3 labels")


def test_enter_in_the_key_field_carries_on_with_the_forget_that_asked_for_the_key(browser, tmp_path, named_page_url):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4251))
    wait = classify_on_the_page(browser, named_page_url + "/", query, k=3)
    card = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    victim = card.get_attribute("data-point-id")
    browser.execute_script("arguments[0].focus()", card.find_element(By.CLASS_NAME, "forget"))
    ActionChains(browser).send_keys(Keys.ENTER).perform()  # no key yet: the key box opens, the keyboard in it
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "api-key")
    assert "enter the API key to forget a memory point" in browser.find_element(By.ID, "error").text
    ActionChains(browser).send_keys(API_KEY, Keys.ENTER).perform()  # and on: no Tab back to the card's button
    wait.until(lambda d: d_active_class(d) == "forget-one")  # the card asks; Enter answers
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait.until(lambda d: "11 points" in d.find_element(By.ID, "stats").text)
    wait.until(lambda d: d.find_element(By.ID, "edit-note").text == "forgot a point labelled crimson (red)")
    assert victim not in [c.get_attribute("data-point-id")
                          for c in browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")]



def test_a_key_the_service_refuses_is_asked_for_again_and_enter_carries_on(browser, tmp_path, named_page_url):
    # A mistyped key: the service says it is not valid; the key field is offered again (opened, the keyboard in it,
    # the wrong key selected to be typed over), and Enter carries on with what was refused, as for a key missing. It
    # had said "the API key is not valid" and left the keyboard where it was: Enter in the key field did nothing, and
    # the wrong key was kept for the tab.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4261))
    wait = classify_on_the_page(browser, named_page_url + "/", query, k=3)
    browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
    browser.find_element(By.ID, "api-key").send_keys("not-the-key-0123456789")
    card = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    card.find_element(By.CLASS_NAME, "forget").click()
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "api-key")
    assert browser.find_element(By.ID, "error").text == "could not forget crimson (red): the API key is not valid"
    assert browser.execute_script("return sessionStorage.getItem('vmem-api-key')") is None  # not kept
    ActionChains(browser).send_keys(API_KEY, Keys.ENTER).perform()  # typed over the wrong one
    wait.until(lambda d: d_active_class(d) == "forget-one")  # the card asks, now with the key
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None

    # Re-ranking, refused for the key too, goes on with the right one from the key field.
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    browser.find_element(By.ID, "api-key").clear()
    browser.find_element(By.ID, "api-key").send_keys("not-the-key-0123456789")
    browser.find_element(By.ID, "rerank").click()
    wait.until(lambda d: d.find_element(By.ID, "error").text == "the API key is not valid")
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "api-key")
    ActionChains(browser).send_keys(API_KEY, Keys.ENTER).perform()
    wait.until(lambda d: d.find_element(By.ID, "answer").is_displayed())
    assert browser.find_element(By.ID, "prediction").text.startswith("crimson")
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None


def test_a_key_that_may_not_edit_is_asked_over_and_kept_for_what_it_may_do(browser, tmp_path, lite0):
    # A key of the keys file that may only re-rank (`vmem key kiosk --may rerank`), sent for a forget: the service
    # says what it may do; the key field is offered again (opened, the keyboard in it, the key selected to be typed
    # over) and Enter carries on with another key, as for a key not valid. The refused key is valid, so it is kept
    # for the tab until another is typed.
    import hashlib

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    kiosk, alice = "kiosk-key-0123456789abcdef", "alice-key-0123456789abcdef"
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{name} {hashlib.sha256(key.encode()).hexdigest()} {may}".rstrip() + "\n"
                            for name, key, may in [("kiosk", kiosk, "rerank"), ("alice", alice, "")]))
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(str(tmp_path / "memory"), lite0, images)
    mem.set_label_names({"red": "crimson", "green": "emerald", "blue": "navy"})
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4262))
    with live_server(create_app(Settings(memory=str(tmp_path / "memory"), api_keys_file=keys), memory=mem)) as url:
        wait = classify_on_the_page(browser, url + "/", query, k=3)
        browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
        browser.find_element(By.ID, "api-key").send_keys(kiosk)
        card = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
        victim = card.get_attribute("data-point-id")
        card.find_element(By.CLASS_NAME, "forget").click()
        wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "api-key")
        error = browser.find_element(By.ID, "error").text
        assert error.startswith("could not forget crimson (red): ") and "the API key kiosk may only rerank" in error
        assert browser.find_element(By.ID, "key-box").get_attribute("open") is not None
        assert browser.execute_script("const f = document.getElementById('api-key');"
                                      " return [f.selectionStart, f.selectionEnd]") == [0, len(kiosk)]
        assert browser.execute_script("return sessionStorage.getItem('vmem-api-key')") == kiosk  # valid: kept
        ActionChains(browser).send_keys(alice, Keys.ENTER).perform()  # typed over it: the forget carries on
        wait.until(lambda d: d_active_class(d) == "forget-one")  # the card asks, now with a key that may edit
        assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait.until(lambda d: "11 points" in d.find_element(By.ID, "stats").text)
        assert victim not in [c.get_attribute("data-point-id")
                              for c in browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")]
        assert browser.execute_script("return sessionStorage.getItem('vmem-api-key')") == alice
    mem.close()


def test_the_template_chooser_shows_a_template_s_name_whole(browser, named_page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(named_page_url + "/")
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#template option")) > 1)
    # As wide as its widest option needs (text, arrow, padding): it had been cut to "neighbors-v1 (defau".
    shown, needed = browser.execute_script("""
        const s = document.getElementById("template"), free = s.cloneNode(true);
        free.style.cssText = "width: auto; min-width: 0; max-width: none; position: absolute";
        document.body.append(free);
        const widths = [s.getBoundingClientRect().width, free.getBoundingClientRect().width];
        free.remove();
        return widths;""")
    assert shown >= needed, (shown, needed)


def test_an_edit_left_for_another_answer_is_not_carried_out_by_enter_in_the_key_field(browser, tmp_path,
                                                                                       named_page_url):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(texture(COLORS["red"], seed=4252))
    second.write_bytes(texture(COLORS["blue"], seed=4253))
    wait = classify_on_the_page(browser, named_page_url + "/", first, k=3)
    browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0].find_element(By.CLASS_NAME,
                                                                                          "forget").click()
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "api-key")
    ActionChains(browser).send_keys(API_KEY).perform()  # typed, not sent: the user moves on to another image
    browser.find_element(By.ID, "file").send_keys(str(second))
    wait.until(lambda d: d.find_element(By.ID, "prediction").text.startswith("navy"))
    # Note the requests the page sends from now on, and when Enter has been handled: by the page first, its listener
    # added before this one. An edit's first step is a request, sent from the handler (a forget asks which points look
    # like copies): none may go.
    browser.execute_script("""window.sent = [];
      const fetch = window.fetch;
      window.fetch = (...args) => { window.sent.push(String(args[0])); return fetch(...args); };
      window.enterHandled = false;
      document.getElementById("api-key").addEventListener("keydown", (e) => {
        if (e.key === "Enter") window.enterHandled = true;
      });
      document.getElementById("api-key").focus();""")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait.until(lambda d: d.execute_script("return window.enterHandled"))
    assert browser.execute_script("return window.sent") == []
    assert "12 points" in browser.find_element(By.ID, "stats").text  # nothing forgotten
    assert browser.find_element(By.ID, "edit-note").text == ""


def test_a_label_too_few_to_win_the_vote_is_marked_and_an_answer_it_lost_offers_the_k_that_wins(browser, tmp_path,
                                                                                                named_page_url):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # One image of a new class beside classes of 4: at the default k = 50 its point, a query's nearest neighbour, is
    # outvoted by a fuller class (README, "A class of a few images"). The page had said nothing of it: the label was
    # listed with its count, and the answer named another label over the nearest point.
    with httpx.Client(base_url=named_page_url, headers={"X-API-Key": API_KEY}, timeout=30) as http:
        added = http.post("/v1/memory", data={"label": "yellow"},
                          files=[("images", ("y.png", texture((240, 230, 20), 50), "image/png"))])
        assert [(f["label"], f["k_that_fits"]) for f in added.json()["few_points"]] == [("yellow", 2)]
    query = tmp_path / "query.png"
    query.write_bytes(texture((240, 230, 20), seed=51))
    wait = WebDriverWait(browser, 30)
    browser.get(named_page_url + "/")
    wait.until(lambda d: "13 points" in d.find_element(By.ID, "stats").text)
    assert "1 with too few points to win the vote" in browser.find_element(By.ID, "stats").text
    browser.find_element(By.CSS_SELECTOR, "#labels-box summary").click()
    rows = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#label-list li")]
    assert rows[-1] == "yellow\n1 · too few"
    assert browser.find_element(By.ID, "few-points-note").text == (
        "yellow has too few points to win the default rank vote of k = 50 against a fuller label near it (1 of 2): "
        "add images of it, or classify with k = 2 or less.")

    browser.find_element(By.ID, "file").send_keys(str(query))  # at the default k
    wait.until(lambda d: d.find_element(By.ID, "prediction").text.strip())
    first = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    assert first.find_element(By.CLASS_NAME, "label").text == "yellow"
    assert browser.find_element(By.ID, "prediction").text != "yellow"
    note = browser.find_element(By.ID, "few-answer")
    assert note.is_displayed() and note.text == (
        "The nearest neighbour is yellow, a label of 1 point: too few to win this rank vote of k = 50. Add images of "
        "it, or Find the k at which yellow wins")
    assert "nearest neighbour is yellow, too few points to win at this k" in browser.find_element(
        By.ID, "announce").get_attribute("textContent")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-few-points.png"))

    # Its button asks why not yellow, which finds the k at which it wins; that k's button classifies with it, and
    # the keyboard goes to that k (the note, and the button, go)
    note.find_element(By.TAG_NAME, "button").click()
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "why-not-reason")
    assert note.text.endswith("or classify with k = 2 (below).")
    browser.find_element(By.CSS_SELECTOR, "#why-not-k button").click()
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "yellow")
    assert browser.find_element(By.ID, "k").get_attribute("value") == "2"
    assert not browser.find_element(By.ID, "few-answer").is_displayed()
    assert browser.switch_to.active_element.get_attribute("id") == "k"


def test_why_not_a_nearest_label_of_too_few_points_offers_one_classify_with_k_and_one_k(browser, tmp_path,
                                                                                       named_page_url):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with httpx.Client(base_url=named_page_url, headers={"X-API-Key": API_KEY}, timeout=30) as http:
        http.post("/v1/memory", data={"label": "yellow"},
                  files=[("images", ("y.png", texture((240, 230, 20), 50), "image/png"))]).raise_for_status()
    query = tmp_path / "query.png"
    query.write_bytes(texture((240, 230, 20), seed=51))
    wait = classify_on_the_page(browser, named_page_url + "/", query, k=5, points=13)
    assert browser.find_element(By.ID, "prediction").text != "yellow"  # its single nearest point is outvoted

    # Why not yellow: one "Classify with k" (the few-points note's and why-not's had both shown, alike), and the note
    # says why-not's k, at which yellow wins (its own, `k_that_fits`, is the k its count allows, not always a win)
    browser.find_element(By.ID, "why-not-label").send_keys("yellow", Keys.ENTER)
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "why-not-reason")
    reason = browser.find_element(By.ID, "why-not-reason").text
    assert reason.startswith("Why not yellow? It has 1 point, too few to win a rank vote of k = 5 (it takes 2 ")
    assert reason.endswith("; it would win at k = 2.")
    assert browser.find_element(By.ID, "few-answer").text == (
        "The nearest neighbour is yellow, a label of 1 point: too few to win this rank vote of k = 5. Add images of "
        "it, or classify with k = 2 (below).")
    shown = [b.text for b in browser.find_elements(By.CLASS_NAME, "classify-with-k") if b.is_displayed()]
    assert shown == ["Classify with k = 2 for yellow"]


def test_an_outvoted_nearest_label_whose_points_are_not_all_the_nearest_is_offered_the_k_at_which_it_wins(
        browser, tmp_path, named_page_url):
    import httpx
    from selenium.webdriver.common.by import By

    # "orange" of 2 points beside 10 reds: a copy of the query (its nearest neighbour) and a green patch, far from
    # it. Its count allows k = 6 (`k_that_fits`, its 2 points the nearest), but here the reds come next: it loses
    # at 6 and wins at 2 only. The note's button had offered "Classify with k = 6", which answered red again.
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4244))
    with httpx.Client(base_url=named_page_url, headers={"X-API-Key": API_KEY}, timeout=30) as http:
        http.post("/v1/memory", data={"label": "red"}, files=[
            ("images", (f"r{i}.png", texture(COLORS["red"], seed=500 + i), "image/png")) for i in range(6)])
        added = http.post("/v1/memory", data={"label": "orange"}, files=[
            ("images", ("copy.png", query.read_bytes(), "image/png")),
            ("images", ("g.png", texture(COLORS["green"], seed=77), "image/png"))])
        assert [(f["label"], f["k_that_fits"]) for f in added.json()["few_points"]] == [("orange", 6)]
    wait = classify_on_the_page(browser, named_page_url + "/", query, k=50, points=20)
    assert browser.find_element(By.ID, "prediction").text == "crimson (red)"
    first = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    assert first.find_element(By.CLASS_NAME, "label").text == "orange"

    # No k is offered before one is known to win: the note's button asks why not orange, which searches for it
    note = browser.find_element(By.ID, "few-answer")
    assert note.text == ("The nearest neighbour is orange, a label of 2 points: too few to win this rank vote of "
                         "k = 50. Add images of it, or Find the k at which orange wins")
    assert not [b for b in browser.find_elements(By.CLASS_NAME, "classify-with-k") if b.is_displayed()]
    note.find_element(By.TAG_NAME, "button").click()
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "why-not-reason")
    assert browser.find_element(By.ID, "why-not-label").get_attribute("value") == "orange"
    reason = browser.find_element(By.ID, "why-not-reason").text
    assert reason.startswith("Why not orange? ") and reason.endswith("; it would win at k = 2."), reason
    assert note.text.endswith("or classify with k = 2 (below).")

    # ... and the k offered then wins
    shown = [b for b in browser.find_elements(By.CLASS_NAME, "classify-with-k") if b.is_displayed()]
    assert [b.text for b in shown] == ["Classify with k = 2 for orange"]
    shown[0].click()
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "orange")
    assert browser.find_element(By.ID, "k").get_attribute("value") == "2"


@pytest.fixture
def tiny_imagenet_page(tmp_path, lite0, tiny_imagenet):
    """The page over a memory of three real Tiny-ImageNet classes (6 train images each), named by its classes.tsv."""
    from retrieval import read_label_names
    from tests._server_fixtures import MemoryImages

    classes = ["n07749582", "n04146614", "n01443537"]  # lemon, school bus, goldfish
    paths = [p for c in classes for p in sorted((tiny_imagenet / "train" / c).glob("*.JPEG"))[:6]]
    images = MemoryImages(paths, [p.parent.name for p in paths], lite0.embed([str(p) for p in paths]))
    mem = fill_memory(":memory:", lite0, images)
    mem.set_label_names(read_label_names(tiny_imagenet / "classes.tsv"))
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as url:
        yield url, paths
    mem.close()


def test_a_file_s_name_on_a_narrow_card_breaks_between_its_words(browser, tiny_imagenet_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # A label's points on a phone: each card names its file, "n07749582_12.JPEG", wider than the card. It broke where
    # the card's edge fell ("n07749582_12.J" / "PEG"); it breaks after a "_" and before a "." now, the whole name in
    # the card's title.
    url, paths = tiny_imagenet_page
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 375, "height": 667, "deviceScaleFactor": 2, "mobile": True})
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "18 points" in d.find_element(By.ID, "stats").text)
    browser.find_element(By.ID, "labels-box").find_element(By.TAG_NAME, "summary").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#label-list .label-link"))
    browser.find_element(By.CSS_SELECTOR, "#label-list .label-link").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#label-points .neighbor-card")) == 6)
    lines = drawn_lines(browser, "#label-points .card-body .label")
    names = {p.name for p in paths}
    assert len(lines) == 6 and all("".join(shown) in names for shown in lines), lines
    assert any(len(shown) > 1 for shown in lines), f"no name was wider than its card: {lines}"
    for shown in lines:  # every line ends at a "_" or before a "."
        assert all(a.endswith(("_", "-")) or b.startswith(".") for a, b in itertools.pairwise(shown)), lines
    ARTIFACTS.mkdir(exist_ok=True)
    browser.find_element(By.ID, "label-points").screenshot(str(ARTIFACTS / "page-file-names-phone.png"))
    titles = [e.get_attribute("title") for e in browser.find_elements(By.CSS_SELECTOR, "#label-points .label")]
    assert {t.rsplit("/", 1)[1] for t in titles} <= names


def test_a_wrong_answer_s_image_is_added_under_its_label_from_the_page_and_undone(browser, tiny_imagenet,
                                                                                   tiny_imagenet_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, built_from = tiny_imagenet_page
    monarch = sorted((tiny_imagenet / "val" / "n02279972").glob("*.JPEG"))[0]  # a class the memory lacks
    wait = classify_on_the_page(browser, url + "/", monarch, k=5, points=18)
    assert not browser.find_element(By.ID, "prediction").text.startswith("monarch")  # it cannot know it

    # The label suggested with its name; typed, the form says what it is: one of the memory's, or new
    options = browser.execute_script(
        "return [...document.querySelectorAll('#label-options option')].map(o => o.value + '=' + o.label)")
    assert "n07749582=lemon" in options
    label = browser.find_element(By.ID, "teach-label")
    # Spaces alone are no label: the field says so, as an empty one does (nothing had happened, unsaid)
    label.send_keys("   ", Keys.ENTER)
    assert browser.execute_script("return arguments[0].validity.valueMissing", label)
    assert browser.switch_to.active_element == label and not browser.find_element(By.ID, "error").is_displayed()
    label.send_keys("n07749582")
    wait.until(lambda d: d.find_element(By.ID, "teach-hint").text == "lemon (n07749582): 6 points in the memory")
    label.clear()
    watch_live_regions(browser)
    label.send_keys("n02279972")
    wait.until(lambda d: d.find_element(By.ID, "teach-hint").text == "a new label: no point of the memory has it yet")
    assert live_regions_said(browser) == ["teach-hint: a new label: no point of the memory has it yet"]  # once

    # Add asks for the key as every edit does; Enter in the key field carries on with the add
    browser.find_element(By.ID, "teach-add").click()
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "api-key")
    assert browser.find_element(By.ID, "error").text == "enter the API key to add the image to the memory"
    watch_live_regions(browser)
    browser.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.ENTER)
    wait.until(lambda d: "19 points" in d.find_element(By.ID, "stats").text)

    # What was added is said (the new label's single point cannot win the default vote: so said, and what to do),
    # the keyboard goes there, and the answer, asked again, cites the new point as this image's nearest neighbour
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "teach-note")
    note = browser.find_element(By.ID, "teach-note").text
    assert note.startswith("added this image to the memory as monarch (n02279972), a new label. It has too few "
                           "points to win the default rank vote of k = 50 against a fuller label near it (1 of ")
    assert note.endswith("or less.")
    # The label's hint is said as it is typed, not when the add changes its count: it had been, before the note
    said = live_regions_said(browser)
    assert said[-1] == f"teach-note: {note}"
    assert said.count(f"teach-note: {note}") == 1, said  # read where the keyboard lands (a live region too had said it)
    assert not [s for s in said if s.startswith("teach-hint")], said
    # ... nor the stats line's new count, there to be read: the note says what changed (it had been said as well)
    assert not [s for s in said if s.startswith("stats")], said
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card] .label")[0].text == "monarch")
    nearest = browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")[0]
    added = nearest.get_attribute("data-point-id")
    assert nearest.find_element(By.CLASS_NAME, "label").text == "monarch"
    assert nearest.find_element(By.CLASS_NAME, "similarity").text == "sim 1.000"
    # Outvoted at this answer's k = 5, as the note under the vote says (it had named the default vote's k = 50)
    assert browser.find_element(By.ID, "few-answer").text.startswith(
        "The nearest neighbour is monarch (n02279972), a label of 1 point: too few to win this rank vote of k = 5. ")
    # ... and, the image being in the memory now, no second add is offered
    assert not browser.find_element(By.ID, "teach-form").is_displayed()
    assert browser.find_element(By.ID, "teach-known").text.startswith(
        "This image is in the memory, labelled monarch (n02279972)")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-added.png"))

    # Undo forgets that point: the answer is asked again without it, and the form is back. Its name begins with the
    # words it shows, as speech input says them (WCAG 2.5.3: it had been "Undo: forget the point just added as ...")
    undo = browser.find_element(By.ID, "teach-undo")
    assert undo.text == "Undo: forget the point added"
    assert undo.accessible_name == "Undo: forget the point added as monarch (n02279972)"
    watch_focus_dropped(browser)
    watch_live_regions(browser)
    undo.send_keys(Keys.ENTER)
    wait.until(lambda d: "18 points" in d.find_element(By.ID, "stats").text)
    wait.until(lambda d: added not in [c.get_attribute("data-point-id")
                                       for c in d.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")])
    wait.until(lambda d: d.find_element(By.ID, "teach-form").is_displayed())
    assert browser.find_element(By.ID, "edit-note").text == "forgot a point labelled monarch (n02279972)"
    # The keyboard goes to what happened as the Undo goes: it had fallen to the page (<body>, where a screen reader
    # starts over) until the answer, asked again without the point, came back
    assert browser.switch_to.active_element.get_attribute("id") == "edit-note"
    assert focus_dropped(browser) == []
    said = live_regions_said(browser)
    assert said.count("edit-note: forgot a point labelled monarch (n02279972)") == 1
    assert not [s for s in said if s.startswith("stats")], said
    assert not undo.is_displayed() and browser.find_element(By.ID, "teach-note").text == ""


def test_an_image_the_memory_was_built_from_is_said_to_be_in_it_and_not_offered_again(browser, tiny_imagenet_page,
                                                                                       tmp_path):
    from selenium.webdriver.common.by import By

    url, built_from = tiny_imagenet_page
    # The same bytes as a file the memory was built from, under another name: a built point is keyed by its path and
    # an upload by its bytes, so it would have been a second point of one image beside the built one
    again = tmp_path / "my-lemon.jpg"
    again.write_bytes(built_from[0].read_bytes())
    classify_on_the_page(browser, url + "/", again, k=5, points=18)
    assert not browser.find_element(By.ID, "teach-form").is_displayed()
    assert browser.find_element(By.ID, "teach-known").text == (
        "This image is in the memory, labelled lemon (n07749582) (n07749582_0.JPEG): its card below relabels or "
        "forgets it.")


@pytest.fixture
def cats_page(lite0, tiny_imagenet):
    """The page over three real Tiny-ImageNet cats, two citrus fruits (20 train images each) and a banana of 3: the
    memory of tests/test_why_not.py, where a tabby is answered Egyptian cat at k = 50 and would win at k = 13."""
    from retrieval import read_label_names
    from tests._server_fixtures import MemoryImages

    counts = {"n02123045": 20, "n02123394": 20, "n02124075": 20, "n07747607": 20, "n07749582": 20, "n07753592": 3}
    paths = [p for c, n in counts.items() for p in sorted((tiny_imagenet / "train" / c).iterdir())[:n]]
    images = MemoryImages(paths, [p.parent.name for p in paths], lite0.embed([str(p) for p in paths]))
    mem = fill_memory(":memory:", lite0, images)
    mem.set_label_names(read_label_names(tiny_imagenet / "classes.tsv"))
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as url:
        yield url
    mem.close()


def test_why_not_the_true_label_is_asked_on_the_page_and_its_k_classifies_again(browser, tiny_imagenet, cats_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    tabby = tiny_imagenet / "val" / "n02123045" / "val_1300.JPEG"
    wait = classify_on_the_page(browser, cats_page + "/", tabby, k=50, points=103)
    assert browser.find_element(By.ID, "prediction").text == "Egyptian cat (n02124075)"  # the true label loses

    # Asked why not tabby, with the label suggested as the relabel and add fields suggest it: no key is asked for
    options = browser.execute_script(
        "return [...document.querySelectorAll('#label-options option')].map(o => o.value + '=' + o.label)")
    assert "n02123045=tabby" in options
    watch_live_regions(browser)
    browser.find_element(By.ID, "why-not-label").send_keys("n02123045", Keys.ENTER)
    wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "why-not-reason")
    reason = browser.find_element(By.ID, "why-not-reason").text
    # A screen reader hears the reason once, where the keyboard lands, and not the answer asked about again (both its
    # live region and the focus had said the reason, and the unchanged answer had been said again)
    assert live_regions_said(browser) == ["announce: Classifying…", f"why-not-reason: {reason}"]
    assert reason.startswith("Why not tabby (n02123045)? Its ")
    assert "are outweighed by" in reason and "'n02124075' (Egyptian cat)" in reason
    assert reason.endswith("; it would win at k = 13.")
    assert browser.find_element(By.ID, "prediction").text == "Egyptian cat (n02124075)"  # the same answer
    assert not browser.find_element(By.ID, "error").is_displayed()

    # Its nearest points as cards: their thumbnails, ranks, similarities, and in words whether they voted
    cards = browser.find_elements(By.CSS_SELECTOR, "[data-testid=why-not-card]")
    assert len(cards) == 5
    neighbours = [c.get_attribute("data-point-id") for c in
                  browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbor-card]")]
    for c in cards:
        assert c.find_element(By.CLASS_NAME, "label").text == "tabby"
        numbers = c.find_element(By.CLASS_NAME, "numbers").text
        rank = int(c.find_element(By.CLASS_NAME, "rank").text.removeprefix("rank "))
        assert neighbours[rank] == c.get_attribute("data-point-id")  # the neighbour of that rank
        assert " · sim 0." in numbers and " · voted, weight 0." in numbers
        wait.until(lambda d, c=c: d.execute_script("return arguments[0].naturalWidth", c.find_element(
            By.TAG_NAME, "img")) > 0)  # the thumbnail, served
    # ... each control named with its point, as a neighbour card's are
    assert cards[0].find_element(By.CLASS_NAME, "forget").accessible_name.startswith("Forget tabby (n02123045), ")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-why-not.png"))

    # Its k classifies again, asking why not tabby again: tabby wins, and the keyboard goes to the k it set
    button = browser.find_element(By.CSS_SELECTOR, "#why-not-k button")
    assert button.text == "Classify with k = 13 for tabby (n02123045)"
    watch_live_regions(browser)
    button.click()
    wait.until(lambda d: d.find_element(By.ID, "prediction").text == "tabby (n02123045)")
    assert browser.find_element(By.ID, "k").get_attribute("value") == "13"
    assert browser.switch_to.active_element.get_attribute("id") == "k"
    assert browser.find_element(By.ID, "why-not-reason").text.startswith(
        "Why not tabby (n02123045)? It is the rank vote's answer: ")
    # ... said by its live region, the keyboard being on the k (and the new answer too)
    said = live_regions_said(browser)
    assert f"why-not-reason: {browser.find_element(By.ID, 'why-not-reason').text}" in said, said
    assert any(s.startswith("announce: tabby (n02123045), ") for s in said), said
    assert not browser.find_element(By.ID, "why-not-k").is_displayed()


def test_why_not_a_label_past_k_or_of_too_few_points_is_said_and_an_unknown_one_shows_the_api_s_message(
        browser, tiny_imagenet, cats_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    tabby = tiny_imagenet / "val" / "n02123045" / "val_1300.JPEG"
    wait = classify_on_the_page(browser, cats_page + "/", tabby, k=10, points=103)
    label = browser.find_element(By.ID, "why-not-label")
    label.send_keys("  ", Keys.ENTER)  # spaces alone: refused as an empty field is
    assert browser.execute_script("return arguments[0].validity.valueMissing", label)
    label.send_keys("n07749582")  # lemon: none of its points near a cat
    browser.find_element(By.ID, "why-not-ask").click()
    wait.until(lambda d: d.find_element(By.ID, "why-not-reason").text)
    reason = browser.find_element(By.ID, "why-not-reason").text
    assert reason.startswith("Why not lemon (n07749582)? Its nearest point is the ") and reason.endswith(
        "outside k = 10.")
    assert not browser.find_element(By.ID, "why-not-k").is_displayed()  # it wins at no k
    cards = browser.find_elements(By.CSS_SELECTOR, "[data-testid=why-not-card]")
    assert cards and all(c.find_element(By.CLASS_NAME, "weight").text == "no vote: outside k = 10" for c in cards)
    assert int(cards[0].find_element(By.CLASS_NAME, "rank").text.removeprefix("rank ")) >= 10

    # A label the memory lacks: the API's message, naming the label spelled or named like it, where errors show;
    # the answer stays, and the explanation of another label goes
    label.clear()
    label.send_keys("tabby cat")
    browser.find_element(By.ID, "why-not-ask").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "'n02123045' (tabby)" in browser.find_element(By.ID, "error").text
    assert label.get_attribute("aria-invalid") == "true"
    # ... and a screen reader's page no longer says "Classifying…" (read where the answer's sentence is, it had stayed)
    assert browser.find_element(By.ID, "announce").get_attribute("textContent") == ""
    assert browser.find_element(By.ID, "answer").is_displayed()
    assert browser.find_element(By.ID, "prediction").text == "Egyptian cat (n02124075)"
    assert browser.find_element(By.ID, "why-not-reason").text == ""
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=why-not-card]")

    # A label of too few points to win this vote: said as the labels' list says it, with what to do
    banana = tiny_imagenet / "val" / "n07753592" / "val_11.JPEG"
    classify_on_the_page(browser, cats_page + "/", banana, k=50, points=103)
    browser.find_element(By.ID, "why-not-label").send_keys("n07753592")
    browser.find_element(By.ID, "why-not-ask").click()
    wait.until(lambda d: d.find_element(By.ID, "why-not-reason").text)
    assert browser.find_element(By.ID, "why-not-reason").text.startswith(
        "Why not banana (n07753592)? It has 3 points, too few to win a rank vote of k = 50 (it takes 5 against a "
        "fuller label near it): add images of it")



def test_why_not_a_label_asked_by_its_name_is_answered_for_that_label(browser, tmp_path, named_page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # The page shows a label by its name ("navy (blue)"): asked why not "navy", it had sent the name, and shown the
    # service's 422 ("the memory has no label 'navy' ('navy' is the name of label blue): it has 3 labels ...").
    query = tmp_path / "query.png"
    query.write_bytes(texture(COLORS["red"], seed=4276))
    wait = classify_on_the_page(browser, named_page_url + "/", query, k=3)
    browser.find_element(By.ID, "why-not-label").send_keys("Navy", Keys.ENTER)  # as typed, any case
    wait.until(lambda d: d.find_element(By.ID, "why-not-reason").text)
    assert browser.find_element(By.ID, "why-not-reason").text.startswith("Why not navy (blue)? ")
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    assert browser.find_element(By.ID, "prediction").text == "crimson (red)"


def test_a_label_that_would_read_as_another_is_shown_as_it_is_and_still_opens_its_points(browser, tmp_path, lite0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    # "\u202etac" is drawn "cat" (U+202E RIGHT-TO-LEFT OVERRIDE), and the rest of its line backwards; a name with a
    # zero-width space reads as one without. Shown escaped, as the CLI prints them; sent back as they are. A Persian
    # label's ZERO WIDTH NON-JOINER is how the word is written, and shows: the label is shown as it is.
    spoofed, name, persian = "\u202etac", "emerald\u200b", "نیم\u200cرخ"
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    mem.relabel(spoofed, label="red")
    mem.relabel(persian, label="blue")
    mem.set_label_names({"green": name})
    with live_server(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as url:
        wait = WebDriverWait(browser, 30)
        browser.get(url + "/")
        wait.until(lambda d: "12 points" in d.find_element(By.ID, "stats").text)
        browser.find_element(By.CSS_SELECTOR, "#labels-box summary").click()
        rows = lambda d: [li.text for li in d.find_elements(By.CSS_SELECTOR, "#label-list li")]  # noqa: E731
        assert sorted(rows(browser)) == ["\\u202etac\n4", "emerald\\u200b (green)\n4", f"{persian}\n4"]
        browser.find_element(By.ID, "label-filter").send_keys("tac")
        wait.until(lambda d: len(rows(d)) == 1)
        browser.find_element(By.CSS_SELECTOR, "#label-list button").click()  # the label itself asked for
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=point-card]")) == 4)
        assert browser.find_element(By.ID, "label-title").text == "\\u202etac"
        # Each label, name and source is isolated in its line (<bdi>): a right-to-left label took the punctuation and
        # count beside it into its own run ("(نیم‌رخ: 4)" drew the 4 first)
        isolated = lambda css: [b.text for b in browser.find_elements(By.CSS_SELECTOR, css)]  # noqa: E731
        assert isolated("#label-title bdi") == isolated("#label-list .label-link bdi") == ["\\u202etac"]
        assert len(isolated("[data-testid=point-card] .label bdi")) == 4
        query = tmp_path / "query.png"
        query.write_bytes(texture(COLORS["red"], seed=4245))
        classify_on_the_page(browser, url + "/", query, k=5)
        assert browser.find_element(By.ID, "prediction").text == "\\u202etac"
        browser.find_element(By.CSS_SELECTOR, "#history-box summary").click()
        wait.until(lambda d: "to \\u202etac" in d.find_element(By.ID, "history-list").text)
        page = browser.find_element(By.TAG_NAME, "body").text
        assert not any(c in page for c in ("\u202e", "\u200b"))
        assert isolated("#prediction bdi") == ["\\u202etac"]
        assert {"\\u202etac", persian, "blue", "red"} <= set(isolated("#history-list bdi"))
        # ... and so in every sentence that names one: the label typed to add, the question before a forget, what an
        # add did, a threshold's note (they had been the sentence's plain text)
        browser.execute_script("const f = document.getElementById('teach-label'); f.value = arguments[0];"
                               "f.dispatchEvent(new Event('input'))", spoofed)
        wait.until(lambda d: d.find_element(By.ID, "teach-hint").text == "\\u202etac: 4 points in the memory")
        assert isolated("#teach-hint bdi") == ["\\u202etac"]
        browser.execute_script("document.getElementById('api-key').value = arguments[0]", API_KEY)
        neighbour = browser.find_element(By.CSS_SELECTOR, "[data-testid=neighbor-card]")
        neighbour.find_element(By.CLASS_NAME, "forget").click()
        question = neighbour.find_element(By.CLASS_NAME, "forget-question")
        wait.until(lambda d: question.text.startswith("Forget this point (\\u202etac)?"))
        assert isolated("[data-testid=neighbor-card] .forget-question bdi")[0] == "\\u202etac"
        neighbour.find_element(By.CLASS_NAME, "forget-cancel").click()
        browser.find_element(By.ID, "teach-add").click()
        wait.until(lambda d: d.find_element(By.ID, "teach-note").text.startswith(
            "added this image to the memory as \\u202etac, now a label of 5 points"))
        assert isolated("#teach-note bdi") == ["\\u202etac"]
        Select(browser.find_element(By.ID, "vote")).select_by_visible_text("plurality")  # of all 13: 5/13 at most
        browser.find_element(By.ID, "k").clear()
        browser.find_element(By.ID, "k").send_keys("13")
        browser.find_element(By.ID, "min-confidence").send_keys("0.5")
        browser.find_element(By.ID, "classify-btn").click()
        wait.until(lambda d: d.find_element(By.ID, "unsure-note").text)
        assert isolated("#unsure-note bdi") == ["\\u202etac"]
        # The page's escape is the CLI's, to the character: a label typed as the six characters \u202e is shown
        # other than the override, a Windows path as it is
        texts = [spoofed, "\\u202etac", "C:\\data\\new", "\\\\server\\share", "a\\\u200cb", persian, "\\\\x1b\x1b",
                 "soft\u00adhyphen\x85"]
        assert browser.execute_script("return arguments[0].map(visible)", texts) == [visible(t) for t in texts]
    mem.close()
