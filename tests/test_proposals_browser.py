"""Proposals in the review page (Playwright + the system's chromium): selected, given a class, dismissed, saved."""

from __future__ import annotations

import httpx

from pipeline import label
from tests.conftest import FakeSegmenter
from tests.helpers import assert_valid, check_yolo_matches_coco
from tests.proposal_helpers import FakeGenerator, MissingDetector, make_three_disc_images
from tests.review_helpers import BROWSER_MARKS, SHOTS, coco_image, start_server, to_page

pytestmark = BROWSER_MARKS


def test_a_proposal_gets_a_class_in_the_page_and_another_is_dismissed(tmp_path, browser):
    src = make_three_disc_images(tmp_path / "src", n=2)
    out = tmp_path / "ds"
    label(src, out, detector=MissingDetector(), segmenter=FakeSegmenter(), generator=FakeGenerator(), propose=True,
          progress=False, split="train=1")  # fmt: skip
    proc, url, token = start_server(out, tmp_path / "server.log")
    auth = {"authorization": f"Bearer {token}"}
    errors: list[str] = []
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 820})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.goto(f"{url}/?token={token}")
        page.wait_for_selector("#proposals li")
        assert page.locator("#queue li .proposal-chip").all_inner_texts() == ["1 unlabeled", "1 unlabeled"]
        page.select_option("#queue-sort", "proposals")  # the queue in the API's "most proposals" order
        page.wait_for_function("() => S.queue.length === 2")
        api_order = httpx.get(f"{url}/api/images", params={"sort": "proposals"}, headers=auth).json()
        assert page.locator("#queue li .name").all_inner_texts() == [q["file_name"] for q in api_order]
        first = page.evaluate("() => S.image.file_name")
        assert page.locator("#proposals li").all_inner_texts()[0].startswith("unlabeled #0")

        # click inside the proposal's mask on the canvas: it is selected (dashed, yellow), then key 3 = "cone"
        x0, y0, x1, y1 = page.evaluate("() => S.props[0].box")
        page.mouse.click(*to_page(page, (x0 + x1) / 2, (y0 + y1) / 2))
        assert page.evaluate("() => [S.psel, S.sel]") == [0, -1]
        assert page.locator("#proposal-actions").is_visible()
        page.screenshot(path=str(SHOTS / "review_proposal.png"))
        n = page.locator("#instances li").count()
        page.keyboard.press("3")
        assert page.locator("#instances li").count() == n + 1 and page.locator("#proposals li").count() == 0
        assert page.evaluate("() => S.inst[S.inst.length - 1].cls") == "cone"
        page.keyboard.press("s")
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('saved')")
        page.screenshot(path=str(SHOTS / "review_proposal_accepted.png"))
        iid = page.evaluate("() => S.image.id")
        saved = httpx.get(f"{url}/api/images/{iid}", headers=auth).json()
        assert saved["proposals"] == []
        assert [(i["class"], i["source"]) for i in saved["instances"]][-1] == ("cone", "proposal")
        anns = coco_image(out, "train", first)[1]
        assert anns[-1]["source"] == "proposal" and anns[-1]["category_id"] == 3

        # the other image: P selects its proposal, D dismisses it, Enter saves (reviewed) and moves on
        other = next(q for q in api_order if q["file_name"] != first)
        page.locator(f'#queue li[data-id="{other["id"]}"]').click()
        page.wait_for_function(f"() => S.image && S.image.id === {other['id']!r}")
        page.keyboard.press("p")
        assert page.evaluate("() => S.psel") == 0
        page.keyboard.press("d")
        assert page.locator("#proposals li").count() == 0
        page.keyboard.press("Enter")
        page.wait_for_function(
            f"() => fetch('/api/images/{other['id']}').then(r => r.json()).then(d => d.reviewed)", polling=100
        )
        dismissed = httpx.get(f"{url}/api/images/{other['id']}", headers=auth).json()
        assert dismissed["proposals"] == [] and len(dismissed["instances"]) == 2
        assert errors == []
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert check_yolo_matches_coco(out) == 5
    assert_valid(out)
