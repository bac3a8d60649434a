"""Issue 10 part 2: only the right images are scored.

Against the real node (`dicom-node serve` with its worker and the shipped demo model, fed by
dcmtk storescu): a lateral whose only view statement is a View Code Sequence is not scored,
overlay bits above Bits Stored in a JPEG 2000 image do not change the findings, data wider than
Bits Stored and multi-frame or colour DX images are not scored, each with a readable reason.
Then a table of corrupt and odd files against `prepare_radiograph`, the worker's reading.
"""

from __future__ import annotations

import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid as uids
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from ml.dicom_image import (
    DEFER_SIZE,
    check_eligibility,
    decode_frame,
    prepare_radiograph,
    read_image_uint8,
)
from storage import results
from storage.db import open_database
from tests.dicom_factory import (
    StudyUids,
    declare_embedded_overlays,
    encode_j2k_lossless,
    make_radiograph,
    overlay_bars,
    view_code,
    without_view_position,
    write,
)
from tests.peers import NodeProcess, storescu

SIZE = 256


def _radiograph(study: StudyUids, seed: int, number: int = 1, **kwargs):
    return make_radiograph(rows=SIZE, columns=SIZE, study=study, seed=seed,
                           instance_number=number, **kwargs)


def _lateral_by_view_code(study: StudyUids) -> pydicom.Dataset:
    lateral = _radiograph(study, seed=7, number=2, view="LL")
    return without_view_position(lateral, view_code_item=view_code("399173006", "left lateral"))


def _overlaid_j2k(study: StudyUids, seed: int) -> pydicom.Dataset:
    ds = _radiograph(study, seed=seed)
    declare_embedded_overlays(ds)
    return encode_j2k_lossless(ds, overlay_bars(ds.pixel_array), precision=14)


def _wider_than_bits_stored(study: StudyUids) -> pydicom.Dataset:
    ds = _radiograph(study, seed=5, bits_stored=14)
    pixels = ds.pixel_array
    ds.BitsStored, ds.HighBit = 12, 11  # the header claims 12 bits; the values use 14
    return encode_j2k_lossless(ds, pixels, precision=14)


def _multi_frame(study: StudyUids) -> pydicom.Dataset:
    ds = _radiograph(study, seed=8, number=3)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return ds


def _colour(study: StudyUids) -> pydicom.Dataset:
    ds = _radiograph(study, seed=9, number=4)
    grey = (ds.pixel_array >> 4).astype(np.uint8)
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for keyword in ("WindowCenter", "WindowWidth", "PresentationLUTShape"):
        delattr(ds, keyword)
    ds.PixelData = np.dstack([grey, grey, grey]).tobytes()
    return ds


class _Studies:
    """Each case's study, all sent to one node before any is checked."""

    def __init__(self) -> None:
        self.pa_and_lateral, self.pa_alone = StudyUids(), StudyUids()
        self.clean, self.overlaid = StudyUids(), StudyUids()
        self.wider, self.odd = StudyUids(), StudyUids()
        self.explicit, self.deflated = StudyUids(), StudyUids()

    def datasets(self) -> list[pydicom.Dataset]:
        return [
            _radiograph(self.pa_and_lateral, seed=1), _lateral_by_view_code(self.pa_and_lateral),
            _radiograph(self.pa_alone, seed=1),
            _radiograph(self.clean, seed=3), _overlaid_j2k(self.overlaid, seed=3),
            _wider_than_bits_stored(self.wider),
            _radiograph(self.odd, seed=4), _multi_frame(self.odd), _colour(self.odd),
            _radiograph(self.explicit, seed=6),
            _radiograph(self.deflated, seed=6, transfer_syntax=uids.DeflatedExplicitVRLittleEndian),
        ]


@pytest.fixture(scope="module")
def sent(tmp_path_factory):
    """The node with every case received and processed: (node, studies, sent datasets)."""
    workdir = tmp_path_factory.mktemp("images")
    node = NodeProcess.create(workdir, worker={"enabled": True, "poll_interval_seconds": 1})
    node.start()
    try:
        studies = _Studies()
        datasets = studies.datasets()
        paths = [write(ds, workdir / "in" / f"{i:02d}.dcm") for i, ds in enumerate(datasets)]
        syntaxes = [ds.file_meta.TransferSyntaxUID for ds in datasets]
        compressed = [p for p, ts in zip(paths, syntaxes, strict=True) if ts.is_encapsulated]
        deflated = [p for p, ts in zip(paths, syntaxes, strict=True) if ts.is_deflated]
        native = set(paths) - set(compressed) - set(deflated)
        for group, options in ((native, ()), (compressed, ("-xv",)), (deflated, ("-xd",))):
            answer = storescu(node.port, sorted(group), called_ae=node.ae_title, options=options)
            assert answer.returncode == 0, answer.stdout + answer.stderr
        for study in (studies.pa_and_lateral, studies.pa_alone, studies.clean,
                      studies.overlaid, studies.odd, studies.explicit, studies.deflated):
            node.wait_for_state(study.study, "DONE", timeout=180)
        node.wait_for_state(studies.wider.study, "SKIPPED", timeout=180)
        yield node, studies, datasets
    finally:
        node.stop()


def _result(node: NodeProcess, study: StudyUids) -> results.ResultView:
    database = open_database(f"sqlite:///{node.data_dir / 'worklist.sqlite'}", migrate=False)
    try:
        with database.read_only() as session:
            (result,) = results.results_for_study(session, study.study)
    finally:
        database.dispose()
    return result


def _findings(result: results.ResultView) -> np.ndarray:
    return np.array([f.probability for f in result.findings])


def test_lateral_known_only_by_its_view_code_is_not_scored(sent):
    node, studies, datasets = sent
    with_lateral = _result(node, studies.pa_and_lateral)
    alone = _result(node, studies.pa_alone)
    assert np.abs(_findings(with_lateral) - _findings(alone)).max() <= 1e-6
    image = {i.sop_instance_uid: i for i in with_lateral.images}[datasets[1].SOPInstanceUID]
    assert image.eligible is False
    assert image.reason == "lateral view (View Code Sequence: left lateral); only PA/AP are scored"
    assert image.flags == ("view_position_missing", "view_from_view_code_sequence")


def test_deflated_radiograph_is_scored_like_the_same_image_sent_uncompressed(sent):
    """Deflated Explicit VR Little Endian: element positions are in the inflated data, not in
    the file; the image was once refused as "truncated" (positions checked against the file)."""
    node, studies, _ = sent
    explicit, deflated = _result(node, studies.explicit), _result(node, studies.deflated)
    (instance,) = node.cli_json("studies", "show", studies.deflated.study)["instances"]
    assert instance["transfer_syntax_uid"] == uids.DeflatedExplicitVRLittleEndian
    assert np.abs(_findings(explicit) - _findings(deflated)).max() <= 1e-6


def test_overlay_bits_in_jpeg_2000_do_not_change_the_findings(sent):
    node, studies, _ = sent
    clean, overlaid = _result(node, studies.clean), _result(node, studies.overlaid)
    assert np.abs(_findings(clean) - _findings(overlaid)).max() <= 1e-4
    (image,) = overlaid.images
    assert image.eligible and image.flags == ("bits_above_high_bit_cleared",)


def test_values_wider_than_bits_stored_are_not_scored(sent):
    node, studies, _ = sent
    reason = node.study(studies.wider.study).skip_reason
    assert "the pixel values use 14 bits but Bits Stored is 12" in reason


def test_multi_frame_and_colour_dx_are_skipped_with_a_reason(sent):
    node, studies, datasets = sent
    result = _result(node, studies.odd)
    reasons = {i.sop_instance_uid: i.reason for i in result.images}
    assert reasons[datasets[6].SOPInstanceUID] is None
    assert reasons[datasets[7].SOPInstanceUID] == (
        "multi-frame image (2 frames): only single-frame radiographs are scored")
    assert reasons[datasets[8].SOPInstanceUID].startswith(
        "colour image (Photometric Interpretation RGB, 3 samples per pixel)")
    assert "Phantom" not in node.log() and "PHANTOM-0001" not in node.log()


# --- the view when ViewPosition is missing (pure function) ----------------------------------


@pytest.mark.parametrize(
    ("attributes", "eligible", "reason", "flags"),
    [
        ({"ViewCodeSequence": [view_code("399198007", "right lateral")]}, False,
         "lateral view (View Code Sequence: right lateral); only PA/AP are scored",
         ("view_position_missing", "view_from_view_code_sequence")),
        ({"ViewCodeSequence": [view_code("R-10206", "antero-posterior", "SRT")]}, True, None,
         ("view_position_missing", "view_from_view_code_sequence")),
        ({"ViewCodeSequence": [view_code("399135007", "left anterior oblique")]}, False,
         "View Code Sequence: left anterior oblique is not a frontal view (PA/AP)",
         ("view_position_missing", "view_from_view_code_sequence")),
        ({"PatientOrientation": ["P", "F"]}, False,
         "lateral view (Patient Orientation P\\F); only PA/AP are scored",
         ("view_position_missing", "view_from_patient_orientation")),
        ({"PatientOrientation": ["L", "F"]}, True, None,
         ("view_position_missing", "view_from_patient_orientation")),
        ({"SeriesDescription": "Thorax lat."}, False,
         "lateral view (Series Description says lateral); only PA/AP are scored",
         ("view_position_missing", "view_from_series_description")),
        ({"ProtocolName": "CHEST P-A"}, True, None,
         ("view_position_missing", "view_from_protocol_name")),
        ({"StudyDescription": "XR CHEST PA AND LAT"}, True, None, ("view_position_missing",)),
        ({}, True, None, ("view_position_missing",)),
    ],
)
def test_view_is_taken_from_other_attributes_when_view_position_is_missing(
    attributes, eligible, reason, flags
):
    ds = without_view_position(make_radiograph(rows=8, columns=8))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    verdict = check_eligibility(ds)
    assert (verdict.eligible, verdict.reason, verdict.flags) == (eligible, reason, flags)


# --- corrupt and odd files: the reason an administrator reads -------------------------------


def _file(tmp_path: Path, ds: pydicom.Dataset) -> Path:
    return write(ds, tmp_path / "in.dcm")


def _patched(path: Path, marker: bytes, length: int) -> Path:
    """Overwrite the 4-byte length after the first `marker` (tag + VR + reserved)."""
    data = bytearray(path.read_bytes())
    at = data.index(marker) + len(marker)
    data[at : at + 4] = length.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def _empty(tmp_path):
    ds = make_radiograph(rows=64, columns=64)
    ds.PixelData = b""
    return _file(tmp_path, ds)


def _cut(tmp_path):
    path = _file(tmp_path, make_radiograph(rows=256, columns=256))
    path.write_bytes(path.read_bytes()[:-5000])
    return path


def _huge_pixel_length(tmp_path):
    path = _file(tmp_path, make_radiograph(rows=256, columns=256))
    return _patched(path, b"\xe0\x7f\x10\x00OW\x00\x00", 0xFFFFFFF0)


def _huge_header_length(tmp_path):
    ds = make_radiograph(rows=64, columns=64)
    ds.add_new(0x00290010, "LO", "DICOM-NODE TEST")
    ds.add_new(0x00291010, "OB", b"\x01" * 16)
    return _patched(_file(tmp_path, ds), b"\x29\x00\x10\x10OB\x00\x00", 0x7FFFFFF0)


def _deflated(build):
    """The file `build` makes, rewritten as Deflated Explicit VR Little Endian: its data set
    bytes as they are (a corrupt length included) raw-deflated after a file meta naming
    Deflated. Element positions are then in the inflated data, never file offsets."""

    def rebuild(tmp_path):
        path = build(tmp_path)
        data = path.read_bytes()
        meta_end = 144 + int.from_bytes(data[140:144], "little")  # after the meta group
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        meta.TransferSyntaxUID = uids.DeflatedExplicitVRLittleEndian
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_file_meta_info(out, meta)
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = deflate.compress(data[meta_end:]) + deflate.flush()
        path.write_bytes(data[:132] + out.getvalue() + body)
        return path

    return rebuild


def _with(**attributes):
    def build(tmp_path):
        ds = make_radiograph(rows=64, columns=64)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        return _file(tmp_path, ds)

    return build


def _j2k(pixel_data):
    """A JPEG 2000 file whose Pixel Data is `pixel_data(ds)` (ds holds the valid one)."""

    def build(tmp_path):
        ds = make_radiograph(rows=64, columns=64, transfer_syntax=pydicom.uid.JPEG2000Lossless)
        ds.PixelData = pixel_data(ds)
        return _file(tmp_path, ds)

    return build


def _broken_fragment(ds):
    data = bytearray(ds.PixelData)
    data[16:20] = (0x7FFFFFF0).to_bytes(4, "little")  # length of the item after the offsets
    return bytes(data)


def _wide(tmp_path):
    return _file(tmp_path, _wider_than_bits_stored(StudyUids()))


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_empty, "Pixel Data is empty"),
        (_deflated(_with(PixelData=b"\x00" * 4096)), (
            "the file is truncated: Pixel Data is shorter than Rows x Columns x Bits Allocated"
            " (4096 of 8192 bytes)")),
        (_deflated(_huge_pixel_length), ("the file is truncated or corrupt: Pixel Data claims"
                                         " 4294967280 bytes but only 131072 remain")),
        (_cut, "the file is truncated"),  # Pixel Data 126072 of 131072 bytes, in either words
        (_huge_pixel_length, ("the file is truncated or corrupt: Pixel Data claims 4294967280"
                              " bytes but only 131072 remain in the file")),
        (_huge_header_length, ("the file is truncated or corrupt: element (0029,1010) claims"
                               " 2147483632 bytes but only ")),
        (_with(Rows=0), "Rows is 0; the image has no valid size"),
        (_with(BitsStored=20, HighBit=19), "Bits Stored (20) is larger than Bits Allocated (16)"),
        (_with(BitsAllocated=12), "Bits Allocated is 12, not 1, 8, 16, 32 or 64"),
        (_j2k(lambda ds: encapsulate([])), "Pixel Data is empty (no compressed frame)"),
        (_j2k(_broken_fragment), ("the file is truncated: a compressed fragment of Pixel Data"
                                  " claims 2147483632 bytes but only ")),
        (_j2k(lambda ds: encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])),
         ("the compressed pixel data cannot be decoded (JPEG 2000 Image Compression (Lossless"
         " Only)): ")),
        (_wide, ("the pixel values use 14 bits but Bits Stored is 12: the header does not"
                 " describe the pixel data (the extra bits are not overlay graphics)")),
    ],
    ids=["empty", "deflated-short", "deflated-pixel-length", "cut", "pixel-length", "header-length", "rows-0", "bits-stored",
         "bits-allocated", "no-fragment", "fragment-length", "bad-codestream", "wide"],
)
@pytest.mark.parametrize("defer_size", [DEFER_SIZE, 64], ids=["read", "left-on-disk"])
def test_corrupt_or_odd_file_is_not_scored_and_says_why(tmp_path, build, reason, defer_size):
    path = build(tmp_path)
    tracemalloc.start()
    try:
        ds = pydicom.dcmread(path, defer_size=defer_size)
        prepared = prepare_radiograph(ds, path, "equalize")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert prepared.pixels is None
    assert prepared.reason.startswith(reason)
    assert peak < 20_000_000  # never what a corrupt length claims (2-4 GB here)


def test_compressed_pixel_data_left_on_disk_is_scored(tmp_path):
    """A real-size compressed radiograph's Pixel Data exceeds DEFER_SIZE and stays on disk
    until decoded; its fragments are checked in the file (a real Philips CR was refused)."""
    path = _j2k(lambda ds: ds.PixelData)(tmp_path)
    ds = pydicom.dcmread(path, defer_size=64)
    prepared = prepare_radiograph(ds, path, "equalize")
    assert prepared.reason is None
    assert prepared.pixels.shape == (64, 64)


def test_deflated_file_is_read_whole_by_predict_and_the_worker(tmp_path):
    """The same image Deflated and uncompressed reads to the same 8-bit pixels, both by
    `predict`'s reader and by the worker's (deferred values come from the inflated data)."""
    plain = make_radiograph(rows=SIZE, columns=SIZE, seed=2)
    deflated = make_radiograph(rows=SIZE, columns=SIZE, seed=2,
                               transfer_syntax=uids.DeflatedExplicitVRLittleEndian)
    expected = read_image_uint8(write(plain, tmp_path / "plain.dcm"))
    path = write(deflated, tmp_path / "deflated.dcm")
    assert np.array_equal(read_image_uint8(path), expected)
    prepared = prepare_radiograph(pydicom.dcmread(path, defer_size=64), path, "equalize")
    assert prepared.reason is None and np.array_equal(prepared.pixels, expected)


def test_signed_values_are_sign_extended_from_bits_stored():
    ds = make_radiograph(rows=64, columns=64)
    values = ds.pixel_array.astype(np.int16) - 2048  # 12-bit signed: -2048..2047
    ds.PixelRepresentation = 1
    ds.PixelData = (values & 0x0FFF).astype(np.int16).tobytes()  # high bits left at zero
    pixels, _ = decode_frame(ds)
    assert np.array_equal(pixels, values) and values.min() < 0 < values.max()
