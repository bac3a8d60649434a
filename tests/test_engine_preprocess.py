"""Steps A and B of the CheXzero reference on inputs whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_samples import textured_image
from PIL import Image

from ml.preprocess import (
    CHEXZERO_MEAN,
    CHEXZERO_STD,
    ImageShapeError,
    canvases_to_input,
    preprocess_uint8,
    resized_size,
    to_canvas,
)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1900, 2324, (261, 319)),  # int() truncation: 2324 * (320 / 2324) = 319.99999...
        (950, 1162, (261, 319)),
        (2000, 3000, (213, 320)),
        (3000, 2500, (320, 266)),
        (160, 100, (320, 200)),  # small images are up-sampled
        (320, 320, (320, 320)),
    ],
)
def test_resized_size_truncates_like_the_reference(width, height, expected):
    assert resized_size(width, height) == expected


def test_tall_image_is_centred_with_the_odd_pixel_right_and_bottom():
    canvas = to_canvas(np.full((2324, 1900), 255, np.uint8))
    columns = np.flatnonzero(canvas[160] > 0)
    rows = np.flatnonzero(canvas[:, 160] > 0)
    assert (columns[0], columns[-1]) == (29, 289)  # 29 black columns left, 30 right
    assert (rows[0], rows[-1]) == (0, 318)  # long side 319: the black row is the bottom one
    assert canvas[319].max() == 0


def test_wide_image_is_centred_vertically():
    canvas = to_canvas(np.full((100, 160), 200, np.uint8))  # -> 320 x 200
    rows = np.flatnonzero(canvas[:, 5] > 0)
    assert (rows[0], rows[-1]) == (60, 259)
    assert canvas.shape == (320, 320) and canvas.dtype == np.uint8


def test_canvas_is_pillows_own_8bit_lanczos_result():
    image = textured_image(1162, 950)
    resized = Image.fromarray(image).resize((261, 319), Image.Resampling.LANCZOS)
    expected = np.zeros((320, 320), np.uint8)
    expected[0:319, 29:290] = np.asarray(resized)
    assert np.array_equal(to_canvas(image), expected)


def test_model_input_at_320_is_the_normalised_canvas_without_resize():
    canvas = textured_image(320, 320)
    tensor = preprocess_uint8(canvas, 320)
    expected = (torch.from_numpy(canvas.astype(np.float32)) - 101.48761) / 83.43944
    assert tensor.shape == (3, 320, 320)
    assert torch.equal(tensor[0], expected) and torch.equal(tensor[2], expected)


def test_model_input_at_224_is_bicubic_without_antialias_after_normalising():
    canvas = textured_image(320, 320, seed=3)
    normalised = (torch.from_numpy(canvas.astype(np.float32)) - CHEXZERO_MEAN) / CHEXZERO_STD
    expected = F.interpolate(
        normalised.repeat(3, 1, 1)[None], size=(224, 224), mode="bicubic",
        align_corners=False, antialias=False,
    )[0]
    ours = canvases_to_input(canvas[None], 224)[0]
    assert torch.allclose(ours, expected, atol=1e-6)
    antialiased = F.interpolate(
        normalised[None, None], size=(224, 224), mode="bicubic", antialias=True
    )[0, 0]
    assert (ours[0] - antialiased).abs().max() > 0.05  # the flag matters on this input
    assert ours.min() < (0 - CHEXZERO_MEAN) / CHEXZERO_STD  # bicubic overshoot is not clamped


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint16), np.zeros((0, 5), np.uint8)],
)
def test_not_a_2d_uint8_image_is_refused(bad):
    with pytest.raises(ImageShapeError, match="2-D uint8"):
        to_canvas(bad)


def test_a_sliver_is_refused_not_crashed_on():
    with pytest.raises(ImageShapeError, match="too narrow"):
        to_canvas(np.zeros((2000, 1), np.uint8))
