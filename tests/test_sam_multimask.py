"""--multimask on the SAM stage: each strategy keeps the candidate it should; the choice is recorded."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sam import Segmenter
from pipeline.types import Instances
from tests.checkpoints import make_sam_checkpoint

# token 0: the single mask; tokens 1-3: the candidates. Candidate 0 is empty with the best score, candidates 1
# and 2 are whole-image masks (the same box fit) scored 0.6 and 0.8.
LOGITS, SCORES = (8.0, -8.0, 8.0, 8.0), (0.9, 0.95, 0.6, 0.8)


@pytest.fixture(scope="module")
def rigged(tmp_path_factory):
    return make_sam_checkpoint(tmp_path_factory.mktemp("w") / "mobile_sam.pt", token_logits=LOGITS, token_scores=SCORES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # one ONNX export for the module


@pytest.mark.parametrize(
    "strategy, index",
    [
        ("score", 0),  # the best predicted IoU, even though it is empty
        ("box-fit", 2),  # the best box fit; candidates 1 and 2 tie there, the higher score wins
    ],
)
@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_each_strategy_keeps_its_candidate(rigged, cache, strategy, index, runtime):
    seg = Segmenter(str(rigged), device="cpu", runtime=runtime, multimask=strategy, cache_dir=cache)
    rgb = np.zeros((60, 80, 3), np.uint8)
    out = seg(rgb, Instances(xyxy=[[10, 10, 40, 30], [0, 0, 80, 60]], class_id=[0, 1]))
    assert out.extras["multimask_index"].tolist() == [index, index]
    np.testing.assert_allclose(out.extras["candidate_scores"], [SCORES[1:]] * 2, atol=1e-4)
    np.testing.assert_allclose(out.mask_score, [SCORES[1 + index]] * 2, atol=1e-4)
    assert [m.area for m in out.masks] == ([0, 0] if index == 0 else [80 * 60] * 2)


def test_off_keeps_the_single_mask_and_records_stability(rigged, cache):
    seg = Segmenter(str(rigged), device="cpu", runtime="torch", cache_dir=cache)
    out = seg(np.zeros((60, 80, 3), np.uint8), Instances(xyxy=[[10, 10, 40, 30]], class_id=[0]))
    assert "multimask_index" not in out.extras
    assert out.masks[0].area == 80 * 60 and out.mask_score[0] == pytest.approx(0.9, abs=1e-4)
    assert out.extras["stability_score"].tolist() == [1.0]  # logits of 8 everywhere: the same mask at +-1


def test_unknown_strategy_is_refused(rigged):
    from pipeline.errors import SamlabelError

    with pytest.raises(SamlabelError, match="--multimask"):
        Segmenter(str(rigged), multimask="best")
