"""The console in a real browser (Debian chromium driven by Playwright) on a real node: studies
sent by dcmtk storescu, scored by a tiny random model, delivered to a dcmtk storescp. An admin
walks every page and uses its buttons; the results are checked on the page and in the CLI's
--json. A viewer changes nothing. Every change endpoint refuses without a session, without the
CSRF token, from another origin and for a viewer; every change leaves one audit row.
Screenshots of each page go to build/console-screenshots/."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.model_card import file_sha256
from ml.testing import write_random_checkpoint
from tests.console_helpers import (
    CHROMIUM,
    PASSWORD,
    SCREENSHOTS,
    Client,
    add_user,
    send_study,
)
from tests.peers import NodeProcess, StoreSCP, run_cli

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api")


@dataclass
class Site:
    node: NodeProcess
    pacs: StoreSCP
    two_views: str  # DONE: PA scored, lateral skipped
    one_view: str  # DONE
    lateral_only: str  # SKIPPED
    checkpoint: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("console")
    checkpoint = write_random_checkpoint(work / "tiny.pt", seed=5)
    pacs = StoreSCP(work / "pacs").start()
    node = None
    try:
        node = NodeProcess.create(
            work / "node", model={"checkpoints": [str(checkpoint)], "name": "tiny-test",
                                  "cpu_threads": 1},
            worker={"enabled": True, "poll_interval_seconds": 1})
        with node.config_path.open("a") as f:
            f.write(f'\n[[destinations]]\nname = "pacs"\nae_title = "{pacs.ae_title}"\n'
                    f'host = "127.0.0.1"\nport = {pacs.port}\n')
        node.start()
        for name, role in (("ada", "admin"), ("vic", "viewer")):
            made = add_user(node.config_path, name, role)
            assert made.returncode == 0, made.stderr
        # a finding surely called present (random scores lie in [0.119, 0.881]): its map shows
        low = run_cli("thresholds", "set", "Pleural Effusion", "0.12", "--author", "test",
                      "--note", "a finding present on every study", "--config",
                      str(node.config_path))
        assert low.returncode == 0, low.stderr
        a = send_study(node.port, work / "a", "ACC-C1", ("PA", "LL"))
        b = send_study(node.port, work / "b", "ACC-C2", ("PA",))
        c = send_study(node.port, work / "c", "ACC-C3", ("LL",), calling_ae="MODALITY2")
        for uid, state in ((a.study, "DONE"), (b.study, "DONE"), (c.study, "SKIPPED")):
            node.wait_for_state(uid, state, timeout=120)
        node.wait_for(lambda: all_sent(node, (a.study, b.study, c.study)),
                      "each study's SR, summary, text report (and maps) SENT")
        yield Site(node, pacs, a.study, b.study, c.study, checkpoint)
    finally:
        if node is not None:
            node.stop()
        pacs.stop()


def all_sent(node: NodeProcess, uids: tuple[str, ...]) -> bool:
    """Every delivery SENT, and each study's SR, summary and text report among them (the
    attention maps are queued with the summary and text report)."""
    rows = node.cli_json("outbound", "list")
    kinds = {(d["study_instance_uid"], d["kind"]) for d in rows}
    return (all(d["state"] == "SENT" for d in rows)
            and all((uid, kind) in kinds for uid in uids for kind in ("sr", "summary", "text")))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def signed_in_page(browser, site: Site, name: str):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto(site.node.http_url + "/")
    assert "/login" in page.url
    if name == "ada":
        shot(page, "login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(site.node.http_url + "/")
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def audit_actions(site: Site) -> list[str]:
    client = Client(site.node.http_url)
    assert client.sign_in("vic").status == 303
    body = client.request("/audit").body
    return re.findall(r'<td class="nowrap">([a-z_]+\.[a-z_]+)</td>', body)


def test_admin_walks_every_page_and_uses_the_buttons(browser, site: Site) -> None:
    node = site.node
    page = signed_in_page(browser, site, "ada")
    # Overview: identity, health, today's studies, the caveat
    body = page.inner_text("main")
    assert "AINODE" in body and "tiny-test" in body and "not for clinical use" in body
    assert "listener" in body and "ready" in body
    assert "NOT FOR CLINICAL USE" in page.inner_text(".caveat")
    used = node.cli_json("studies", "show", site.two_views)["result"]["checkpoint_sha256s"]
    assert used == [file_sha256(site.checkpoint)] and f"sha256 {used[0]}" in body
    assert "made with other weights" not in body
    today = page.locator("tr.today")
    assert today.locator("td").nth(1 + ["RECEIVING", "QUEUED", "PROCESSING", "DONE"].index(
        "DONE")).inner_text() == "2"
    shot(page, "overview")

    # Work list: search by accession number finds exactly that study
    page.click("nav >> text=Work list")
    assert page.locator("table.worklist tbody tr").count() == 3
    page.fill("input[name=q]", "ACC-C2")
    page.click("button:has-text('Filter')")
    rows = page.locator("table.worklist tbody tr")
    assert rows.count() == 1 and site.one_view in rows.first.inner_text()
    page.goto(node.http_url + "/studies?state=SKIPPED")
    assert site.lateral_only in page.inner_text("table.worklist")
    assert page.locator("table.worklist tbody tr").count() == 1
    page.goto(node.http_url + "/studies?calling_ae=MODALITY1")
    assert page.locator("table.worklist tbody tr").count() == 2
    page.goto(node.http_url + "/studies")
    shown = node.cli_json("studies", "show", site.two_views)["result"]
    present = [f["label"] for f in shown["findings"] if f["decision"] == "present"]
    row = page.locator("tr", has_text=site.two_views).inner_text()
    assert f"{len(present)} present of {len(shown['findings'])}" in row
    assert all(label in row for label in present)
    assert "not analysed" in page.locator("tr", has_text=site.lateral_only).inner_text()
    shot(page, "worklist")

    # Study page: thumbnails from the spool, scored and skipped images, scores, deliveries
    page.click(f"text={site.two_views}")
    page.wait_for_load_state("networkidle")
    assert "ACC-C1" in page.inner_text("main")
    sizes = page.eval_on_selector_all(
        ".thumb img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert sizes == [[220, 256], [220, 256]]  # 440x512 images: aspect kept, longer side 256
    captions = page.locator(".thumb figcaption").all_inner_texts()
    assert "scored" in captions[0] and "skipped" in captions[1]
    table = page.inner_text("table.findings")
    for finding in shown["findings"]:
        label = finding["label"]
        if finding["derivation"]:  # No Finding: said to be derived, with how
            label += f" ({finding['derivation']})"
        assert f"{label}\t{finding['score']:.3f}\t{finding['threshold']:.3f}" \
               f"\t{finding['decision']}" in table
    assert shown["sr_sop_instance_uid"] in page.inner_text("main")
    assert page.locator("span.state.sent").all_inner_texts() == ["SENT"] * len(
        shown["deliveries"])
    assert {"sr", "summary", "text", "heatmap"} <= {d["kind"] for d in shown["deliveries"]}
    assert page.locator("button:has-text('Retry')").is_disabled()  # DONE: nothing to retry
    check_heat_maps(page, site, shown)
    shot(page, "study")

    before = audit_actions(site)
    page.click("button:has-text('Reprocess')")
    assert "Reprocess: queued again (was DONE)" in page.inner_text(".notice")
    node.wait_for(lambda: (node.cli_json("studies", "show", site.two_views)["result"] or {})
                  .get("version") == 2, "a second result")
    page.select_option("select[name=destination]", "pacs")
    page.click("button:has-text('Resend')")
    assert re.search(r"Resend: \d+ objects queued for pacs", page.inner_text(".notice"))
    page.wait_for_load_state("networkidle")  # the thumbnails and maps drawn
    shot(page, "study-after-actions")

    # Destinations: the Test button answers by C-ECHO
    page.click("nav >> text=Destinations")
    assert "pacs" in page.inner_text("table.destinations")
    page.click("button:has-text('Test (C-ECHO)')")
    assert "Test of pacs answered" in page.inner_text(".notice")
    assert page.locator("button:has-text('Retry dead')").is_disabled()
    shot(page, "destinations")

    # Audit: one row per change, newest first, by the signed-in user
    page.click("nav >> text=Audit")
    after = audit_actions(site)
    assert after[: len(after) - len(before)] == ["study.resend", "study.reprocess"]
    first = page.locator("table.grid tbody tr").first.inner_text()
    assert "ada" in first and "console" in first and site.two_views in first
    shot(page, "audit")
    page.click("button:has-text('Sign out')")
    assert "/login" in page.url
    page.context.close()


def check_heat_maps(page, site: Site, shown: dict) -> None:
    """One overlay per finding called present (at most [worker] heat_maps_per_study = 3),
    highest score first, each named, labelled and tinted where the model looked."""
    present = sorted((f for f in shown["findings"]
                      if f["decision"] == "present" and not f["derivation"]),
                     key=lambda f: f["score"], reverse=True)[:3]
    assert "Pleural Effusion" in [f["label"] for f in present]
    figures = page.locator("figure.overlay")
    assert figures.count() == len(present)
    captions = figures.locator("figcaption").all_inner_texts()
    for finding, caption in zip(present, captions, strict=True):
        assert caption.startswith(f"{finding['label']} · present · score {finding['score']:.3f}")
        assert "on image 1" in caption  # the PA, the only image scored
        assert "approximate attention map, not a segmentation" in caption
    page.locator("figure.overlay img").last.scroll_into_view_if_needed()
    page.wait_for_function("() => [...document.querySelectorAll('figure.overlay img')]"
                           ".every(e => e.complete && e.naturalWidth > 0)")
    sizes = page.eval_on_selector_all(
        "figure.overlay img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert all(max(size) == 384 for size in sizes), sizes  # 440x512 plus its text band
    overlay = page.get_attribute("figure.overlay img", "src")
    answer = page.request.get(site.node.http_url + overlay)
    rgb = np.asarray(Image.open(io.BytesIO(answer.body())).convert("RGB")).astype(int)
    assert ((rgb[..., 0] - rgb[..., 2]) > 60).sum() > 100  # the orange/yellow tint is drawn
    assert Client(site.node.http_url).request(overlay).status != 200  # patient data: sign in
    not_a_map = overlay.rsplit("/", 1)[0] + f"/{shown['sr_sop_instance_uid']}.png"
    assert page.request.get(site.node.http_url + not_a_map).status == 404
    assert "not for clinical use" in page.inner_text("section.heat-maps")


def test_a_viewer_sees_everything_and_can_change_nothing(browser, site: Site) -> None:
    page = signed_in_page(browser, site, "vic")
    page.goto(f"{site.node.http_url}/studies/{site.one_view}")
    assert "an admin can retry, reprocess or resend" in page.inner_text("main")
    assert page.locator("button:has-text('Reprocess')").count() == 0
    token = page.get_attribute("input[name=csrf_token]", "value")
    before = audit_actions(site)
    answer = page.request.post(f"{site.node.http_url}/studies/{site.one_view}/reprocess",
                               form={"csrf_token": token}, max_redirects=0)
    assert answer.status == 403 and "vic is a viewer" in answer.text()
    page.goto(site.node.http_url + "/destinations")
    assert page.locator("button:has-text('Test (C-ECHO)')").count() == 0
    shot(page, "destinations-viewer")
    assert audit_actions(site) == before
    assert site.node.cli_json("studies", "show", site.one_view)["state"] == "DONE"
    page.context.close()


def change_endpoints(site: Site) -> list[str]:
    uid = site.lateral_only
    return [f"/studies/{uid}/retry", f"/studies/{uid}/reprocess", f"/studies/{uid}/resend",
            "/destinations/pacs/echo", "/destinations/pacs/retry-dead", "/logout"]


def test_every_change_endpoint_refuses_without_session_token_origin_or_role(site: Site) -> None:
    before = audit_actions(site)
    anonymous = Client(site.node.http_url)
    admin = Client(site.node.http_url)
    assert admin.sign_in("ada").status == 303
    token = admin.csrf_token()
    viewer = Client(site.node.http_url)
    assert viewer.sign_in("vic").status == 303
    viewer_token = viewer.csrf_token()
    for path in change_endpoints(site):
        refusals = [
            anonymous.request(path, {"csrf_token": token}),
            admin.request(path, {}),
            admin.request(path, {"csrf_token": "forged"}),
            admin.request(path, {"csrf_token": token},
                          headers={"Origin": "http://evil.example"}),
            admin.request(path, {"csrf_token": token}, headers={"Origin": "null"}),
        ]
        if path != "/logout":  # a viewer may sign out
            refusals.append(viewer.request(path, {"csrf_token": viewer_token}))
        assert [r.status for r in refusals] == [403] * len(refusals), path
    assert admin.request("/").status == 200  # still signed in: /logout was refused
    assert audit_actions(site) == before
    assert site.node.cli_json("studies", "show", site.lateral_only)["state"] == "SKIPPED"
    # and the same token does work for the admin
    done = admin.request(f"/studies/{site.lateral_only}/reprocess", {"csrf_token": token})
    assert done.status == 303
    assert audit_actions(site)[0] == "study.reprocess"


def test_cli_changes_are_audited_too(site: Site) -> None:
    before = audit_actions(site)
    refused = run_cli("studies", "retry", site.one_view, "--json", "--config",
                      str(site.node.config_path))
    assert refused.returncode == 1  # DONE cannot be retried: no change, no row
    assert json.loads(refused.stdout)[0]["error"]
    assert audit_actions(site) == before
    site.node.cli_json("outbound", "resend", site.one_view)
    assert audit_actions(site)[0] == "study.resend"
    client = Client(site.node.http_url)
    client.sign_in("ada")
    first_row = client.request("/audit").body.split("<tbody>")[1].split("</tr>")[0]
    assert ">cli<" in first_row and site.one_view in first_row
