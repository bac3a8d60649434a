"""OHIF v3's prebuilt viewer (the npm package @ohif/app, its dist/) served beside a DICOMweb
server, as a site puts it in front of a PACS: one origin that serves the single-page app (any
route that is not a file gets index.html, so /viewer?StudyInstanceUIDs=... works), an
app-config.js naming that DICOMweb source, and /dicom-web/* proxied to Orthanc's DICOMweb
plugin. Starlette and uvicorn serve it, httpx proxies; it runs in a thread of the test.

Where the viewer comes from: `make ohif` (run by `make test`) packs the pinned @ohif/app from
the npm registry into .cache/ohif/<version>/dist; `ohif_dist()` finds it or says how to get it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from tests.peers import REPO_ROOT, free_port

OHIF_VERSION = "3.13.2"  # as pinned in the Makefile (OHIF_VERSION)
CACHE = REPO_ROOT / ".cache" / "ohif"
# Hop-by-hop and encoding headers are the proxy's own business, not the browser's.
_DROPPED = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"}

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (dicom-node test)',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""


def ohif_dist() -> Path:
    """The unpacked dist/ of the pinned @ohif/app. Raises RuntimeError naming `make ohif`."""
    dist = CACHE / OHIF_VERSION / "dist"
    if not (dist / "index.html").is_file():
        raise RuntimeError(f"OHIF {OHIF_VERSION} is not unpacked in {dist}: run `make ohif` "
                           "(npm pack @ohif/app from the npm registry)")
    return dist


@dataclass
class OhifViewer:
    """`start()` serves `dist` and proxies /dicom-web to `dicomweb_url` (e.g. Orthanc's
    http://127.0.0.1:<port>/dicom-web) on http://127.0.0.1:<port>; `stop()` ends it."""

    dist: Path
    dicomweb_url: str
    port: int = field(default_factory=free_port)
    proxied: list[tuple[str, int]] = field(default_factory=list)  # (path, status) per request
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        client = httpx.AsyncClient(base_url=self.dicomweb_url, timeout=30)

        async def app_config(_request: Request) -> Response:
            return Response(APP_CONFIG, media_type="application/javascript")

        async def dicomweb(request: Request) -> Response:
            answer = await client.request(
                request.method, "/" + request.path_params["path"],
                params=request.query_params.multi_items(),
                headers={k: v for k, v in request.headers.items()
                         if k.lower() in ("accept", "content-type")},
                content=await request.body(),
            )
            self.proxied.append((request.url.path, answer.status_code))
            headers = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED}
            return Response(answer.content, answer.status_code, headers)

        async def files(request: Request) -> Response:
            path = (self.dist / request.path_params["path"]).resolve()
            if path.is_file() and path.is_relative_to(self.dist.resolve()):
                return FileResponse(path)
            return FileResponse(self.dist / "index.html")  # a route of the single-page app

        return Starlette(routes=[
            Route("/app-config.js", app_config),
            Route("/dicom-web/{path:path}", dicomweb, methods=["GET", "POST"]),
            Route("/{path:path}", files),
        ])

    def start(self) -> OhifViewer:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="ohif", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the OHIF server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
