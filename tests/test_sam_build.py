"""Checkpoints load by architecture: any file name with ``arch``, one-line errors naming what does not fit."""

from __future__ import annotations

import shutil

import pytest
import torch

from pipeline.errors import SamlabelError
from pipeline.sam import ARCHS, Segmenter, load_sam
from pipeline.sam.build import resolve_arch
from pipeline.sam.checkpoint import mismatches


def test_archs_are_ultralytics_model_names_then_medsam_and_hq_sam():
    from ultralytics.models.sam.build import sam_model_map

    from pipeline.sam.profiles import EXTRA_ARCHS

    assert ARCHS == tuple(name[: -len(".pt")] for name in sam_model_map) + tuple(EXTRA_ARCHS)
    assert {"medsam", "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny"} <= set(ARCHS)
    assert {"sam_b", "sam_l", "sam_h", "mobile_sam", "sam2_t", "sam2.1_l"} <= set(ARCHS)


@pytest.mark.parametrize(
    "name, arch",
    [
        ("mobile_sam.pt", "mobile_sam"),
        ("runs/best_sam_b.pt", "sam_b"),
        ("sam2.1_t.pt", "sam2.1_t"),  # not sam2_t
        ("x/sam2_t.pt", "sam2_t"),
    ],
)
def test_arch_from_the_file_name(name, arch):
    assert resolve_arch(name) == arch


def test_unknown_name_without_arch_lists_the_choices():
    with pytest.raises(SamlabelError) as e:
        resolve_arch("weights/my_finetuned.pt")
    message = str(e.value)
    assert "\n" not in message and message.startswith("--segmenter weights/my_finetuned.pt: ")
    assert "pass --sam-arch, one of " + ", ".join(ARCHS) in message


def test_unknown_arch_lists_the_choices():
    with pytest.raises(SamlabelError, match=r"--sam-arch sam_x: expected one of sam_h, sam_l, sam_b, mobile_sam, "):
        resolve_arch("mobile_sam.pt", "sam_x")


def test_finetuned_file_name_loads_with_arch(plain_mobile_sam, tmp_path):
    finetuned = tmp_path / "my_finetuned.pt"
    shutil.copy(plain_mobile_sam, finetuned)
    before = torch.random.get_rng_state()
    model = load_sam(finetuned, arch="mobile_sam")
    assert torch.equal(torch.random.get_rng_state(), before)  # building drew from a forked RNG
    state = torch.load(plain_mobile_sam)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert Segmenter(finetuned, arch="mobile_sam", device="cpu").arch == "mobile_sam"
    with pytest.raises(SamlabelError, match="pass --sam-arch"):
        Segmenter(finetuned, device="cpu")


def test_another_size_names_the_first_key_that_does_not_fit(plain_mobile_sam):
    with pytest.raises(SamlabelError) as e:
        load_sam(plain_mobile_sam, arch="sam_b")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"--segmenter {plain_mobile_sam}: the checkpoint does not fit sam_b: missing key ")
    assert message.endswith("(is it another SAM size? pass the right --sam-arch)")
    assert "missing key 'image_encoder.pos_embed' (and " in message  # sam_b's first key; MobileSAM has none


def test_mismatches_in_key_order():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1)}
    state = {"b": torch.zeros(4, 3), "x": torch.zeros(1), "c": torch.zeros(1)}
    assert mismatches(state, expected, arch="sam_t") == [
        "missing key 'a'",
        "key 'b' has shape (4, 3), sam_t expects (3, 4)",
        "unexpected key 'x'",
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x80junk", "cannot load it as SAM weights ("),  # then the weights-only unpickler's words
        ({"epoch": 3, "optimizer": {}}, "not SAM weights (no mobile_sam key among its 2 keys: 'epoch', 'optimizer'"),
        ([1, 2], "it holds a list, not a state dict"),
    ],
    ids=["junk", "not-sam", "list"],
)
def test_unreadable_or_foreign_files_one_line(tmp_path, content, message):
    path = tmp_path / "mobile_sam.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(SamlabelError) as e:
        load_sam(path)
    assert message in str(e.value) and "\n" not in str(e.value)
