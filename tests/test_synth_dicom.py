"""`dicom-node synth` writes DICOM a PACS would accept: readable, the right SOP class and
photometric interpretation, laterals in their own series, valid by dciodvfy, every compressed
transfer syntax decodable; and the CLI contract (JSON, one-line errors)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ml.dicom_image import read_image_uint8
from ml.synth.dataset import SynthOptions, generate
from ml.synth.dicom_writer import CR_IMAGE, DX_FOR_PRESENTATION, TRANSFER_SYNTAXES

CLI = [sys.executable, "-c", "from dicom_node.cli import main; main()"]


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("synth-dicom")
    written = generate(SynthOptions(out, 12, 2, "dicom", height=192))
    return out, written


def test_headers_are_those_of_a_chest_radiograph(dicom_set):
    out, written = dicom_set
    kinds, photometrics, bits = set(), set(), set()
    for study in written:
        for image in study.images:
            ds = pydicom.dcmread(out / image.relpath)
            expected = DX_FOR_PRESENTATION if ds.Modality == "DX" else CR_IMAGE
            assert ds.SOPClassUID == expected == ds.file_meta.MediaStorageSOPClassUID
            assert ds.BodyPartExamined == "CHEST"
            assert ds.ViewPosition == image.view
            assert ds.PatientName.family_name == "SYNTH" and ds.StudyDate
            assert ds.PatientOrientation == (["L", "F"] if image.frontal else ["P", "F"])
            assert len(ds.ImagerPixelSpacing) == 2 and float(ds.WindowWidth) > 0
            assert 12 <= ds.BitsStored <= 16 and ds.BitsAllocated == 16
            pixels = ds.pixel_array
            assert pixels.shape == (ds.Rows, ds.Columns) and int(pixels.max()) < 2**ds.BitsStored
            kinds.add(ds.Modality)
            photometrics.add(ds.PhotometricInterpretation)
            bits.add(ds.BitsStored)
    assert kinds == {"DX", "CR"} and photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert len(bits) >= 2


def test_lateral_is_a_second_series_of_the_same_study(dicom_set):
    out, written = dicom_set
    with_lateral = [s for s in written if len(s.images) == 2]
    assert with_lateral
    front, side = (pydicom.dcmread(out / i.relpath) for i in with_lateral[0].images)
    assert front.StudyInstanceUID == side.StudyInstanceUID
    assert front.SeriesInstanceUID != side.SeriesInstanceUID
    assert (front.SeriesNumber, side.SeriesNumber) == (1, 2) and side.ViewPosition == "LL"


def test_monochrome1_is_inverted_so_the_engine_sees_the_same_picture(dicom_set):
    out, written = dicom_set
    means = {}
    for study in written:
        ds = pydicom.dcmread(out / study.images[0].relpath)
        image = read_image_uint8(out / study.images[0].relpath, "voi")
        # lungs (dark) in the upper middle of each side, mediastinum (bright) in the middle
        h, w = image.shape
        lung = image[int(0.3 * h):int(0.5 * h), int(0.15 * w):int(0.3 * w)].mean()
        spine = image[int(0.3 * h):int(0.5 * h), int(0.48 * w):int(0.52 * w)].mean()
        means.setdefault(ds.PhotometricInterpretation, []).append(spine - lung)
    assert all(d > 20 for values in means.values() for d in values)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_finds_no_errors(dicom_set):
    out, written = dicom_set
    for study in written[:4]:
        for image in study.images:
            result = subprocess.run(["dciodvfy", str(out / image.relpath)], capture_output=True,
                                    text=True, check=False)
            errors = [line for line in (result.stdout + result.stderr).splitlines()
                      if line.startswith("Error")]
            assert not errors, errors


@pytest.mark.parametrize("compress", ["rle", "jpegls", "j2k"])
def test_compressed_syntaxes_decode_to_the_same_pixels(tmp_path, compress):
    plain = generate(SynthOptions(tmp_path / "none", 2, 8, "dicom", height=128, laterals=False))
    generate(SynthOptions(tmp_path / compress, 2, 8, "dicom", compress, height=128, laterals=False))
    for study in plain:
        a = pydicom.dcmread(tmp_path / "none" / study.images[0].relpath)
        b = pydicom.dcmread(tmp_path / compress / study.images[0].relpath)
        assert b.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[compress]
        assert np.array_equal(a.pixel_array, b.pixel_array)


def test_cli_same_seed_same_bytes_and_json_summary(tmp_path):
    runs = []
    for name in ("a", "b"):
        result = subprocess.run(CLI + ["synth", "--out", str(tmp_path / name), "--studies", "3",
                                       "--seed", "42", "--height", "96", "--json"],
                                capture_output=True, text=True, check=True)
        runs.append(json.loads(result.stdout))
    assert runs[0]["studies"] == 3 and runs[0]["images"] >= 3
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
                         for f in files)
    with (tmp_path / "a" / "reports.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert all("IMPRESSION:" in r["report"] or "FINDINGS:" in r["report"] for r in rows)


def test_cli_rejects_bad_input_with_one_line(tmp_path):
    result = subprocess.run(CLI + ["synth", "--out", str(tmp_path), "--studies", "2",
                                   "--compress", "zip"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "compression" in result.stderr
