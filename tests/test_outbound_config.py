"""Destinations in the configuration: a list of tables, validated at start-up."""

from __future__ import annotations

import pytest

from dicom_node.settings import ConfigError, load_settings


def _load(tmp_path, text, environ=None):
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_settings(path, environ=environ or {})


PACS = '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n'


def test_shipped_defaults_have_no_destination():
    assert load_settings(environ={}).destinations == []


def test_destinations_load_with_defaults_for_what_to_send(tmp_path):
    text = PACS + PACS.replace('"pacs"', '"archive"') + "send_summary = false\n"
    first, second = _load(tmp_path, text).destinations
    assert (first.name, first.ae_title, first.port, first.send_sr, first.send_summary,
            first.send_text_report) == ("pacs", "ORTHANC", 4242, True, True, True)
    assert (second.name, second.send_summary, second.send_text_report) == (
        "archive", False, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PACS.replace("port = 4242\n", ""), "destinations\\[\\].port is required"),
        (PACS.replace("4242", "0"), "must be 1..65535"),
        (PACS.replace('"ORTHANC"', '"A_VERY_LONG_AE_TITLE"'), "1..16 ASCII"),
        (PACS + PACS, "names must be unique"),
        (PACS + "colour = 1\n", "unknown config key destinations\\[\\].colour"),
        (PACS + 'send_sr = "yes"\n', "must be true or false"),
        (PACS + "send_text_report = 1\n", "send_text_report.*must be true or false"),
    ],
)
def test_bad_destination_is_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text)


def test_environment_cannot_half_edit_a_list_of_tables(tmp_path):
    with pytest.raises(ConfigError, match="list of tables"):
        _load(tmp_path, PACS, environ={"DICOM_NODE_DESTINATIONS__PORT": "1"})
