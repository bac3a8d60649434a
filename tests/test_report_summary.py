"""The summary image: a Secondary Capture a plain viewer can show beside the study."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from dicom_node.reporting.summary import build_summary_sc, render_summary
from dicom_node.reporting.uids import ResultKey, report_uids
from tests.report_samples import WHEN, algorithm, dciodvfy, dx_image, findings


def _uids(evidence, version=1):
    key = ResultKey.of(
        study_instance_uid=evidence[0].StudyInstanceUID, model_name="chexzero-demo-synthetic",
        checkpoint_sha256s=["a1" * 32], profile="v3",
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in evidence],
    )
    return report_uids(key, version=version, labels=[f.label for f in findings()])


@pytest.fixture
def evidence():
    study = generate_uid()
    return [dx_image(study, 1), dx_image(study, 2)]


@pytest.fixture
def saved(evidence, tmp_path):
    ds = build_summary_sc(evidence=evidence, findings=findings(), algorithm=algorithm(),
                          uids=_uids(evidence).summary, content_datetime=WHEN)
    path = tmp_path / "summary.dcm"
    ds.save_as(path, enforce_file_format=True)
    # A copy a person can look at (pytest keeps the last few tmp dirs).
    Image.fromarray(pydicom.dcmread(path).pixel_array).save(tmp_path / "summary.png")
    return path


def test_summary_is_an_8_bit_secondary_capture_in_the_study(saved, evidence):
    sc = pydicom.dcmread(saved)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == evidence[0].StudyInstanceUID
    assert sc.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in evidence}
    assert (sc.PhotometricInterpretation, sc.BitsAllocated, sc.SamplesPerPixel) == (
        "MONOCHROME2", 8, 1)
    assert sc.pixel_array.dtype == np.uint8
    assert str(sc.PatientName) == "Müller^Anna"
    referenced = {item.ReferencedSOPInstanceUID for item in sc.SourceImageSequence}
    assert referenced == {ds.SOPInstanceUID for ds in evidence}


def test_summary_of_demo_model_carries_the_caveat(saved):
    sc = pydicom.dcmread(saved)
    assert sc.ImageComments.startswith("NOT FOR CLINICAL USE")
    assert "NOT FOR CLINICAL USE" in sc.SeriesDescription


def test_caveat_is_drawn_as_a_white_band_only_for_the_demo_model():
    def band_rows(pixels):
        return int(((pixels == 255).mean(axis=1) > 0.6).sum())

    demo = render_summary(findings(), algorithm(clinical_use=False))
    clinical = render_summary(findings(), algorithm(clinical_use=True))
    assert band_rows(demo) >= 100  # two lines of 52 px letters on white
    assert band_rows(clinical) <= 3  # only the table's header rule
    assert demo.shape[0] > clinical.shape[0]


def test_table_has_one_row_per_finding():
    few = render_summary(findings()[:2], algorithm())
    many = render_summary(findings(), algorithm())
    assert many.shape[0] - few.shape[0] == 60 * (len(findings()) - 2)


def test_decisions_change_the_picture():
    outcomes = findings()
    flipped = [type(f)(**{**f.__dict__, "present": not f.present}) for f in outcomes]
    assert not np.array_equal(render_summary(outcomes, algorithm()),
                              render_summary(flipped, algorithm()))


def test_same_result_same_summary_uids_and_pixels(evidence):
    one = build_summary_sc(evidence=evidence, findings=findings(), algorithm=algorithm(),
                           uids=_uids(evidence).summary, content_datetime=WHEN)
    two = build_summary_sc(evidence=evidence, findings=findings(), algorithm=algorithm(),
                           uids=_uids(evidence).summary, content_datetime=WHEN)
    assert one.SOPInstanceUID == two.SOPInstanceUID
    assert one.PixelData == two.PixelData
    assert one.SOPInstanceUID != _uids(evidence).sr.sop_instance_uid


def test_dciodvfy_finds_no_errors(saved):
    errors, warnings = dciodvfy(saved)
    assert errors == []
    assert warnings == []


def test_series_and_content_carry_the_result_time(saved):
    sc = pydicom.dcmread(saved)
    assert (sc.SeriesDate, sc.SeriesTime) == ("20240301", "093000")
    assert (sc.ContentDate, sc.ContentTime) == ("20240301", "093000")


def test_present_findings_are_listed_first():
    """Present rows are drawn bold in white (255), absent ones in grey (190): read the table's
    rows top to bottom by their brightest pixel."""
    outcomes = findings()  # catalogue order: present, absent, present, absent, present
    assert [f.present for f in outcomes] == [True, False, True, False, True]
    pixels = render_summary(outcomes, algorithm())
    brightest = pixels[:, 60:600].max(axis=1)  # the Finding column
    bands, start = [], None
    for y, value in enumerate(brightest):
        if value > 100 and start is None:
            start = y
        elif value <= 100 and start is not None:
            bands.append(int(brightest[start:y].max()))
            start = None
    rows = [b for b in bands if b in (255, 190)][-5:]  # the finding rows end the table
    assert rows == [255, 255, 255, 190, 190]


def test_summary_names_the_images_left_out(evidence):
    from dicom_node.reporting.content import ImageUse

    scored = [ImageUse(evidence[0].SOPInstanceUID, True, None, "PA")]
    left_out = scored + [ImageUse(evidence[1].SOPInstanceUID, False, "lateral view", "LL")]
    one = render_summary(findings(), algorithm(), scored)
    two = render_summary(findings(), algorithm(), left_out)
    assert not np.array_equal(one, two)  # "1 of 1 image scored" vs "1 of 2 ...; not used: ..."
