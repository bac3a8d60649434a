"""From DICOM (and PNG/JPEG) to the 8-bit image: section F of the reference, on known inputs."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from engine_samples import dx_dataset, radiograph_pixels, write_dx
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from ml.dicom_image import (
    ImageReadError,
    check_eligibility,
    dataset_to_uint8,
    decode_pixels,
    equalization_table,
    pixels_to_uint8,
    read_image_uint8,
)


def standard_linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written from the standard's formula."""
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 255, y)
    return np.rint(y).astype(np.uint8)


def column(values: list[int], dtype=np.uint16) -> np.ndarray:
    return np.array(values, dtype=dtype).reshape(1, -1)


# --- VOI conversion ------------------------------------------------------------------------


def test_linear_window_follows_the_standard():
    stored = column([0, 1535, 1536, 1537, 1800, 2048, 2300, 2559, 2560, 4095])
    ds = dx_dataset(stored, WindowCenter=2048, WindowWidth=1024)
    expected = standard_linear_window(stored.astype(float), 2048, 1024)
    assert np.array_equal(dataset_to_uint8(ds, "voi"), expected)
    assert expected[0, 0] == 0 and expected[0, -1] == 255


def test_modality_lut_comes_before_the_window():
    stored = column([824, 924, 1024, 1124, 1224])  # -200, -100, 0, 100, 200 after rescale
    ds = dx_dataset(stored, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=0,
                    WindowWidth=401)
    expected = standard_linear_window(stored.astype(float) - 1024, 0, 401)
    assert np.array_equal(dataset_to_uint8(ds, "voi"), expected)
    assert dataset_to_uint8(ds, "voi")[0, 2] == 128


def test_voi_lut_sequence_is_applied_and_scaled_from_its_bit_depth():
    stored = column([0, 1000, 2048, 3000, 4095])
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [4095 - i for i in range(4096)]  # an inverting LUT
    ds = dx_dataset(stored, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10)
    expected = np.rint((4095 - stored.astype(float)) / 4095 * 255).astype(np.uint8)
    assert np.array_equal(dataset_to_uint8(ds, "voi"), expected)  # the LUT wins over the window


def test_voi_without_window_maps_the_used_range_to_full_scale():
    stored = column([1000, 1500, 3000])
    assert dataset_to_uint8(dx_dataset(stored), "voi").tolist() == [[0, 64, 255]]


def test_monochrome1_is_inverted():
    stored = radiograph_pixels()
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    normal = dataset_to_uint8(dx_dataset(stored, **window), "voi").astype(int)
    inverted = dataset_to_uint8(
        dx_dataset(stored, PhotometricInterpretation="MONOCHROME1", **window), "voi"
    ).astype(int)
    assert np.array_equal(normal + inverted, np.full(stored.shape, 255))
    equalized = dataset_to_uint8(dx_dataset(stored, PhotometricInterpretation="MONOCHROME1"))
    assert equalized.flat[stored.argmax()] == 0 and equalized.flat[stored.argmin()] == 255


def test_signed_pixels_are_read_as_signed():
    stored = column([-2000, -1000, 0, 2000], dtype=np.int16)
    assert dataset_to_uint8(dx_dataset(stored), "voi").tolist() == [[0, 64, 128, 255]]


# --- equalisation and padding --------------------------------------------------------------


def test_equalisation_is_opencvs_equalize_hist_worked_by_hand():
    # Scaled to 8 bits: 0, 85, 170, 255 with counts 2, 3, 1, 2. OpenCV: lowest level -> 0,
    # then round_half_even(cumulative * 255 / (8 - 2)): 3 * 42.5 = 127.5 -> 128, 170, 255.
    stored = np.array([[0, 0, 1, 1], [1, 2, 3, 3]], dtype=np.uint16)
    assert dataset_to_uint8(dx_dataset(stored)).tolist() == [[0, 0, 128, 128], [128, 170, 255, 255]]


def test_equalisation_spreads_grey_levels_evenly():
    image = dataset_to_uint8(dx_dataset(radiograph_pixels(600, 500)))
    assert image.min() == 0 and image.max() == 255
    quartiles = np.percentile(image, [25, 50, 75])
    assert np.all(np.abs(quartiles - [64, 128, 191]) < 6)


def test_constant_histogram_keeps_its_level():
    table = equalization_table(np.bincount([7] * 10, minlength=256))
    assert table[7] == 7


def test_pixel_padding_is_black_and_left_out_of_the_statistics():
    interior = radiograph_pixels(200, 160)
    padded = np.full((240, 200), 4095, np.uint16)  # bright padding: would be the maximum
    padded[20:220, 20:180] = interior
    with_padding = dx_dataset(padded, PixelPaddingValue=4095)
    alone = dx_dataset(interior)
    for conversion in ("equalize", "voi"):
        ours = dataset_to_uint8(with_padding, conversion)
        assert ours[:20].max() == 0 and ours[:, :20].max() == 0
        assert np.array_equal(ours[20:220, 20:180], dataset_to_uint8(alone, conversion))


def test_pixel_padding_range_limit_excludes_a_range():
    stored = column([0, 5, 10, 1000, 2000])
    ds = dx_dataset(stored, PixelPaddingValue=10, PixelPaddingRangeLimit=0)
    assert dataset_to_uint8(ds, "voi").tolist() == [[0, 0, 0, 0, 255]]


@pytest.mark.parametrize("conversion", ["equalize", "voi"])
def test_conversion_of_a_large_image_needs_less_than_a_float32_copy(conversion):
    stored = np.random.default_rng(0).integers(0, 4096, (3000, 2500), dtype=np.uint16)
    ds = dx_dataset(stored, PixelPaddingValue=0, WindowCenter=2048, WindowWidth=4096)
    pixels = decode_pixels(ds)
    tracemalloc.start()
    try:
        dataset_image = pixels_to_uint8(ds, pixels, conversion)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dataset_image.shape == stored.shape
    assert peak < 4 * stored.size  # float32 would be 4 bytes a pixel, float64 8


# --- colour, frames, transfer syntaxes ------------------------------------------------------


def test_rgb_is_converted_to_grey_like_pillow():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    ds = dx_dataset(np.zeros((40, 30), np.uint8), PhotometricInterpretation="RGB",
                    SamplesPerPixel=3, PlanarConfiguration=0, BitsStored=8, HighBit=7)
    ds.PixelData = rgb.tobytes()
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    assert np.array_equal(dataset_to_uint8(ds, "voi"), expected)


def test_multi_frame_uses_the_first_frame_and_says_so():
    first, second = radiograph_pixels(seed=1), radiograph_pixels(seed=2)
    ds = dx_dataset(first, NumberOfFrames=2)
    ds.PixelData = first.tobytes() + second.tobytes()
    assert np.array_equal(dataset_to_uint8(ds), dataset_to_uint8(dx_dataset(first)))
    assert "multi_frame_first_frame_used" in check_eligibility(ds).flags


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_compressed_transfer_syntaxes_decode_to_the_same_image(tmp_path, syntax):
    pixels = radiograph_pixels(seed=4)
    compressed = dx_dataset(pixels)
    compressed.compress(syntax)
    path = tmp_path / "compressed.dcm"
    compressed.save_as(path, enforce_file_format=True)
    expected = dataset_to_uint8(dx_dataset(pixels))
    assert np.array_equal(read_image_uint8(path, "equalize"), expected)


# --- eligibility ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "eligible", "reason", "flags"),
    [
        ({}, True, None, ()),
        ({"Modality": "CR", "ViewPosition": "AP"}, True, None, ()),
        ({"ViewPosition": None}, True, None, ("view_position_missing",)),
        ({"BodyPartExamined": None}, True, None, ("body_part_missing",)),
        ({"ViewPosition": "LL"}, False, "lateral view", ()),
        ({"ViewPosition": "LATERAL"}, False, "lateral view", ()),
        ({"ViewPosition": "OBLIQUE"}, False, "not a frontal view", ()),
        ({"Modality": "CT"}, False, "modality CT is not CR or DX", ()),
        ({"Modality": None}, False, "modality missing", ()),
        ({"BodyPartExamined": "SKULL"}, False, "BodyPartExamined SKULL is not CHEST", ()),
    ],
)
def test_eligibility_says_why(attributes, eligible, reason, flags):
    verdict = check_eligibility(dx_dataset(column([1, 2]), **attributes))
    assert verdict.eligible is eligible
    assert (verdict.reason is None) if reason is None else (reason in verdict.reason)
    assert verdict.flags == flags


def _region(value: str, scheme: str, meaning: str) -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return [item]


KNEE = _region("72696002", "SCT", "Knee")


@pytest.mark.parametrize(
    ("attributes", "chest", "reason", "flags"),
    [
        ({"BodyPartExamined": "CHEST"}, True, None, ()),
        ({"BodyPartExamined": "THORAX"}, True, None, ()),
        ({"BodyPartExamined": "CHEST_PA"}, True, None, ()),
        ({"BodyPartExamined": "THORAX AP"}, True, None, ()),
        ({"BodyPartExamined": "CHEST PORTABLE"}, True, None, ()),
        ({"BodyPartExamined": "CHESTABDOMEN"}, False,
         "BodyPartExamined CHESTABDOMEN is not CHEST or THORAX", ()),
        ({"BodyPartExamined": "CHEST WALL"}, False, "is not CHEST or THORAX", ()),
        ({"BodyPartExamined": "LEG"}, False, "BodyPartExamined LEG is not CHEST or THORAX", ()),
        ({"BodyPartExamined": "LEG", "AnatomicRegionSequence": KNEE}, False,
         "BodyPartExamined LEG is not CHEST or THORAX", ()),
        ({"BodyPartExamined": None, "AnatomicRegionSequence": KNEE}, False,
         "Anatomic Region Sequence Knee (SCT 72696002) is not the chest", ()),
        *[({"BodyPartExamined": body, "AnatomicRegionSequence": _region(code, scheme, "Chest")},
           True, None, ("body_part_from_anatomic_region",))
          for body in (None, "TX", "POUMONS")
          for code, scheme in (("816094009", "SCT"), ("51185008", "SCT"), ("43799004", "SCT"),
                               ("T-D3000", "SRT"), ("T-D3200", "SRT"))],
        ({"BodyPartExamined": None, "AnatomicRegionSequence": _region("T-D3000", "LN", "X")},
         False, "Anatomic Region Sequence X (LN T-D3000) is not the chest", ()),
        ({"BodyPartExamined": None}, True, None, ("body_part_missing",)),
    ],
)
def test_chest_is_recognised_by_its_terms_and_codes(attributes, chest, reason, flags):
    """CHEST (the DICOM defined term), THORAX (what many vendors write), either followed by
    projection words only; else a chest code in Anatomic Region Sequence (SCT or SRT)."""
    verdict = check_eligibility(dx_dataset(column([1, 2]), **attributes))
    assert verdict.eligible is chest
    assert (verdict.reason is None) if reason is None else (reason in verdict.reason)
    assert verdict.flags == flags


def test_dataset_without_pixels_is_not_eligible():
    ds = dx_dataset(column([1, 2]))
    del ds.PixelData
    assert check_eligibility(ds).reason == "no pixel data (not an image)"


# --- files that are not what they claim ----------------------------------------------------


def test_text_file_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(ImageReadError, match="not a DICOM, PNG or JPEG file"):
        read_image_uint8(path)


def test_truncated_dicom_is_refused_with_a_reason(tmp_path):
    path = write_dx(tmp_path / "cut.dcm", radiograph_pixels())
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(ImageReadError, match=str(path)):
        read_image_uint8(path)


def test_corrupt_png_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageReadError, match="unreadable image"):
        read_image_uint8(path)


def test_sixteen_bit_png_is_cut_to_eight_bits_and_rgb_png_made_grey(tmp_path):
    sixteen = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    assert read_image_uint8(tmp_path / "sixteen.png").tolist() == [[0, 0, 1, 255]]
    rgb = np.dstack([np.full((2, 2), v, np.uint8) for v in (200, 100, 50)])
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    assert np.array_equal(read_image_uint8(tmp_path / "rgb.png"), expected)


def test_dicom_without_preamble_is_still_read(tmp_path):
    ds = dx_dataset(column([1000, 1500, 3000]))
    ds.file_meta = FileMetaDataset()
    path = tmp_path / "raw-dataset"
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    assert read_image_uint8(path, "voi").tolist() == [[0, 64, 255]]
