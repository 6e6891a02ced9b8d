"""The review page's races and failures in a real browser (Playwright + chromium, fake SAM): answers that
arrive for an image no longer open are dropped, the last image chosen is the one shown, failed requests
are said and SAM polling goes on, and the token does not stay in the address bar."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.review_helpers import BROWSER_MARKS, SHOTS, make_dataset, start_server, to_page, wait_until

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("races")
    out = make_dataset(root)
    proc, url, token = start_server(out, root / "server.log")
    yield out, url, token
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture
def page(browser, served):  # noqa: F811 - pytest fixture
    _, url, token = served
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"{url}/?token={token}")
    page.wait_for_function("() => S.image !== null")
    yield page
    page.close()


def _queue(served) -> list[dict]:
    _, url, token = served
    return httpx.get(f"{url}/api/images", headers={"authorization": f"Bearer {token}"}).json()


def _instances_on_disk(served, iid: str) -> int:
    _, url, token = served
    return len(httpx.get(f"{url}/api/images/{iid}", headers={"authorization": f"Bearer {token}"}).json()["instances"])


def test_token_leaves_the_address_bar_and_the_page_works(page, served):
    _, url, token = served
    assert token not in page.evaluate("() => location.href")
    page.goto(f"{url}/?token={token}")  # again, the cookie already set (a bookmark, a second tab)
    page.wait_for_function("() => S.image !== null")
    assert page.evaluate("() => location.href") == f"{url}/"
    assert page.locator("#instances li").count() > 0 and page.errors == []


def test_a_new_object_answered_after_a_switch_does_not_land_in_the_next_image(page, served):
    queue = _queue(served)
    a, b = queue[0], queue[1]
    assert page.evaluate("() => S.image.id") == a["id"]
    n_a, n_b = page.evaluate("() => S.inst.length"), _instances_on_disk(served, b["id"])
    held = []
    page.route("**/predict", lambda route: held.append(route))  # SAM answers when the test says so
    page.keyboard.press("n")
    p, q = to_page(page, 5, 5), to_page(page, 60, 60)
    page.mouse.move(*p)
    page.mouse.down()
    page.mouse.move(*q, steps=4)
    page.mouse.up()
    assert wait_until(lambda: (page.wait_for_timeout(20), held)[1], timeout=10)
    page.locator(f'#queue li[data-id="{b["id"]}"]').click()  # switch while SAM works
    page.wait_for_timeout(300)
    held[0].continue_()
    page.wait_for_function("() => S.busy === 0")
    page.wait_for_timeout(200)
    # the object belongs to image A: either A is still open with it, or B is open without it
    if page.evaluate("() => S.image.id") == b["id"]:
        assert page.evaluate("() => S.inst.length") == n_b
    else:
        assert page.evaluate("() => S.inst.length") == n_a + 1
    page.unroute("**/predict")
    page.locator(f'#queue li[data-id="{b["id"]}"]').click()
    page.wait_for_function(f"() => S.image.id === {b['id']!r} && !S.saving")
    assert page.evaluate("() => S.inst.length") == n_b and page.evaluate("() => S.dirty") is False
    assert _instances_on_disk(served, b["id"]) == n_b
    assert _instances_on_disk(served, a["id"]) == n_a + 1  # saved on leaving A, where it was drawn
    assert page.errors == []


def test_two_quick_switches_end_on_the_last_image_chosen(page, served):
    queue = _queue(served)
    b, c = queue[2], queue[3]
    held = []
    page.route(f"**/api/images/{b['id']}/image", lambda route: held.append(route))  # B's pixels come late
    page.locator(f'#queue li[data-id="{b["id"]}"]').click()
    assert wait_until(lambda: (page.wait_for_timeout(20), held)[1], timeout=10)
    page.locator(f'#queue li[data-id="{c["id"]}"]').click()
    page.wait_for_function(f"() => S.image.id === {c['id']!r}")
    held[0].continue_()
    page.wait_for_timeout(500)  # B's image decodes now
    assert page.evaluate("() => S.image.id") == c["id"]
    assert page.locator("#queue li.current").get_attribute("data-id") == c["id"]
    assert page.locator("#image-info b").inner_text() == c["file_name"]
    assert page.errors == []


def test_a_failed_sam_status_poll_is_shown_and_polling_goes_on(browser, served):  # noqa: F811
    _, url, token = served
    calls = []

    def meta(route):
        calls.append(route.request.url)
        if len(calls) == 1:  # the page's first look: SAM still loading
            data = json.loads(route.fetch().text())
            route.fulfill(json={**data, "sam": "loading"})
        elif len(calls) == 2:  # the next poll fails
            route.fulfill(status=500, json={"detail": "server hiccup"})
        else:
            route.continue_()

    page = browser.new_page(viewport={"width": 1400, "height": 820})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/api/meta", meta)
    page.goto(f"{url}/?token={token}")
    page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=10_000)
    shown = page.locator("#status").inner_text()
    assert "server hiccup" in shown and '"server hiccup"' not in shown and page.locator("#status").is_visible()
    assert page.locator("#sam-status").inner_text() == "SAM loading"
    page.screenshot(path=str(SHOTS / "review_sam_status_error.png"))
    page.wait_for_function("() => document.getElementById('sam-status').textContent === 'SAM ready'", timeout=10_000)
    assert len(calls) >= 3 and errors == []
    assert page.locator("#status").inner_text() == "SAM ready"  # the error is cleared once answered
    page.close()


def test_a_failed_image_open_is_shown(page, served):
    queue = _queue(served)
    page.route(
        f"**/api/images/{queue[4]['id']}", lambda route: route.fulfill(status=500, json={"detail": "disk on fire"})
    )
    page.locator(f'#queue li[data-id="{queue[4]["id"]}"]').click()
    page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=10_000)
    assert "disk on fire" in page.locator("#status").inner_text()
    assert page.errors == []  # said, not an unhandled rejection
