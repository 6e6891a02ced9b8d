"""The review page in a real browser (Playwright + the system's chromium, fake SAM): keys and clicks reach the disk."""

from __future__ import annotations

import httpx

from pipeline.quality import FLAG_MEANINGS
from tests.helpers import assert_valid, check_yolo_matches_coco
from tests.review_helpers import BROWSER_MARKS, SHOTS, coco_image, make_dataset, start_server, to_page

pytestmark = BROWSER_MARKS


def test_review_page_end_to_end(tmp_path, browser):
    out = make_dataset(tmp_path)
    proc, url, token = start_server(out, tmp_path / "server.log")
    auth = {"authorization": f"Bearer {token}"}
    errors: list[str] = []
    try:
        api_queue = httpx.get(f"{url}/api/images", headers=auth).json()
        page = browser.new_page(viewport={"width": 1400, "height": 820})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.goto(f"{url}/?token={token}")
        assert page.url == f"{url}/"  # the token left the address bar (now an HttpOnly cookie)
        page.wait_for_selector("#instances li")
        # the queue: as the API orders it, flagged images first
        names = page.locator("#queue li .name").all_inner_texts()
        assert names == [q["file_name"] for q in api_queue]
        chips = [page.locator(f"#queue li:nth-child({k + 1}) .flag").count() for k in range(len(names))]
        assert chips[0] > 0 and chips == sorted(chips, reverse=True)
        assert page.locator("#progress-text").inner_text() == "0 of 6 reviewed"
        first = api_queue[0]
        before = coco_image(out, first["split"], first["file_name"])[1]
        assert page.locator("#queue li.current .name").inner_text() == first["file_name"]
        page.screenshot(path=str(SHOTS / "review_open.png"))
        chip = page.locator("#queue li .flag").first  # a flag chip says what the flag means (quality's registry)
        assert chip.get_attribute("title") == FLAG_MEANINGS[chip.inner_text()]

        # delete the selected (first flagged) instance, undo, redo
        n = page.locator("#instances li").count()
        assert page.locator("#instances li.selected").count() == 1
        page.keyboard.press("d")
        assert page.locator("#instances li").count() == n - 1
        page.keyboard.press("z")
        assert page.locator("#instances li").count() == n
        page.keyboard.press("y")
        assert page.locator("#instances li").count() == n - 1

        # select the remaining instance and click inside its box: SAM redraws it (three candidates)
        page.keyboard.press("Tab")
        sel = page.evaluate("() => S.inst[S.sel]")
        x0, y0, x1, y1 = sel["box"]
        page.mouse.click(*to_page(page, (x0 + x1) / 2, y1 + 3))  # just below its box: the fake adds a disc there
        page.wait_for_function("() => S.inst[S.sel].candidates !== null")
        assert page.locator("#candidates button").count() == 3
        assert page.locator("#candidates button.chosen").inner_text().startswith("mask 2")
        page.keyboard.press("m")
        assert page.locator("#candidates button.chosen").inner_text().startswith("mask 3")
        page.keyboard.press("m")
        page.keyboard.press("m")  # back to the best one
        page.screenshot(path=str(SHOTS / "review_click.png"))

        # reviewed and next: saved, the next image not yet reviewed opens
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => S.image && S.image.id !== {first['id']!r}")
        img, anns = coco_image(out, first["split"], first["file_name"])
        assert img["reviewed"] is True and len(anns) == len(before) - 1
        assert [a.get("source") for a in anns] == ["review"] and anns[0]["mask_score"] == 0.9
        assert anns[0]["area"] > before[1]["area"]  # the click's disc joined the mask
        assert_valid(out)
        check_yolo_matches_coco(out)
        assert page.locator("#progress-text").inner_text() == "1 of 6 reviewed"
        assert page.locator("#queue li:last-child .name").inner_text() == first["file_name"]  # done: at the end

        # add a missed object on this image: N, drag a box, class from "New objects are", save with S
        second = page.evaluate("() => S.image")
        page.select_option("#new-class", "cone")
        page.keyboard.press("n")
        disc = second["instances"][0]["box"]
        a, b = to_page(page, disc[0] - 1, disc[1] - 1), to_page(page, disc[2] + 1, disc[3] + 1)
        page.mouse.move(*a)
        page.mouse.down()
        page.mouse.move(*b, steps=5)
        page.mouse.up()
        page.wait_for_function(f"() => S.inst.length === {len(second['instances']) + 1}")
        page.screenshot(path=str(SHOTS / "review_new_object.png"))
        page.keyboard.press("s")
        page.wait_for_function(f"() => S.image.version === {second['version'] + 1}")
        img2, anns2 = coco_image(out, second["split"], second["file_name"])
        assert len(anns2) == len(second["instances"]) + 1 and "reviewed" not in img2
        assert anns2[-1]["category_id"] == 3 and anns2[-1]["source"] == "review"
        assert "duplicate" in anns2[-1]["flags"] or "duplicate" in anns2[0]["flags"]  # recomputed: the same disc twice
        page.keyboard.press("?")
        page.screenshot(path=str(SHOTS / "review_help.png"))
        page.keyboard.press("Escape")
        assert_valid(out)
        check_yolo_matches_coco(out)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert errors == []
