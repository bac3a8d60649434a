"""A varied set of compressed radiographs for measuring reduced-resolution decoding (ml.decoders)
against a full decode: synthetic phantoms with findings (ml.synth: DX or CR, 12/14/16 bits
stored, chosen by the seed; every second phantom MONOCHROME1) at several sizes, each written as JPEG 2000
lossless, JPEG 2000 lossy (ratio 20) and 8-bit JPEG baseline (quality 90).

Used by tests/test_decoders.py (a few small images) and bench/inference.py (the |dp| table).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom import uid as uids

from ml.synth.dataset import SynthOptions, generate
from tests.dicom_factory import _jpeg_baseline

VARIANTS = {
    "j2k-lossless": uids.JPEG2000Lossless,
    "j2k-lossy": uids.JPEG2000,
    "jpeg-baseline": uids.JPEGBaseline8Bit,
}


def write_varied_set(folder: Path, heights: tuple[int, ...], studies: int, seed: int = 7
                     ) -> list[tuple[str, Path]]:
    """(description, path) for `studies` phantoms per height, in each of VARIANTS."""
    written = []
    for height in heights:
        out = folder / f"synth-{height}"
        written_studies = generate(SynthOptions(out, studies, seed + height, height=height,
                                                laterals=False))
        for number, study in enumerate(written_studies):
            source = out / study.images[0].relpath
            for variant, syntax in VARIANTS.items():
                ds = pydicom.dcmread(source)
                if number % 2:
                    _as_monochrome1(ds)
                label = (f"{ds.Columns}x{ds.Rows} {ds.BitsStored}-bit "
                         f"{ds.PhotometricInterpretation} {variant}")
                if syntax == uids.JPEGBaseline8Bit:
                    _jpeg_baseline(ds)
                elif syntax == uids.JPEG2000:
                    ds.compress(syntax, j2k_cr=[20])
                else:
                    ds.compress(syntax)
                path = out / f"{study.study_id}-{variant}.dcm"
                ds.save_as(path, enforce_file_format=True)
                written.append((label, path))
    return written


def _as_monochrome1(ds: pydicom.Dataset) -> None:
    """The same image stored inverted, as MONOCHROME1 (a no-op if it already is)."""
    if ds.PhotometricInterpretation == "MONOCHROME1":
        return
    top = (1 << int(ds.BitsStored)) - 1
    ds.PixelData = (top - ds.pixel_array).astype("<u2").tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    if "PresentationLUTShape" in ds:
        ds.PresentationLUTShape = "INVERSE"
    if "WindowCenter" in ds:
        ds.WindowCenter = f"{top - float(ds.WindowCenter):.1f}"
