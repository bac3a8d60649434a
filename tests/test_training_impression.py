"""The text a model trains on: CheXzero's impression extraction on awkward reports, and the
tokenisation/truncation and sentence sampling used in training."""

from __future__ import annotations

import numpy as np
import pytest

from ml.training.impression import NO_IMPRESSION, extract_impression
from ml.training.text import sample_sentences, sentences, tokenize_reports

PLAIN = """FINAL REPORT
EXAMINATION: CHEST (PA AND LAT)
FINDINGS: Heart size is normal. No pleural effusion.

IMPRESSION: No acute cardiopulmonary process.
"""


def test_plain_report_gives_its_impression_with_whitespace_collapsed():
    got = extract_impression("IMPRESSION:   Large right\n  pneumothorax.\n\n")
    assert (got.text, got.source) == ("Large right pneumothorax.", "impression")
    assert extract_impression(PLAIN).text == "No acute cardiopulmonary process."


def test_the_last_of_several_impression_headers_wins():
    report = ("FINDINGS: Left effusion. IMPRESSION: Preliminary: effusion. ADDENDUM: revised. "
              "IMPRESSION: Moderate left pleural effusion.")
    assert extract_impression(report).text == "Moderate left pleural effusion."


@pytest.mark.parametrize("marker", ["RECOMMENDATION(S):", "RECOMMENDATION:", "RECOMMENDATIONS:",
                                    "NOTIFICATION:", "NOTIFICATIONS:"])
def test_impression_is_cut_at_recommendation_or_notification(marker):
    report = f"IMPRESSION: Right lower lobe consolidation. {marker} Follow-up in 6 weeks."
    assert extract_impression(report).text == "Right lower lobe consolidation."


def test_cut_at_whichever_of_recommendation_and_notification_comes_first():
    report = ("IMPRESSION: Large left pneumothorax. NOTIFICATION: called Dr. X. "
              "RECOMMENDATION(S): chest tube.")
    assert extract_impression(report).text == "Large left pneumothorax."


def test_recommendation_before_the_impression_does_not_empty_it():
    # CheXzero would cut at this earlier marker and get an empty impression; we search after.
    report = "RECOMMENDATION: none. IMPRESSION: Cardiomegaly."
    assert extract_impression(report).text == "Cardiomegaly."


def test_headings_must_be_whole_tokens_as_in_chexzero():
    # "IMPRESSION" without the colon is not a heading: falls back to FINDINGS
    got = extract_impression("FINDINGS: Small effusion. IMPRESSION small effusion")
    assert got.source == "findings"
    assert got.text == "Small effusion. IMPRESSION small effusion"


def test_no_impression_falls_back_to_findings_then_report_and_says_which():
    findings = extract_impression("FINDINGS: No pneumothorax. RECOMMENDATION: none.")
    assert (findings.text, findings.source) == ("No pneumothorax.", "findings")
    whole = extract_impression("Portable chest. Lines in place.")
    assert (whole.text, whole.source) == ("Portable chest. Lines in place.", "report")


def test_empty_impression_falls_back_too():
    got = extract_impression("FINDINGS: Cardiomegaly. IMPRESSION: NOTIFICATION: called.")
    assert (got.text, got.source) == ("Cardiomegaly.", "findings")


def test_fallback_none_keeps_chexzero_output():
    assert extract_impression("FINDINGS: x.", fallback="none").text == NO_IMPRESSION
    assert extract_impression("IMPRESSION: RECOMMENDATION: y", fallback="none").text == ""
    with pytest.raises(ValueError, match="fallback"):
        extract_impression("x", fallback="impressionist")


def test_long_reports_are_truncated_to_the_context_with_end_of_text_last():
    tokens = tokenize_reports(["no pleural effusion. " * 60, "cardiomegaly"], 77)
    assert tokens.shape == (2, 77)
    assert int(tokens[0, -1]) == 49407 and int(tokens[0, 0]) == 49406
    assert int((tokens[1] != 0).sum()) < 10


def test_sentences_drop_enumeration_and_sampling_keeps_order():
    text = "1. Large right pneumothorax. 2. No pleural effusion. 3. Cardiomegaly."
    assert sentences(text) == ["Large right pneumothorax.", "No pleural effusion.", "Cardiomegaly."]
    rng = np.random.default_rng(0)
    seen = {sample_sentences(text, rng, 1.0) for _ in range(50)}
    assert "No pleural effusion." in seen and len(seen) > 3
    assert all(s in text.replace("1. ", "").replace("2. ", "").replace("3. ", "") or
               len(sentences(s)) > 1 for s in seen)
    assert sample_sentences(text, rng, 0.0) == text
