"""The findings catalogue: the shipped 14 findings, and errors that name the entry and key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from engine_samples import FINDINGS_FILE

from ml.catalogue import (
    MAX_PROBABILITY,
    MIN_PROBABILITY,
    CatalogueError,
    apply_derived,
    load_catalogue,
    parse_catalogue,
)
from ml.synth.spec import SYNTH_FINDINGS
from ml.tokenizer import token_ids

CHEXPERT = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
)


@pytest.fixture(scope="module")
def shipped():
    return load_catalogue(FINDINGS_FILE)


def test_ships_the_14_chexpert_findings_enabling_only_what_the_demo_model_learned(shipped):
    assert tuple(f.label for f in shipped.findings) == CHEXPERT
    assert {f.label for f in shipped.prompted()} == set(SYNTH_FINDINGS)
    disabled = [f for f in shipped.findings if not f.enabled]
    assert len(disabled) == 7
    assert all("not trained" in (f.note or "") for f in disabled)
    assert all(MIN_PROBABILITY < f.default_threshold < MAX_PROBABILITY for f in shipped.findings)


def test_no_finding_is_derived_not_prompted(shipped):
    (no_finding,) = shipped.derived()
    assert no_finding.label == "No Finding" and no_finding.enabled
    assert no_finding.positive_prompt == "" and "1 - the highest" in no_finding.derivation


def test_derived_score_is_one_minus_the_highest_enabled_score(shipped):
    labels = ["Cardiomegaly", "Pneumothorax", "No Finding"]
    scores = np.array([[0.3, 0.62, 0.0], [0.2, 0.25, 0.9]])
    derived = apply_derived(scores, labels, shipped)
    assert derived[:, 2].tolist() == pytest.approx([0.38, 0.75])
    assert derived[:, :2].tolist() == scores[:, :2].tolist()


def test_a_derived_finding_takes_no_prompts():
    entry = {**_entry(label="Normal", derived="1 - max"), "positive_prompt": "normal"}
    with pytest.raises(CatalogueError, match=r"'Normal'.*a derived finding has no prompt pair"):
        parse_catalogue({"finding": [entry]})
    with pytest.raises(CatalogueError, match=r"'derived' = 'mean' is not a known derivation"):
        parse_catalogue({"finding": [_entry(derived="mean", positive_prompt=None,
                                            negative_prompt=None)]})


def test_prompts_tokenize_exactly_like_chexzeros_templates(shipped):
    for finding in shipped.findings:
        if finding.derived:
            continue
        assert token_ids(finding.positive_prompt) == token_ids(finding.label)
        assert token_ids(finding.negative_prompt) == token_ids(f"no {finding.label}")


def test_codes_follow_the_checked_table(shipped):
    cardiomegaly = shipped.by_label("Cardiomegaly")
    assert (cardiomegaly.code_value, cardiomegaly.code_scheme) == ("8186001", "SCT")
    effusion = shipped.by_label("Pleural Effusion")
    assert (effusion.code_value, effusion.code_meaning) == ("60046008", "Pleural effusion")
    private = {f.label for f in shipped.findings if f.code_scheme == "99DCMNODE"}
    assert private == {"Enlarged Cardiomediastinum", "Pleural Other", "Support Devices"}
    atelectasis = shipped.by_label("Atelectasis")
    assert (atelectasis.site_value, atelectasis.site_meaning) == ("39607008", "Lung")
    assert shipped.by_label("Edema").site_value is None


def test_version_follows_content_not_comments(tmp_path, shipped):
    text = FINDINGS_FILE.read_text()
    commented = tmp_path / "commented.toml"
    commented.write_text("# a new comment\n" + text)
    assert load_catalogue(commented).version == shipped.version
    changed = tmp_path / "changed.toml"
    changed.write_text(text.replace('label = "Edema"', 'label = "Oedema"'))
    assert load_catalogue(changed).version != shipped.version


def _entry(**overrides):
    entry = {
        "label": "Nodule",
        "positive_prompt": "nodule",
        "negative_prompt": "no nodule",
        "code": {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"},
        "default_threshold": 0.5,
    }
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not None}


def test_a_new_finding_is_one_more_entry():
    catalogue = parse_catalogue({"finding": [_entry()]})
    (nodule,) = catalogue.enabled()
    assert nodule.label == "Nodule" and nodule.enabled and nodule.site_value is None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_entry(treshold=0.4)], "finding #1 ('Nodule'): unknown key 'treshold'"),
        ([_entry(default_threshold=0.9)], "'default_threshold' = 0.9 can never be crossed"),
        ([_entry(default_threshold=0.1)], "'default_threshold' = 0.1 can never be crossed"),
        ([_entry(default_threshold="high")], "'default_threshold' must be a number"),
        ([_entry(), _entry(label="nodule")], "finding #2 ('nodule'): duplicate label"),
        ([_entry(negative_prompt=None)], "missing key 'negative_prompt'"),
        ([_entry(positive_prompt=" ")], "'positive_prompt' must be a non-empty string"),
        ([_entry(code={"value": "1", "scheme": "SCT"})], "code: key 'meaning' must be"),
        ([_entry(site={"value": "1", "scheme": "SCT", "meaning": "x", "x": 1})],
         "site: unknown key 'x'"),
        ([_entry(enabled="yes")], "key 'enabled' must be true or false"),
        ([], "expected at least one [[finding]] table"),
    ],
)
def test_invalid_entries_are_named(entries, message):
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue({"finding": entries}, source="findings.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("findings.toml")


def test_unknown_top_level_key_and_bad_toml(tmp_path):
    with pytest.raises(CatalogueError, match="unknown top-level key 'findings'"):
        parse_catalogue({"findings": [_entry()]})
    broken = tmp_path / "broken.toml"
    broken.write_text("[[finding]\n")
    with pytest.raises(CatalogueError, match="not valid TOML"):
        load_catalogue(broken)
    with pytest.raises(CatalogueError, match="findings file not found"):
        load_catalogue(tmp_path / "absent.toml")


def test_shipped_file_has_no_keys_outside_the_schema():
    data = tomllib.loads(Path(FINDINGS_FILE).read_text())
    assert set(data) == {"finding"}
