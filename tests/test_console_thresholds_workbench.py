"""The console's Thresholds and Workbench pages end to end, in Debian chromium driven by
Playwright: a node with the demo model receives studies by dcmtk storescu, an admin changes a
threshold through the impact preview (saved, then activated as its own step) and adds a finding
in the workbench; each result is checked on the page and in the CLI's --json. Change endpoints
refuse without a session, without the CSRF token and for a viewer; every change has an audit row.
Screenshots go to $CONSOLE_SCREENSHOTS (default: the test's temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from storage import results
from storage.db import open_database
from tests.dicom_factory import StudyUids, make_radiograph
from tests.peers import NodeProcess, dicom_node_command, storescu

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "correct horse battery"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    node = NodeProcess.create(root / "node", worker={"enabled": True})
    for name, role in (("alice", "admin"), ("victor", "viewer")):
        added = subprocess.run(
            [*dicom_node_command(), "users", "add", name, "--role", role, "--password-stdin",
             "--config", str(node.config_path)],
            input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False)
        assert added.returncode == 0, added.stderr
    node.start()
    try:
        files = []
        for i in range(4):
            ds = make_radiograph(view="PA", study=StudyUids(), seed=40 + i, rows=256, columns=224)
            files.append(root / f"study{i}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        sent = storescu(node.port, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        for path in files:
            node.wait_for_state(_study_uid(path), "DONE", timeout=180)
        yield node
    finally:
        node.stop()


def _study_uid(path: Path) -> str:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def signed_in(browser, node, user: str):
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"{node.http_url}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))
    return page


def cardiomegaly_scores(node) -> list[float]:
    database = open_database(f"sqlite:///{node.data_dir / 'worklist.sqlite'}", migrate=False)
    try:
        with database.read_only() as session:
            return [s.probabilities["Cardiomegaly"] for s in results.recent_study_scores(session, 50)]
    finally:
        database.dispose()


def record_calibration_set(node, scores: list[float]) -> None:
    """A stored calibration set, as `thresholds calibrate` leaves one (that command and its
    storage are tested in test_thresholds_calibrate): 40 images around the recent scores."""
    from dicom_node import thresholds

    low, high = min(scores), max(scores)
    values = [low + (high - low) * i / 39 for i in range(40)]
    labels = [int(i >= 15) for i in range(40)]
    database = open_database(f"sqlite:///{node.data_dir / 'worklist.sqlite'}", migrate=False)
    try:
        thresholds.record_calibration_set(
            database, author="ml-team", labels_name="site-labels.csv", labels_sha256="0" * 64,
            label_policy="uncertain=exclude, blank=negative", model_name="demo",
            checkpoint_sha256s=[], catalogue_version="", profile_version=None,
            findings={"Cardiomegaly": (labels, values)})
    finally:
        database.dispose()


def test_threshold_change_through_the_impact_preview(node, browser, shots) -> None:
    scores = sorted(cardiomegaly_scores(node))
    proposed = round((scores[1] + scores[2]) / 2, 4)  # two studies on each side
    record_calibration_set(node, scores)
    expected = node.cli_json("thresholds", "preview", "Cardiomegaly", str(proposed))
    assert expected["studies_considered"] == 4
    page = signed_in(browser, node, "alice")
    page.goto(f"{node.http_url}/thresholds")
    page.screenshot(path=str(shots / "thresholds.png"), full_page=True)
    page.select_option("select[name=finding]", "Cardiomegaly")
    page.fill("input[name=value]", str(proposed))
    with page.expect_navigation():
        page.click("text=Preview impact")
    page.wait_for_url(re.compile(r".*/thresholds/preview.*"))
    summary = expected["summary"]
    assert summary[0].upper() + summary[1:] in page.inner_text("p.impact")
    assert page.locator("img.chart").count() == 1
    calibration = page.inner_text("table.numbers")
    for point in ("current", "proposed"):
        for metric in ("sensitivity", "specificity"):
            shown = expected["calibration"][point][metric]
            assert f"{shown['estimate']:.3f} ({shown['successes']}/{shown['total']})" in (
                calibration)
    page.screenshot(path=str(shots / "threshold-preview.png"), full_page=True)

    page.fill("input[name=note]", "fewer false alarms in the reading room")
    with page.expect_navigation():
        page.click("text=Save (not active)")
    assert "Saved v2" in page.inner_text("p.notice") and "not active" in page.inner_text(
        "p.notice")
    history = node.cli_json("thresholds", "history")
    assert history["active_version"] == 1
    saved = history["versions"][-1]
    assert (saved["version"], saved["author"], saved["note"]) == (
        2, "alice", "fewer false alarms in the reading room")
    assert saved["thresholds"]["Cardiomegaly"] == pytest.approx(proposed)

    with page.expect_navigation():
        page.click("text=Activate v2")
    assert "v2 is active (was v1)" in page.inner_text("p.notice")
    assert node.cli_json("thresholds", "show")["active_version"] == 2
    page.goto(f"{node.http_url}/thresholds?a=1&b=2")
    assert "Cardiomegaly" in page.inner_text("#diff")
    page.goto(f"{node.http_url}/thresholds/drift")
    assert page.locator("img.chart").count() >= 5
    page.screenshot(path=str(shots / "threshold-drift.png"), full_page=True)
    page.goto(f"{node.http_url}/audit")
    audit = page.inner_text("table")
    assert "thresholds.create" in audit and "thresholds.activate" in audit


def test_workbench_tries_a_pair_and_adds_a_disabled_finding(node, browser, shots,
                                                            tmp_path) -> None:
    cli = node.cli_json("findings", "try", "Hiatal hernia", "--positive", "hiatal hernia",
                        "--negative", "no hiatal hernia")
    ranked = sorted(cli["scores"], key=lambda s: s["score"])
    labels = tmp_path / "labels.csv"
    labels.write_text("study_instance_uid,label\n" + "".join(
        f"{s['study_instance_uid']},{int(i >= 2)}\n" for i, s in enumerate(ranked)))
    measured = node.cli_json("findings", "try", "Hiatal hernia", "--positive", "hiatal hernia",
                             "--negative", "no hiatal hernia", "--labels", str(labels))
    auroc = measured["labelled"]
    page = signed_in(browser, node, "alice")
    page.goto(f"{node.http_url}/workbench")
    page.fill("input[name=label]", "Hiatal hernia")
    page.fill("input[name=positive]", "hiatal hernia")
    page.fill("input[name=negative]", "no hiatal hernia")
    page.set_input_files("input[name=labels]", str(labels))
    with page.expect_navigation():
        page.click("text=Score on recent studies")
    result = page.inner_text("section.card >> nth=1")
    assert "4 of the last 200 studies scored" in result
    assert f"mean {cli['summary']['mean']:.4f}" in result
    assert (auroc["n_positive"], auroc["n_negative"]) == (2, 2)
    shown = result.replace("\n", " ")
    assert (f"AUROC {auroc['auroc']:.3f} (95% {auroc['lower']:.3f}–{auroc['upper']:.3f}"
            in shown), shown
    page.screenshot(path=str(shots / "workbench-trial.png"), full_page=True)

    page.fill("input[name=code_value]", "HIATHERN")
    page.fill("form[action='/workbench/add'] input[name=note]", "asked by the chest radiologists")
    with page.expect_navigation():
        page.click("text=Add Hiatal hernia (disabled)")
    assert "Added Hiatal hernia as catalogue revision 1" in page.inner_text("p.notice")
    listed = node.cli_json("findings", "list")
    added = [f for f in listed["findings"] if f["label"] == "Hiatal hernia"]
    assert added and added[0]["enabled"] is False and added[0]["code"]["scheme"] == "99DCMNODE"
    page.fill("#catalogue input[name=note]", "validated on 4 studies")
    with page.expect_navigation():
        page.click("#catalogue button:text-is('Enable')")
    assert "Hiatal hernia enabled" in page.inner_text("p.notice")
    history = node.cli_json("findings", "history")["revisions"]
    assert [(r["action"], r["author"]) for r in history] == [("add", "alice"), ("enable", "alice")]
    page.screenshot(path=str(shots / "workbench-added.png"), full_page=True)
    page.goto(f"{node.http_url}/audit")
    assert "catalogue.add" in page.inner_text("table")


def test_changes_are_refused_without_session_token_or_admin_role(node, browser) -> None:
    active = node.cli_json("thresholds", "show")["active_version"]
    anonymous = browser.new_page()
    for path in ("/thresholds/save", "/thresholds/activate", "/workbench/add",
                 "/workbench/enabled", "/workbench/try"):
        assert anonymous.request.post(node.http_url + path, form={"x": "1"}).status == 403
    admin = signed_in(browser, node, "alice")
    no_token = admin.request.post(f"{node.http_url}/thresholds/activate", form={"version": "1"})
    assert no_token.status == 403
    viewer = signed_in(browser, node, "victor")
    viewer.goto(f"{node.http_url}/thresholds")
    assert viewer.locator("text=Activate v1").count() == 0
    token = viewer.locator("input[name=csrf_token]").first.get_attribute("value")
    refused = viewer.request.post(f"{node.http_url}/thresholds/activate",
                                  form={"version": "1", "csrf_token": token})
    assert refused.status == 403 and "viewer" in refused.text()
    assert node.cli_json("thresholds", "show")["active_version"] == active
