"""Free-text reports for synthetic studies, written the way radiologists write them, and their
CheXpert labels.

A report has FINDINGS and IMPRESSION sections (sometimes only an impression, rarely none, now and
then a second IMPRESSION after an addendum), sometimes a RECOMMENDATION(S) or NOTIFICATION after
the impression. Phrasing varies; absent findings are often negated ("no pleural effusion",
"without pneumothorax"); uncertain findings are hedged ("possible", "cannot exclude").
The exact phrases of the catalogue's prompt pairs ("pleural effusion" / "no pleural effusion",
...) occur often, so a model trained on these reports learns what the prompts mean.

Labels follow the CheXpert labeller's convention: 1 stated, -1 hedged, 0 negated, blank when the
report does not mention the finding.
"""

from __future__ import annotations

import numpy as np

from ml.synth.spec import PRESENT, SYNTH_FINDINGS, Sided, StudySpec

CHEXPERT_FINDINGS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_FINDINGS

_SIZE_EFFUSION = ["small-to-moderate", "moderate", "large", "moderate to large"]
_SIZE_PTX = ["large", "moderate", "large", "sizable"]
_LOBE = {"upper": "upper lobe", "middle": "middle lobe", "lower": "lower lobe"}

_NEGATIVE = {
    "Cardiomegaly": ["No cardiomegaly.", "Heart size is normal.", "The heart is not enlarged.",
                     "Normal heart size, no cardiomegaly.",
                     "The cardiomediastinal silhouette is within normal limits."],
    "Pleural Effusion": ["No pleural effusion.", "There is no pleural effusion.",
                         "The costophrenic angles are sharp, no pleural effusion.",
                         "No pleural effusions."],
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."],
    "Consolidation": ["No consolidation.", "No focal consolidation.", "No lung opacity.",
                      "The lungs are clear without consolidation.",
                      "No focal consolidation or lung opacity."],
    "Support Devices": ["No support devices.", "No lines or tubes.", "No support devices are seen."],
}
_COMBINED_NEGATIVE = {
    ("Pleural Effusion", "Pneumothorax"): ["No pleural effusion or pneumothorax.",
                                          "No pleural effusion, without pneumothorax."],
    ("Consolidation", "Pleural Effusion"): ["No consolidation or pleural effusion."],
    ("Consolidation", "Pneumothorax"): ["Lungs are clear without consolidation or pneumothorax."],
}
_NORMAL_IMPRESSION = ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "Normal chest radiograph.", "No acute intrathoracic process."]


def write_report(spec: StudySpec) -> str:
    rng = np.random.default_rng([spec.seed, spec.index, 2])
    positives = _positive_sentences(rng, spec)
    negatives = _negative_sentences(rng, spec)
    findings = _findings_section(rng, spec, positives, negatives)
    impression = _impression_section(rng, spec, positives, negatives)
    header = _header(rng, spec)
    layout = rng.random()
    if layout < 0.03:
        body = f"FINDINGS: {findings}"
    elif layout < 0.15:
        body = f"IMPRESSION: {impression}"
    elif layout < 0.2:
        body = (f"FINDINGS: {findings}\n\nIMPRESSION: Preliminary read, see below.\n\n"
                f"ADDENDUM: Final read.\n\nIMPRESSION: {impression}")
    else:
        body = f"FINDINGS: {findings}\n\nIMPRESSION: {impression}"
    body += _trailer(rng, spec)
    return f"{header}\n\n{body}\n"


def chexpert_labels(spec: StudySpec, report: str) -> dict[str, str]:
    """CheXpert cells ('1.0', '0.0', '-1.0' or '') for the 14 findings of one study."""
    text = report.lower()
    cells = {name: "" for name in CHEXPERT_FINDINGS}
    for name in SYNTH_FINDINGS:
        state = spec.state(name)
        if state is not None:
            cells[name] = "1.0" if state == PRESENT else "-1.0"
        elif _mentioned(name, text):
            cells[name] = "0.0"
    pathologic = [n for n in SYNTH_FINDINGS if n != "Support Devices" and spec.state(n)]
    if not pathologic:
        cells["No Finding"] = "1.0"
    return cells


_MENTIONS = {
    "Cardiomegaly": ("cardiomegaly", "heart size", "heart is not enlarged", "cardiomediastinal"),
    "Pleural Effusion": ("effusion",),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation", "lungs are clear", "acute cardiopulmonary",
                      "normal chest", "intrathoracic"),
    "Lung Opacity": ("opacity", "lungs are clear", "acute cardiopulmonary", "normal chest",
                     "intrathoracic"),
    "Support Devices": ("support devices", "lines or tubes"),
}


def _mentioned(name: str, text: str) -> bool:
    return any(term in text for term in _MENTIONS[name])


def _side_words(side: str) -> str:
    return "bilateral" if side == "bilateral" else side


def _positive_sentences(rng: np.random.Generator, spec: StudySpec) -> list[str]:
    out = []
    if spec.cardiomegaly:
        out.append(_pick(rng, _cardio(spec.cardiomegaly == PRESENT)))
    if spec.effusion:
        out.append(_pick(rng, _effusion(spec.effusion, rng)))
    if spec.pneumothorax:
        out.append(_pick(rng, _pneumothorax(spec.pneumothorax, rng)))
    if spec.consolidation:
        out.append(_pick(rng, _consolidation(spec.consolidation)))
    if spec.devices:
        out.append(_pick(rng, ["Support devices in place.", "Support devices as described.",
                               "Support devices are present.",
                               ("Lines and tubes as described, "
                                "support devices in standard position.")]))
    return out


def _cardio(definite: bool) -> list[str]:
    if definite:
        return ["Cardiomegaly.", "The heart is enlarged, consistent with cardiomegaly.",
                "Moderate cardiomegaly.", "Marked cardiomegaly.", "Stable cardiomegaly.",
                "Enlarged cardiac silhouette compatible with cardiomegaly."]
    return ["Possible mild cardiomegaly.", "Borderline heart size, cannot exclude mild cardiomegaly.",
            "Heart size is borderline, possibly mild cardiomegaly."]


def _effusion(e: Sided, rng: np.random.Generator) -> list[str]:
    side = _side_words(e.side)
    if e.state != PRESENT:
        return [f"Possible small {side} pleural effusion.",
                f"Blunting of the {side} costophrenic angle may reflect a small pleural effusion.",
                f"Cannot exclude a trace {side} pleural effusion."]
    size = _pick(rng, _SIZE_EFFUSION)
    plural = "s" if e.side == "bilateral" else ""
    return [f"{size.capitalize()} {side} pleural effusion{plural}.",
            f"There is a {size} {side} pleural effusion{plural}.",
            f"Pleural effusion{plural}, {side}.", f"{side.capitalize()} pleural effusion{plural}.",
            f"Layering {side} pleural effusion{plural} with meniscus."]


def _pneumothorax(p: Sided, rng: np.random.Generator) -> list[str]:
    if p.state != PRESENT:
        return [f"Possible small {p.side} apical pneumothorax.",
                f"A tiny {p.side} apical pneumothorax cannot be excluded."]
    size = _pick(rng, _SIZE_PTX)
    return [f"{size.capitalize()} {p.side} pneumothorax.", f"Pneumothorax on the {p.side}.",
            f"There is a {size} {p.side} pneumothorax with a visible pleural line.",
            f"{p.side.capitalize()} pneumothorax.", "Pneumothorax."]


def _consolidation(c: Sided) -> list[str]:
    lobe = _LOBE[c.lobe]
    where = "bilateral lower lobes" if c.side == "bilateral" else f"{c.side} {lobe}"
    if c.state != PRESENT:
        return [f"Patchy opacity in the {where}, possibly early consolidation.",
                f"Cannot exclude developing consolidation in the {where}.",
                f"Faint lung opacity in the {where}, possible consolidation."]
    return [f"Consolidation in the {where}.", f"Dense {where} consolidation.",
            f"Lung opacity in the {where}, consistent with consolidation.",
            f"Lobar consolidation of the {where}.", "Consolidation.",
            f"Airspace consolidation and lung opacity in the {where}."]


def _negative_sentences(rng: np.random.Generator, spec: StudySpec) -> list[str]:
    absent = [n for n in _NEGATIVE if spec.state(n) is None]
    out = []
    pairs = [p for p in _COMBINED_NEGATIVE if p[0] in absent and p[1] in absent]
    if pairs and rng.random() < 0.35:
        pair = pairs[rng.integers(len(pairs))]
        out.append(_pick(rng, _COMBINED_NEGATIVE[pair]))
        absent = [n for n in absent if n not in pair]
    for name in absent:
        keep = 0.35 if name == "Support Devices" else 0.85
        if rng.random() < keep:
            out.append(_pick(rng, _NEGATIVE[name]))
    return out


def _device_details(rng: np.random.Generator, devices: tuple[str, ...]) -> list[str]:
    text = {
        "ett": ["Endotracheal tube terminates about 4 cm above the carina.",
                "ET tube in standard position."],
        "ng": ["Enteric tube courses below the diaphragm into the stomach.",
               "Nasogastric tube tip in the stomach."],
        "cvc": ["Right internal jugular central venous catheter with tip in the SVC.",
                "Right IJ central line terminates in the superior vena cava."],
        "pacemaker": ["Left chest wall pacemaker with leads in the right heart.",
                      "Dual-chamber pacemaker in place."],
        "ecg": ["EKG leads overlie the chest.", "Monitoring leads project over the chest."],
    }
    return [_pick(rng, text[d]) for d in devices]


def _findings_section(rng: np.random.Generator, spec: StudySpec, positives: list[str],
                      negatives: list[str]) -> str:
    sentences = _device_details(rng, spec.devices) + positives[:]
    sentences += negatives
    sentences.append(_pick(rng, ["Osseous structures are unremarkable.",
                                 "No acute osseous abnormality.", "Visualized bones are intact.",
                                 "The upper abdomen is unremarkable."]))
    if rng.random() < 0.5:
        order = rng.permutation(len(sentences))
        sentences = [sentences[i] for i in order]
    return " ".join(sentences)


def _impression_section(rng: np.random.Generator, spec: StudySpec, positives: list[str],
                        negatives: list[str]) -> str:
    sentences = list(positives)
    picked = [s for s in negatives if rng.random() < 0.5]
    if not positives or (len(positives) == 1 and spec.devices):
        sentences.append(_pick(rng, _NORMAL_IMPRESSION))
    sentences += picked
    if len(sentences) > 1 and rng.random() < 0.3:
        return " ".join(f"{k}. {s}" for k, s in enumerate(sentences, start=1))
    return " ".join(sentences)


def _header(rng: np.random.Generator, spec: StudySpec) -> str:
    exam = "CHEST (PORTABLE AP)" if spec.view == "AP" else (
        "CHEST (PA AND LAT)" if spec.with_lateral else "CHEST (PA)")
    indication = _pick(rng, ["Shortness of breath.", "Fever and cough.", "Chest pain.",
                             "Line placement.", "Evaluate for pneumonia.", "Post-procedure.",
                             "Dyspnea, evaluate for effusion."])
    comparison = _pick(rng, ["None.", "Prior radiograph from the previous day.", "None available."])
    lines = [f"EXAMINATION: {exam}", f"INDICATION: {indication}", f"COMPARISON: {comparison}"]
    if rng.random() < 0.3:
        lines.insert(0, "FINAL REPORT")
    return "\n".join(lines)


def _trailer(rng: np.random.Generator, spec: StudySpec) -> str:
    urgent = spec.pneumothorax is not None and spec.pneumothorax.state == PRESENT
    parts = []
    if rng.random() < 0.15:
        parts.append("RECOMMENDATION(S): " + _pick(rng, [
            "Follow-up radiograph after treatment.", "Consider CT for further evaluation.",
            "Clinical correlation recommended."]))
    if urgent and rng.random() < 0.6:
        heading = "NOTIFICATION" if rng.random() < 0.8 else "NOTIFICATIONS"
        parts.append(f"{heading}: The findings were discussed with the referring clinician "
                     "by telephone at the time of interpretation.")
    return "".join(f"\n\n{p}" for p in parts)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]
