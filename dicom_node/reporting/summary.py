"""The summary image: a Secondary Capture that shows the findings table for viewers that do not
render SR. 8-bit MONOCHROME2, same study, its own series; no patient identification is drawn
(the viewer shows the header), so Burned In Annotation is NO."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset

from dicom_node.reporting.content import (
    SCORE_NOTE,
    AlgorithmInfo,
    FindingOutcome,
    ImageUse,
    aggregation_line,
    analysis_time,
    check_algorithm,
    check_findings,
    conversion_line,
    images_line,
    images_of,
    not_analysed_text,
    ordered,
    score_and_threshold,
)
from dicom_node.reporting.evidence import tolerant_headers
from dicom_node.reporting.render import (
    NOT_FOR_CLINICAL_USE,
    Font,
    add_file_meta,
    add_series_and_equipment,
    copy_patient_and_study,
    font,
    wrap,
)
from dicom_node.reporting.uids import InstanceUids

WIDTH = 1600
MARGIN = 60
ROW_HEIGHT = 60


@dataclass(frozen=True)
class _Fonts:
    caveat: Font
    title: Font
    body: Font
    bold: Font
    small: Font


@cache  # once per process (cheap: ~0.4 ms, but there is no reason to repeat it)
def _fonts() -> _Fonts:
    return _Fonts(
        caveat=font(True, 52), title=font(True, 44), body=font(False, 36),
        bold=font(True, 36), small=font(False, 28),
    )


def render_summary(
    findings: Sequence[FindingOutcome],
    algorithm: AlgorithmInfo,
    images: Sequence[ImageUse] = (),
    when: datetime.datetime | None = None,
) -> np.ndarray:
    """The findings table as a 2-D uint8 array (white on black): present findings first, then
    the model, what the scores are, which `images` were scored (and why others were not), the
    aggregation rule, the DICOM to 8-bit conversion and the analysis time (`when`)."""
    check_findings(findings)
    check_algorithm(algorithm)
    fonts = _fonts()
    caveat_lines = [] if algorithm.clinical_use else _wrap(algorithm.caveat, fonts.caveat)
    notes = _notes(algorithm, images, when, fonts)
    for f in findings:
        if f.derivation:
            notes += _wrap(f"{f.label}: {f.derivation}.", fonts.small)
    height = MARGIN * 2 + 130 + 70 * len(caveat_lines) + ROW_HEIGHT * (len(findings) + 1)
    height += 30 + 45 * len(notes)
    image = Image.new("L", (WIDTH, height), 0)
    draw = ImageDraw.Draw(image)
    y = MARGIN
    draw.text((MARGIN, y), "AI FINDINGS", font=fonts.title, fill=255)
    y += 90
    for line in caveat_lines:
        draw.rectangle((MARGIN - 10, y - 6, WIDTH - MARGIN + 10, y + 64), fill=255)
        draw.text((MARGIN, y), line, font=fonts.caveat, fill=0)
        y += 70
    y = _draw_table(draw, fonts, ordered(findings), y + 40) + 30
    for line in notes:
        draw.text((MARGIN, y), line, font=fonts.small, fill=200)
        y += 45
    return np.asarray(image, dtype=np.uint8)


def _notes(algorithm: AlgorithmInfo, images: Sequence[ImageUse],
           when: datetime.datetime | None, fonts: _Fonts) -> list[str]:
    scored = sum(image.scored for image in images)
    sentences = [
        f"Model {algorithm.name} ({algorithm.version}), threshold profile {algorithm.profile}",
        f"Score: {SCORE_NOTE}",
    ]
    if images:
        sentences.append(images_line(images))
    sentences.append(aggregation_line(algorithm.aggregation, scored) if images else "")
    sentences.append(conversion_line(algorithm.conversion))
    if when is not None:
        sentences.append(f"Analysed {analysis_time(when)}")
    return [line for sentence in sentences if sentence for line in _wrap(sentence, fonts.small)]


_COLUMNS = (("Finding", 0), ("Score", 640), ("Threshold", 900), ("Decision", 1160))


def _draw_table(draw: ImageDraw.ImageDraw, fonts: _Fonts, findings: Sequence[FindingOutcome],
                y: int) -> int:
    for title, x in _COLUMNS:
        draw.text((MARGIN + x, y), title, font=fonts.bold, fill=255)
    y += ROW_HEIGHT - 10
    draw.line((MARGIN, y, WIDTH - MARGIN, y), fill=255, width=3)
    y += 10
    for f in findings:
        font = fonts.bold if f.present else fonts.body
        fill = 255 if f.present else 190
        label = f"{f.label} (derived)" if f.derivation else f.label
        cells = (label, *score_and_threshold(f), "PRESENT" if f.present else "absent")
        for (_, x), text in zip(_COLUMNS, cells):
            draw.text((MARGIN + x, y + 8), text, font=font, fill=fill)
        y += ROW_HEIGHT
        draw.line((MARGIN, y, WIDTH - MARGIN, y), fill=90, width=1)
    return y


def _wrap(text: str, drawn_with: Font) -> list[str]:
    return wrap(text, drawn_with, WIDTH - 2 * MARGIN)


def build_summary_sc(
    *,
    evidence: Sequence[Dataset],
    findings: Sequence[FindingOutcome],
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    content_datetime: datetime.datetime | None = None,
    images: Sequence[ImageUse] = (),
) -> Dataset:
    """A Secondary Capture Image Storage instance showing the findings table. `images`: every
    image of the study, scored or not (default: the evidence, all scored)."""
    when = content_datetime or datetime.datetime.now(datetime.UTC)
    pixels = render_summary(findings, algorithm, images_of(evidence, images), when)
    return _secondary_capture(evidence, pixels, algorithm, uids, when,
                              "Table of AI findings rendered from the findings SR")


def build_not_analysed_sc(
    *,
    evidence: Sequence[Dataset],
    reasons: Sequence[str],
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    content_datetime: datetime.datetime | None = None,
) -> Dataset:
    """A Secondary Capture saying the study was not analysed and why (`reasons`: sentences)."""
    pixels = render_not_analysed(reasons, algorithm)
    ds = _secondary_capture(evidence, pixels, algorithm, uids, content_datetime,
                            "Statement that the study was not analysed, from the AI result SR")
    # The statement as text too, for viewers and scripts that read the header.
    statement = not_analysed_text(reasons)
    caveat = ds.get("ImageComments")
    ds.ImageComments = f"{caveat}. {statement}" if caveat else statement
    return ds


def render_not_analysed(reasons: Sequence[str], algorithm: AlgorithmInfo) -> np.ndarray:
    """'Not analysed' and the reasons as a 2-D uint8 array (white on black). Raises ValueError
    without a reason."""
    if not reasons:
        raise ValueError("reasons: at least one reason is needed")
    check_algorithm(algorithm)
    fonts = _fonts()
    caveat_lines = [] if algorithm.clinical_use else _wrap(algorithm.caveat, fonts.caveat)
    lines = [line for reason in reasons for line in _wrap(reason, fonts.body)]
    note = f"Model {algorithm.name} ({algorithm.version})"
    height = MARGIN * 2 + 130 + 70 * len(caveat_lines) + 110 + 50 * len(lines) + 75
    image = Image.new("L", (WIDTH, height), 0)
    draw = ImageDraw.Draw(image)
    y = MARGIN
    draw.text((MARGIN, y), "AI FINDINGS: NOT ANALYSED", font=fonts.title, fill=255)
    y += 90
    for line in caveat_lines:
        draw.rectangle((MARGIN - 10, y - 6, WIDTH - MARGIN + 10, y + 64), fill=255)
        draw.text((MARGIN, y), line, font=fonts.caveat, fill=0)
        y += 70
    y += 40
    draw.text((MARGIN, y), "The AI model did not analyse this study. Why:", font=fonts.bold,
              fill=255)
    y += 70
    for line in lines:
        draw.text((MARGIN, y), line, font=fonts.body, fill=230)
        y += 50
    draw.text((MARGIN, y + 30), note, font=fonts.small, fill=200)
    return np.asarray(image, dtype=np.uint8)


def _secondary_capture(evidence: Sequence[Dataset], pixels: np.ndarray, algorithm: AlgorithmInfo,
                       uids: InstanceUids, content_datetime: datetime.datetime | None,
                       derivation: str) -> Dataset:
    if not evidence:
        raise ValueError("evidence: at least one source image is needed")
    headers = tolerant_headers(evidence)
    when = content_datetime or datetime.datetime.now(datetime.UTC)
    ds = Dataset()
    copy_patient_and_study(ds, headers[0])
    description = (f"AI findings summary {algorithm.name}" if algorithm.clinical_use
                   else "AI findings summary" + NOT_FOR_CLINICAL_USE)
    add_series_and_equipment(ds, uids, algorithm, when, description)
    _add_image(ds, pixels, headers, algorithm)
    ds.DerivationDescription = derivation
    add_file_meta(ds)
    return ds


def _add_image(ds: Dataset, pixels: np.ndarray, evidence: Sequence[Dataset],
               algorithm: AlgorithmInfo) -> None:
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if not algorithm.clinical_use:
        ds.ImageComments = algorithm.caveat
    ds.SourceImageSequence = [_reference(src) for src in evidence]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item
