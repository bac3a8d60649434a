"""The node's results in the viewer a radiologist uses: OHIF v3 (the prebuilt @ohif/app) over
Orthanc's DICOMweb plugin, in Debian chromium driven by Playwright.

A modality sends a PA and a lateral image to the node and to Orthanc (the PACS); the node sends
its findings SR, summary image, text report and an attention-map overlay (a finding is made
present by a low threshold) to Orthanc. OHIF opens the study, the text report shows every
finding with its decision and score, the summary image and the overlay are drawn, and the
browser console has no error. Screenshots of the three are saved in a folder the test prints.

Slow (marked): 35-50 s here (setup ~15 s, OHIF ~15 s), most of it OHIF rendering with chromium's software GL.
Needs `make ohif` (done by `make test`) for the viewer, and chromium.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_node.settings import load_settings
from ml.testing import write_random_checkpoint
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.ohif_viewer import OhifViewer, ohif_dist
from tests.peers import NodeProcess, OrthancPeer, run_cli, storescu

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
RESULT_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22",
                  "1.2.840.10008.5.1.4.1.1.7"}
MAPPED = "Pleural Effusion"  # made present (lowest threshold a score can cross): its map is sent
# chromium without a GPU: SwiftShader's WebGL, as on a CI machine
BROWSER_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The shipped demo weights when present (what a site sees first), else random ones."""
    shipped = load_settings(environ={})
    configured = [shipped.resolve(p) for p in shipped.model.checkpoints]
    if configured and all(p.is_file() for p in configured):
        return configured[0]
    return write_random_checkpoint(tmp_path_factory.mktemp("model") / "random.pt", seed=5)


def test_radiologist_reads_the_text_report_and_summary_in_ohif(tmp_path, checkpoint):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed (Debian package chromium; `make peers`)")
    dist = ohif_dist()
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    print(f"\nOHIF screenshots: {screenshots}")
    started = time.monotonic()
    orthanc = OrthancPeer(tmp_path / "orthanc", dicomweb=True).start()
    node, viewer = _node(tmp_path / "node", checkpoint, orthanc), None
    try:
        node.start()
        low = run_cli("thresholds", "set", MAPPED, "0.12", "--author", "e2e", "--note",
                      "a finding present, so that an attention map is made", "--config",
                      str(node.config_path))
        assert low.returncode == 0, low.stderr
        study = _study_in_the_pacs(node, orthanc, tmp_path / "modality")
        result = node.cli_json("studies", "show", study.study)["result"]
        viewer = OhifViewer(dist, orthanc.url + "/dicom-web").start()
        ready = time.monotonic()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                 args=BROWSER_ARGS)
            try:
                errors = _read_in_ohif(browser, viewer, study, result, screenshots)
            finally:
                browser.close()
        print(f"setup (Orthanc, node, study analysed and delivered): {ready - started:.1f} s; "
              f"OHIF: {time.monotonic() - ready:.1f} s")
    finally:
        if viewer is not None:
            viewer.stop()
        node.stop()
        orthanc.stop()
    assert errors == [], errors
    failed = [(path, status) for path, status in viewer.proxied if status >= 400]
    assert failed == [], failed


def _node(workdir: Path, checkpoint: Path, orthanc: OrthancPeer) -> NodeProcess:
    model: dict[str, object] = {"checkpoints": [str(checkpoint)], "batch_size": 4}
    if checkpoint.name == "random.pt":
        model["name"] = "random-test-weights"
    node = NodeProcess.create(
        workdir, worklist={"stable_seconds": 1, "assembly_interval_seconds": 0.25}, model=model,
        worker={"enabled": True, "poll_interval_seconds": 2},
        outbound={"poll_interval_seconds": 1},
    )
    with node.config_path.open("a") as f:
        f.write(f'\n[[destinations]]\nname = "pacs"\nae_title = "{orthanc.ae_title}"\n'
                f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
    return node


def _study_in_the_pacs(node: NodeProcess, orthanc: OrthancPeer, directory: Path) -> StudyUids:
    """A PA and a lateral image to the node and to Orthanc; returns once the node's objects
    (findings SR, text report, summary image, attention maps) are in Orthanc."""
    study = StudyUids()
    images = [make_radiograph(view="PA", study=study, seed=1, rows=512, columns=416),
              make_radiograph(view="LL", study=study, seed=2, instance_number=2, rows=512,
                              columns=416)]
    paths = [write(ds, directory / f"{ds.SOPInstanceUID}.dcm") for ds in images]
    for port, ae in ((node.port, node.ae_title), (orthanc.dicom_port, orthanc.ae_title)):
        sent = storescu(port, paths, called_ae=ae)
        assert sent.returncode == 0, sent.stdout + sent.stderr

    def delivered() -> bool:
        classes = {i.get("SOPClassUID") for i in orthanc.study_instances(study.study)}
        deliveries = node.cli_json("outbound", "list")
        return (RESULT_CLASSES <= classes and "heatmap" in {d["kind"] for d in deliveries}
                and all(d["state"] == "SENT" for d in deliveries))

    node.wait_for(delivered, "the node's objects, an attention map among them, in Orthanc",
                  timeout=180)
    return study


def _read_in_ohif(browser, viewer: OhifViewer, study: StudyUids, result: dict,
                  screenshots: Path) -> list[str]:
    """Open the study, the text report, the summary image and an attention map as a reader
    would; returns the console errors and uncaught page errors."""
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    # A returning reader: OHIF's first-visit tour (it covers the study browser) was seen.
    page.add_init_script("localStorage.setItem('shownTours', '[\"basicViewerTour\"]')")
    page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={study.study}")
    report = page.get_by_text("AI report - NOT FOR CLINICAL USE")
    report.wait_for(timeout=90_000)

    report.dblclick()
    lines = [f"{f['label']}: {'PRESENT' if f['decision'] == 'present' else 'absent'}, score "
             for f in result["findings"]]  # the name and the decision, then its numbers
    try:
        page.get_by_text(lines[0]).wait_for(timeout=30_000)
    finally:
        page.screenshot(path=str(screenshots / "text-report.png"))
    for line in lines:
        assert page.get_by_text(line).count() == 1, f"not on the screen: {line}"
    assert page.get_by_text("NOT FOR CLINICAL USE — demo model").count() >= 1
    assert page.get_by_text("1 of 2 images scored (PA); not used: lateral view").count() == 1
    assert page.get_by_text("Something went wrong").count() == 0

    page.get_by_text("AI findings summary - NOT FOR CLINICAL USE").first.dblclick()
    _wait_until_drawn(page, screenshots / "summary-image.png", _caveat_band, "the summary")
    assert page.get_by_text("Something went wrong").count() == 0

    assert any(f["label"] == MAPPED and f["decision"] == "present" for f in result["findings"])
    maps = page.get_by_text("AI attention maps - NOT FOR CLINICAL USE")
    listed = maps.count()  # in the study browser
    maps.first.dblclick()
    _wait_until_drawn(page, screenshots / "attention-map.png", _tinted, "the attention map")
    # the viewport's own caption names the series too (it lags the pixels a little)
    page.wait_for_function(
        "n => [...document.querySelectorAll('body *')].filter(e => e.childElementCount === 0"
        " && e.textContent.includes('AI attention maps - NOT FOR CLINICAL USE')).length > n",
        arg=listed, timeout=15_000)
    page.screenshot(path=str(screenshots / "attention-map.png"))
    assert page.get_by_text("Something went wrong").count() == 0
    return errors


def _caveat_band(rgb: np.ndarray) -> bool:
    """The summary's white caveat band: the widest bright area a rendered summary has (an
    empty viewport is black)."""
    white_rows = (np.mean(rgb.mean(axis=-1) > 240, axis=1) > 0.5).sum()
    return white_rows >= 20


def _tinted(rgb: np.ndarray) -> bool:
    """The overlay's orange-to-yellow map over the grey radiograph (OHIF draws nothing in
    orange)."""
    red, blue = rgb[..., 0].astype(int), rgb[..., 2].astype(int)
    return ((red - blue) > 80).sum() >= 500


def _wait_until_drawn(page, path: Path, drawn, what: str, timeout: float = 60) -> None:
    """Screenshot until `drawn` finds the object in the viewport (right of the study browser,
    below the toolbar)."""
    deadline = time.monotonic() + timeout
    while True:
        page.screenshot(path=str(path))
        if drawn(np.asarray(Image.open(path).convert("RGB"))[100:, 300:]):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} was not drawn in {timeout} s (see {path})")
        page.wait_for_timeout(1000)
