"""Helpers for the console tests: a node with a model and a dcmtk PACS, accounts made with the
CLI, studies sent by dcmtk storescu, a signed-in HTTP client and Debian chromium via Playwright."""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import REPO_ROOT, dicom_node_command, storescu

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "build" / "console-screenshots"
PASSWORD = "correct horse battery staple"


def add_user(config: Path, name: str, role: str, password: str = PASSWORD
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*dicom_node_command(), "users", "add", name, "--role", role,
                           "--password-stdin", "--config", str(config)],
                          input=password + "\n", text=True, capture_output=True, timeout=60,
                          check=False)


def send_study(node_port: int, directory: Path, accession: str, views: tuple[str, ...],
               calling_ae: str = "MODALITY1") -> StudyUids:
    """One study of len(views) radiographs (512x440, 12 bits) sent by dcmtk storescu."""
    study = StudyUids()
    files = []
    for i, view in enumerate(views):
        ds = make_radiograph(study=study, view=view, rows=512, columns=440, seed=i + 7,
                             instance_number=i + 1)
        ds.AccessionNumber = accession
        files.append(write(ds, directory / f"{accession}-{i}.dcm"))
    sent = storescu(node_port, files, calling_ae=calling_ae)
    assert sent.returncode == 0, sent.stderr
    return study


@dataclass
class Answer:
    status: int
    url: str
    body: str


class Client:
    """A cookie-keeping HTTP client that does not follow redirects (to see them)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect())

    def request(self, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as response:
                return Answer(response.status, response.headers.get("location") or "",
                              response.read().decode(errors="replace"))
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers.get("location") or "",
                          error.read().decode(errors="replace"))

    def sign_in(self, name: str, password: str = PASSWORD) -> Answer:
        return self.request("/login", {"username": name, "password": password, "next": "/"})

    def csrf_token(self) -> str:
        page = self.request("/audit").body
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found, "no CSRF token on a signed-in page"
        return found.group(1)
