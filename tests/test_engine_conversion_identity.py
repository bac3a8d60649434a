"""The faster 8-bit conversion (issue 16: blocked np.take look-ups, a native-depth histogram
for padded images) gives the very bytes the previous one gave, for `equalize` and `voi`, on the
kinds of input that take different branches (tests/conversion_reference.py is the old code)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ml.dicom_image import pixels_to_uint8
from tests import conversion_reference
from tests.dicom_factory import chest_like_pixels


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _voi_lut(bits: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, bits]
    item.LUTData = (np.sqrt(np.arange(4096) / 4095) * ((1 << bits) - 1)).astype(np.uint16).tolist()
    return item


PIXELS = chest_like_pixels(700, 600, 12, seed=3)
CASES = {
    "12-bit": (PIXELS, {}),
    "12-bit window": (PIXELS, {"WindowCenter": 1800, "WindowWidth": 2500}),
    "sigmoid window": (PIXELS, {"WindowCenter": 1800, "WindowWidth": 2500,
                                "VOILUTFunction": "SIGMOID"}),
    "monochrome1 rescaled": (PIXELS, {"PhotometricInterpretation": "MONOCHROME1",
                                      "RescaleSlope": 0.5, "RescaleIntercept": -100}),
    "padding value": (np.where(np.arange(600) < 40, 0, PIXELS).astype(np.uint16),
                      {"PixelPaddingValue": 0}),
    "padding range, monochrome1": (
        np.where(np.arange(600) > 560, 4095, PIXELS).astype(np.uint16),
        {"PixelPaddingValue": 4000, "PixelPaddingRangeLimit": 4095,
         "PhotometricInterpretation": "MONOCHROME1"}),
    "signed with padding": ((PIXELS.astype(np.int32) - 2048).astype(np.int16),
                            {"PixelPaddingValue": -2048, "PixelRepresentation": 1}),
    "voi lut sequence": (PIXELS, {"VOILUTSequence": [_voi_lut(10)]}),
    "8-bit": ((PIXELS >> 4).astype(np.uint8), {"BitsAllocated": 8, "BitsStored": 8}),
    "rgb": (np.stack([PIXELS >> 4, PIXELS >> 5, PIXELS >> 6], -1).astype(np.uint8),
            {"PhotometricInterpretation": "RGB"}),
}


@pytest.mark.parametrize("conversion", ["equalize", "voi"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conversion_gives_the_same_bytes_as_before(case, conversion):
    pixels, attributes = CASES[case]
    ds = _header(**attributes)
    before = conversion_reference.pixels_to_uint8(ds, pixels.copy(), conversion)
    after = pixels_to_uint8(ds, pixels.copy(), conversion)
    assert after.dtype == np.uint8 and after.shape == before.shape
    assert np.array_equal(after, before), f"{np.count_nonzero(after != before)} pixels differ"
