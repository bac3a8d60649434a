"""The report text a model trains on: the impression, extracted as CheXzero's
`write_report_csv` does, with an explicit fallback when there is none.

CheXzero splits the report on whitespace, starts after the LAST token "IMPRESSION:" and ends at
the first "RECOMMENDATION(S):" (or "RECOMMENDATION:", "RECOMMENDATIONS:") and the first
"NOTIFICATION:" (or "NOTIFICATIONS:"), whichever comes first; words are re-joined with single
spaces. A report without "IMPRESSION:" becomes the literal text "NO IMPRESSION" there.

Two deliberate differences, both only where CheXzero's output is useless:
- the end markers are searched after the impression starts (CheXzero searches the whole report,
  so a RECOMMENDATION before the last IMPRESSION gives it an empty impression);
- an empty or missing impression falls back to the FINDINGS section (same rules, ending at the
  next IMPRESSION or end marker), then to the whole report; `Extraction.source` says which was
  used ("impression", "findings", "report"). `fallback="none"` keeps CheXzero's "NO IMPRESSION".
"""

from __future__ import annotations

from dataclasses import dataclass

IMPRESSION = "IMPRESSION:"
FINDINGS = "FINDINGS:"
_RECOMMENDATION = ("RECOMMENDATION(S):", "RECOMMENDATION:", "RECOMMENDATIONS:")
_NOTIFICATION = ("NOTIFICATION:", "NOTIFICATIONS:")
NO_IMPRESSION = "NO IMPRESSION"
FALLBACKS = ("findings", "report", "none")


@dataclass(frozen=True)
class Extraction:
    text: str
    source: str  # impression | findings | report | none


def extract_impression(report: str, fallback: str = "findings") -> Extraction:
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; one of {', '.join(FALLBACKS)}")
    words = report.split()
    impression = _section(words, IMPRESSION, last=True)
    if impression:
        return Extraction(impression, "impression")
    if fallback == "none":
        return Extraction(NO_IMPRESSION if IMPRESSION not in words else "", "none")
    if fallback == "findings":
        findings = _section(words, FINDINGS, last=True, extra_ends=(IMPRESSION,))
        if findings:
            return Extraction(findings, "findings")
    return Extraction(" ".join(words), "report")


def _section(words: list[str], heading: str, last: bool,
             extra_ends: tuple[str, ...] = ()) -> str:
    starts = [i for i, w in enumerate(words) if w == heading]
    if not starts:
        return ""
    begin = (starts[-1] if last else starts[0]) + 1
    rest = words[begin:]
    ends = [_first(rest, _RECOMMENDATION), _first(rest, _NOTIFICATION)]
    ends += [_first(rest, (marker,)) for marker in extra_ends]
    found = [e for e in ends if e is not None]
    end = min(found) if found else len(rest)
    return " ".join(rest[:end])


def _first(words: list[str], forms: tuple[str, ...]) -> int | None:
    """CheXzero's order: the first form that occurs anywhere wins, at its first occurrence."""
    for form in forms:
        if form in words:
            return words.index(form)
    return None
