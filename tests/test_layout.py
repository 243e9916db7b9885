"""Layouts: boxes, masks, colour images, weight maps, overlap rules and every refusal."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cones2.errors import LayoutError
from cones2.sampler import Layout, latent_grids
from cones2.sampler.layout import DEFAULT_WEIGHT_IN, DEFAULT_WEIGHT_OUT, parse_colour

PROMPT = "a dog and a mug on the beach"


@pytest.fixture(scope="module")
def tokenizer(demo_text_encoder):
    return demo_text_encoder[0]


def test_box_cells_and_weight_maps(tokenizer):
    from cones2.residual import locate_word

    layout = Layout.from_boxes({"dog": (0.0, 0.5, 0.5, 1.0), "mug": (0.5, 0.0, 1.0, 0.5)})
    cells = layout.cells(8, 8)
    assert cells["dog"][4:, :4].all() and cells["dog"].sum() == 16
    maps = layout.weight_maps(tokenizer, PROMPT, [(8, 8), (4, 4)])
    assert set(maps) == {64, 16}
    W = maps[64]
    assert W.shape == (1, 64, 77)
    dog = locate_word(tokenizer, PROMPT, "dog")
    mug = locate_word(tokenizer, PROMPT, "mug")
    grid = W[0, :, dog[0]].reshape(8, 8)
    assert (grid[4:, :4] == DEFAULT_WEIGHT_IN).all()
    assert (grid[:4, :] == DEFAULT_WEIGHT_OUT).all()
    other = [p for p in range(77) if p not in dog + mug]
    assert (W[0, :, other] == 0).all()


def test_pixel_boxes_equal_normalised():
    a = Layout.from_boxes({"dog": (0, 32, 32, 64)}, pixels=True, size=(64, 64))
    b = Layout.from_boxes({"dog": (0, 0.5, 0.5, 1.0)})
    assert (a.cells(16, 16)["dog"] == b.cells(16, 16)["dog"]).all()


def test_tiny_region_keeps_a_cell():
    layout = Layout.from_boxes({"dog": (0.1, 0.1, 0.12, 0.12)})
    assert layout.cells(4, 4)["dog"].sum() == 1


def test_masks_and_colour_image(tmp_path):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:30, 5:40] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    layout = Layout.from_masks({"dog": tmp_path / "m.png"})
    assert layout.size == (64, 64)
    assert layout.cells(64, 64)["dog"].sum() == 20 * 35

    img = np.full((64, 64, 3), 255, dtype=np.uint8)
    img[:, :32] = (250, 5, 3)  # "red" with JPEG-like noise
    img[40:, 40:] = (0, 0, 255)
    img[20, 10] = (128, 128, 128)  # stray pixel far from every colour -> background
    Image.fromarray(img).save(tmp_path / "layout.png")
    lay = Layout.from_colour_image(tmp_path / "layout.png", {"255,0,0": "dog", "#0000ff": ("mug", 3.0)})
    cells = lay.cells(64, 64)
    assert cells["dog"].sum() == 64 * 32 - 1
    assert cells["mug"].sum() == 24 * 24
    assert {r.subject: r.weight_in for r in lay.regions} == {"dog": DEFAULT_WEIGHT_IN, "mug": 3.0}


def test_overlap_rules():
    boxes = {"dog": (0.0, 0.0, 0.6, 1.0), "mug": (0.4, 0.0, 1.0, 1.0)}
    share = Layout.from_boxes(boxes).cells(10, 10)
    assert (share["dog"] & share["mug"]).sum() == 20
    last = Layout.from_boxes(boxes, overlap="last").cells(10, 10)
    assert not (last["dog"] & last["mug"]).any() and last["mug"].sum() == 60
    with pytest.raises(LayoutError, match="overlap"):
        Layout.from_boxes(boxes, overlap="error")
    Layout.from_boxes({"dog": (0, 0, 0.5, 1), "mug": (0.5, 0, 1, 1)}, overlap="error")  # touching is fine


@pytest.mark.parametrize(
    "box, match",
    [
        ((0.1, 0.1, 1.2, 0.5), "outside"),
        ((-0.1, 0.1, 0.5, 0.5), "outside"),
        ((0.5, 0.1, 0.5, 0.5), "empty"),
        ((0.6, 0.1, 0.5, 0.5), "empty"),
        ((0.1, 0.2, 0.3), "4 numbers"),
    ],
)
def test_bad_boxes(box, match):
    with pytest.raises(LayoutError, match=match):
        Layout.from_boxes({"dog": box})


def test_pixel_box_outside_image():
    with pytest.raises(LayoutError, match="outside"):
        Layout.from_boxes({"dog": (0, 0, 100, 10)}, pixels=True, size=(64, 64))
    with pytest.raises(LayoutError, match="image size"):
        Layout.from_boxes({"dog": (0, 0, 10, 10)}, pixels=True)


def test_word_not_in_prompt(tokenizer):
    layout = Layout.from_boxes({"cat": (0, 0, 0.5, 0.5)})
    with pytest.raises(LayoutError, match="cat"):
        layout.weight_maps(tokenizer, PROMPT, [(8, 8)])
    with pytest.raises(LayoutError, match="occurrence"):
        Layout.from_boxes({"dog#2": (0, 0, 0.5, 0.5)}).weight_maps(tokenizer, PROMPT, [(8, 8)])


def test_second_occurrence(tokenizer):
    from cones2.residual import locate_word

    prompt = "a dog and a dog"
    W = Layout.from_boxes({"dog#2": (0, 0, 0.5, 0.5)}).weight_maps(tokenizer, prompt, [(4, 4)])[16]
    second = locate_word(tokenizer, prompt, "dog", 2)[0]
    first = locate_word(tokenizer, prompt, "dog", 1)[0]
    assert W[0, 0, second] == DEFAULT_WEIGHT_IN and (W[0, :, first] == 0).all()


def test_mask_wrong_size(tmp_path):
    a = np.zeros((64, 64), dtype=bool)
    a[:10, :10] = True
    b = np.zeros((32, 64), dtype=bool)
    b[:10, :10] = True
    with pytest.raises(LayoutError, match="different sizes"):
        Layout.from_masks({"dog": a, "mug": b})
    layout = Layout.from_masks({"dog": a})
    layout.check_size(128, 128)  # same aspect ratio: resized
    with pytest.raises(LayoutError, match="aspect ratio"):
        layout.check_size(64, 128)


def test_empty_mask_and_unreadable(tmp_path):
    with pytest.raises(LayoutError, match="empty"):
        Layout.from_masks({"dog": np.zeros((8, 8), dtype=bool)})
    with pytest.raises(LayoutError, match="no such file"):
        Layout.from_masks({"dog": tmp_path / "nope.png"})
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(LayoutError, match="not a readable image"):
        Layout.from_masks({"dog": tmp_path / "bad.png"})


def test_colour_matching_no_pixel(tmp_path):
    img = np.full((16, 16, 3), 255, dtype=np.uint8)
    img[:, :8] = (255, 0, 0)
    with pytest.raises(LayoutError, match="matches no pixel"):
        Layout.from_colour_image(img, {"255,0,0": "dog", "0,255,0": "mug"})
    with pytest.raises(LayoutError, match="bad colour"):
        parse_colour("300,0,0")
    with pytest.raises(LayoutError, match="no colour"):
        Layout.from_colour_image(img, {})


def test_duplicate_and_weights():
    layout = Layout.from_boxes({"dog": (0, 0, 0.5, 0.5)}, weights={"dog": (4.0, -5.0)})
    assert (layout.regions[0].weight_in, layout.regions[0].weight_out) == (4.0, -5.0)
    with pytest.raises(LayoutError, match="more than one region"):
        Layout.combine([layout, Layout.from_boxes({"dog": (0.5, 0.5, 1, 1)})])
    with pytest.raises(LayoutError, match="no region"):
        layout.with_weights({"mug": 1.0})


def test_latent_grids():
    assert latent_grids(48, 48, 4) == [(48, 48), (24, 24), (12, 12), (6, 6)]
    assert latent_grids(5, 7, 3) == [(5, 7), (3, 4), (2, 2)]


def test_preview(tmp_path):
    from cones2.sampler.preview import save_layout_preview

    layout = Layout.from_boxes({"dog": (0.05, 0.3, 0.5, 0.95), "mug": (0.55, 0.5, 0.95, 0.95)})
    path = save_layout_preview(layout, tmp_path / "p.png", width=128, height=96)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (96, 128, 3)
    assert not (img[60, 20] == img[5, 5]).all()  # the dog's region is coloured, the corner is not
