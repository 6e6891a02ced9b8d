"""The SAM adapter: against a stand-in of ``pipeline.sam``'s API here, and on a random-weight MobileSAM where the
prompt API (``pipeline.sam``) is present."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pipeline.review.sam import SamSession
from pipeline.review.server import create_app
from pipeline.review.store import ReviewStore
from pipeline.types import CropMask
from tests.conftest import draw_scene
from tests.review_helpers import TOKEN, TestClient, make_dataset

try:  # present once the sam branch is merged (and importable with this tree's other modules)
    import pipeline.sam  # noqa: F401

    HAS_SAM = True
except ImportError:
    HAS_SAM = False


@dataclass
class _Prediction:
    """What ``pipeline.sam.Segmenter.predict`` returns, for an image the size of the low-res logits (256 x 256)."""

    logits: torch.Tensor
    scores: np.ndarray
    threshold: float = 0.0

    def masks_at(self, i, thresholds, k=0):
        return [CropMask.from_full(self.logits[i, k].numpy() > t) for t in thresholds]


class _Segmenter:
    """``set_image`` / ``predict`` as ``pipeline.sam.Segmenter`` has them; logits: +1.5 inside the box, -3 outside."""

    def __init__(self):
        self.encoded, self.calls = 0, []

    def set_image(self, rgb):
        self.encoded += 1
        return ("embedding", rgb.shape[:2])

    def predict(self, embedding, *, boxes=None, points=None, point_labels=None, mask_input=None, multimask=False):
        self.calls.append(
            dict(
                embedding=embedding,
                boxes=boxes,
                points=points,
                point_labels=point_labels,
                mask_input=mask_input,
                multimask=multimask,
            )
        )
        k = 3 if multimask else 1
        logits = torch.full((1, k, 256, 256), -3.0)
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        logits[0, :, y0:y1, x0:x1] = 1.5
        return _Prediction(logits, np.array([[0.5 + 0.1 * j for j in range(k)]], dtype=np.float32))


def test_session_shapes_prompts_as_the_prompt_api_wants_them():
    seg = _Segmenter()
    session = SamSession(seg, embeddings=2)
    rgb = np.zeros((256, 256, 3), np.uint8)
    session.embed("a", rgb)
    session.embed("a", lambda: pytest.fail("encoded twice"))  # cached: the loader is not called
    mask_input = np.zeros((256, 256), np.float32)
    cands = session.predict(
        "a",
        box=[10, 20, 50, 60],
        points=[[30, 40], [12, 22]],
        point_labels=[1, 0],
        mask_input=mask_input,
        multimask=True,
    )
    call = seg.calls[-1]
    assert call["embedding"] == ("embedding", (256, 256))
    assert call["boxes"].shape == (1, 4) and call["points"].shape == (1, 2, 2) and call["point_labels"].shape == (1, 2)
    assert call["mask_input"].shape == (1, 256, 256) and call["multimask"] is True
    assert [c.score for c in cands] == pytest.approx([0.5, 0.6, 0.7])
    for c in cands:
        assert c.mask.xyxy == (10, 20, 50, 60)
        assert c.stability == pytest.approx(1.0)  # +1.5 inside: above +1, and above -1
        assert c.logits.shape == (256, 256) and isinstance(c.logits, np.ndarray)
    session.predict("a", box=[0, 0, 4, 4], points=None, point_labels=None, multimask=False)
    assert seg.calls[-1]["points"] is None and seg.calls[-1]["mask_input"] is None
    session.embed("b", rgb)
    session.embed("c", rgb)  # capacity 2: "a" goes
    assert not session.has("a") and session.has("b") and session.has("c") and seg.encoded == 3
    with pytest.raises(KeyError):
        session.predict("a", box=[0, 0, 4, 4], points=None, point_labels=None, multimask=False)


def test_load_says_what_is_missing(monkeypatch):
    import builtins

    from pipeline.errors import SamlabelError

    real_import = builtins.__import__

    def no_sam(name, *args, **kwargs):
        if name == "pipeline.sam":
            raise ImportError("No module named 'pipeline.sam'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sam)
    with pytest.raises(SamlabelError, match="no SAM prompt API"):
        SamSession.load("mobile_sam.pt")


@pytest.mark.skipif(not HAS_SAM, reason="the SAM prompt API (pipeline.sam) is not in this tree yet")
def test_real_mobile_sam_behind_the_app(tmp_path):
    from tests.checkpoints import make_sam_checkpoint

    # rigged decoder: every low-res logit is +8 (whole-image masks), every score 0.9, whatever the prompt
    ckpt = make_sam_checkpoint(tmp_path / "mobile_sam.pt", mask_logit=8.0, score=0.9)
    session = SamSession.load(ckpt, runtime="torch", device="cpu")
    session.embed("scene", draw_scene())
    three = session.predict("scene", box=[20, 20, 60, 60], points=[[40, 40]], point_labels=[1], multimask=True)
    assert len(three) == 3 and all(c.mask.xyxy == (0, 0, 160, 120) and c.stability == 1.0 for c in three)
    one = session.predict(
        "scene", box=None, points=[[40, 40], [5, 5]], point_labels=[1, 0], mask_input=three[0].logits, multimask=False
    )
    assert len(one) == 1 and one[0].score == pytest.approx(0.9, abs=1e-4)
    out = make_dataset(tmp_path)
    client = TestClient(
        create_app(ReviewStore(out), token=TOKEN, sam=session), headers={"authorization": f"Bearer {TOKEN}"}
    )
    image = client.get(f"/api/images/{client.get('/api/images').json()[0]['id']}").json()
    inst = image["instances"][0]
    prompt = {"box": inst["box"], "points": [[30, 30, 1]], "instance": inst["id"]}  # the saved mask as mask input
    r = client.post(f"/api/images/{image['id']}/predict", json=prompt)
    assert r.status_code == 200 and len(r.json()["candidates"]) == 3 and r.json()["mask_score"] == pytest.approx(0.9)
    edit = [{"id": inst["id"], "class": inst["class"], "rle": r.json()["rle"]}]
    assert client.put(f"/api/images/{image['id']}", json={"version": 1, "instances": edit}).status_code == 200
