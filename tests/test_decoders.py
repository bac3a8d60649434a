"""Faster decoders (ml.decoders through ml.dicom_image.decode_frame) give the reference
decoder's pixels on every transfer syntax the node accepts, and reduced-resolution decoding
keeps scores within the bound documented in ml/decoders.py."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom import uid as uids
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array

from dicom_node.listener import TRANSFER_SYNTAXES
from dicom_node.shipped import demo_checkpoint, findings_file
from ml.catalogue import load_catalogue
from ml.decoders import REDUCED_DP_BOUND, decode_fast, fast_decodable, j2k_header
from ml.dicom_image import (
    PREFERRED_DECODER,
    decode_frame,
    pixel_source,
    prepare_radiograph,
    read_dataset,
)
from ml.pixel_data import fit_bits_stored
from ml.preprocess import resized_size
from tests.dicom_factory import make_radiograph, write
from tests.reduced_set import write_varied_set

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# real-world codestreams shipped with pydicom (other encoders than ours), grey ones
PYDICOM_SAMPLES = (
    "693_J2KI.dcm", "GDCMJ2K_TextGBR.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm",
    "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm", "MR_small_RLE.dcm", "examples_jpeg2k.dcm",
)


def _jpeg_process(ds: pydicom.Dataset, syntax: str, **encode: object) -> pydicom.Dataset:
    """`ds` (uncompressed) re-encoded by libjpeg-turbo: lossless process 14 or extended."""
    frame = imagecodecs.jpeg8_encode(ds.pixel_array, bitspersample=int(ds.BitsStored), **encode)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _corpus_file(syntax: str, bits: int, photometric: str, tmp_path: Path) -> Path:
    encode: dict[str, object] = {}
    if syntax == uids.JPEGLossless:
        encode = {"lossless": True, "predictor": 6}
    elif syntax == uids.JPEGLosslessSV1:
        encode = {"lossless": True, "predictor": 1}
    elif syntax == uids.JPEGExtended12Bit:
        encode = {"level": 90}
        bits = min(bits, 12)
    made = syntax if not encode else uids.ExplicitVRLittleEndian
    ds = make_radiograph(rows=301, columns=257, bits_stored=bits, photometric=photometric,
                         transfer_syntax=made, seed=bits)
    if encode:
        ds = _jpeg_process(ds, syntax, **encode)
    return write(ds, tmp_path / f"{syntax}-{bits}-{photometric}.dcm")


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES)
def test_every_accepted_syntax_decodes_as_pydicom_does(tmp_path, syntax, bits, photometric):
    path = _corpus_file(syntax, bits, photometric, tmp_path)
    ds = read_dataset(path)
    source = pixel_source(ds, path)
    ours, _ = decode_frame(ds, source)
    assert ours.dtype == (reference := _reference(path)).dtype
    assert np.array_equal(ours, reference)
    if fast_decodable(ds, syntax):  # the faster decoder is the one that ran
        assert np.array_equal(decode_fast(ds, source, syntax), reference)


def _reference(path: Path) -> np.ndarray:
    """The first frame as the node decoded it before issue 16: pydicom with the plugin of
    PREFERRED_DECODER (Pillow for baseline JPEG, whose inverse DCT the reference uses for JPEG
    files), else pydicom's own choice; only Bits Stored kept."""
    ds = pydicom.dcmread(path)
    plugin = PREFERRED_DECODER.get(ds.file_meta.TransferSyntaxUID, "")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = pixel_array(ds, decoding_plugin=plugin, index=0 if frames > 1 else None)
    return fit_bits_stored(ds, pixels)[0]


@pytest.mark.parametrize("name", PYDICOM_SAMPLES)
def test_other_encoders_codestreams_decode_as_pydicom_does(name):
    path = PYDICOM_FILES / name
    ours, _ = decode_frame(read_dataset(path), path)
    reference = _reference(path)
    assert ours.dtype == reference.dtype and np.array_equal(ours, reference)


def test_jpeg_2000_header_gives_size_precision_and_levels(tmp_path):
    ds = make_radiograph(rows=1000, columns=800, bits_stored=14,
                         transfer_syntax=uids.JPEG2000Lossless)
    from ml.decoders import frame_bytes

    header = j2k_header(frame_bytes(ds, ds))
    assert (header.columns, header.rows, header.precision, header.signed) == (800, 1000, 14, False)
    assert header.levels >= 3  # openjpeg's default: 5 wavelet levels


@pytest.mark.parametrize("syntax", [uids.JPEG2000Lossless, uids.JPEG2000, uids.JPEGBaseline8Bit])
def test_reduced_decoding_reads_fewer_pixels_and_keeps_the_canvas_geometry(tmp_path, syntax):
    ds = make_radiograph(rows=2000, columns=1500, transfer_syntax=syntax)
    path = write(ds, tmp_path / "large.dcm")
    header = read_dataset(path)
    pixels, _ = decode_frame(header, path, fit=320)
    assert pixels.shape == (500, 375)  # 1/4: 1/8 would leave a long side of 250 < 320
    full = prepare_radiograph(read_dataset(path), path, "equalize", reduced=False)
    reduced = prepare_radiograph(read_dataset(path), path, "equalize", reduced=True)
    assert reduced.pixels.shape[::-1] == resized_size(1500, 2000)
    assert full.pixels.shape == (2000, 1500)


@pytest.mark.slow
def test_reduced_resolution_moves_scores_within_the_documented_bound(tmp_path):
    from ml.engine import ZeroShotEngine

    images = write_varied_set(tmp_path, heights=(1024,), studies=1)
    paths = [path for _, path in images]
    engine = ZeroShotEngine([demo_checkpoint()],
                            load_catalogue(findings_file()), device="cpu")
    for conversion in ("equalize", "voi"):
        engine.preparer.reduced = False
        full = engine.score_paths(paths, conversion)
        engine.preparer.reduced = True
        reduced = engine.score_paths(paths, conversion)
        dp = np.array([[abs(a.probabilities[f] - b.probabilities[f]) for f in a.probabilities]
                       for a, b in zip(full, reduced, strict=True)])
        assert dp.max() <= REDUCED_DP_BOUND[conversion]
        assert dp.max() > 0  # the reduced path really ran: scores are not bit-identical
    engine.close()
