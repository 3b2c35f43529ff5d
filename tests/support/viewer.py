"""The radiologist's viewer, for tests: OHIF's built ``dist`` served beside a real Orthanc, in headless Chromium.

:class:`OhifServer` serves the OHIF Viewer's pinned npm build (``@ohif/app``, its ``dist`` folder) on
loopback with an ``app-config.js`` of ours whose only data source is DICOMweb at the same origin,
and proxies ``/dicom-web/`` to Orthanc's DICOMweb plugin (same origin: no CORS settings needed, as a
hospital would put both behind one reverse proxy). :func:`open_browser` starts Debian's ``chromium``
through ``chromium-driver`` (selenium) with the console log captured. ``tools/setup.sh`` installs
all three; :func:`ohif_dist` finds the build.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
#: the OHIF release the viewer tests are pinned to (tools/setup.sh unpacks it here)
OHIF_VERSION = "3.13.2"
OHIF_DIST = REPO / ".cache" / f"ohif-{OHIF_VERSION}" / "package" / "dist"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def ohif_dist() -> Path | None:
    """The unpacked OHIF build (``CXR_OHIF_DIST`` overrides), or None."""
    folder = Path(os.environ.get("CXR_OHIF_DIST", OHIF_DIST))
    return folder if (folder / "index.html").is_file() else None


def app_config(origin: str) -> str:
    """OHIF's ``window.config``: one DICOMweb data source at ``origin``/dicom-web (Orthanc behind our proxy)."""
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "orthanc",
            "configuration": {
                "friendlyName": "Orthanc (test)",
                "name": "orthanc",
                "wadoUriRoot": f"{origin}/dicom-web",
                "qidoRoot": f"{origin}/dicom-web",
                "wadoRoot": f"{origin}/dicom-web",
                "qidoSupportsIncludeField": False,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "staticWado": False,
                "singlepart": "bulkdata,video",
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                "omitQuotationForMultipartRequest": True,
            },
        }],
    }
    return "window.config = " + json.dumps(config, indent=1) + ";\n"


class OhifServer:
    """OHIF's dist + our app-config.js + a same-origin proxy of ``/dicom-web/`` to ``orthanc_url``."""

    def __init__(self, dist: Path, orthanc_url: str):
        self.dist, self.orthanc_url = Path(dist), orthanc_url.rstrip("/")
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.config_js = app_config(self.origin).encode()
        self._server: ThreadingHTTPServer | None = None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
                request = urllib.request.Request(server.orthanc_url + self.path, data=body, method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        self._send(response.status, response.read(), response.headers.get("Content-Type", "application/octet-stream"))
                except urllib.error.HTTPError as error:
                    self._send(error.code, error.read(), error.headers.get("Content-Type", "text/plain"))

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web/"):
                    return self._proxy()
                if path == "/app-config.js":
                    return self._send(200, server.config_js, "application/javascript")
                file = (server.dist / path.lstrip("/")).resolve()
                if not file.is_relative_to(server.dist.resolve()) or not file.is_file():
                    file = server.dist / "index.html"  # the single-page app's own routes (/viewer, …)
                content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                if file.suffix == ".wasm":
                    content_type = "application/wasm"
                self._send(200, file.read_bytes(), content_type,
                           {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"})

            do_HEAD = do_GET

            def do_POST(self) -> None:  # noqa: N802
                return self._proxy()

        return Handler

    def start(self) -> "OhifServer":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def open_browser(width: int = 1400, height: int = 1000):
    """Headless Debian Chromium under chromedriver (selenium), console log captured."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--window-size={width},{height}",
                 "--use-gl=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


#: Console errors OHIF 3.13 logs for a FRACTIONAL SEG: a documented limitation (it shows the image without
#: the overlay and does not crash); the band SEG beside it is what OHIF users open.
KNOWN_FRACTIONAL_ERROR = "Fractional segmentations are not yet supported"
#: OHIF 3.13 cannot load a source image whose PixelSpacing is "0\\0" (the NEMA RG1 CR's header; a copy with
#: 0.2\\0.2 renders): the viewport logs this for the *source*, under any overlay of ours.
KNOWN_ZERO_SPACING_SOURCE_ERROR = "IMAGE_LOAD_ERROR"
#: OHIF 3.13 when a series is opened again while its image still loads (the SR view's reopening above):
#: the cancelled load fires IMAGE_LOAD_ERROR and OHIF's own listener throws. Allowed only after a reopen.
KNOWN_REOPEN_ERROR = ("IMAGE_LOAD_ERROR", "handler is not a function")


class Viewer:
    """One headless browser on an :class:`OhifServer`; :meth:`open_series` loads one series of a study."""

    def __init__(self, server: OhifServer, screenshots: Path, timeout_s: float = 90.0):
        self.server, self.screenshots, self.timeout_s = server, Path(screenshots), timeout_s
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.browser = open_browser()

    def close(self) -> None:
        self.browser.quit()

    def _until(self, condition, seconds: float):
        """Poll ``condition`` every 0.5 s until it is truthy (returned) or ``seconds`` pass (TimeoutException)."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.browser, seconds, poll_frequency=0.5).until(lambda _: condition())

    def _wait(self, condition, what: str, timeout_s: float | None = None):
        from selenium.common.exceptions import TimeoutException

        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            return self._until(condition, timeout_s)
        except TimeoutException:
            shot = self.screenshots / "timeout.png"
            self.browser.save_screenshot(str(shot))
            console = [f"{e['level']}: {e['message'][:300]}" for e in self.browser.get_log("browser")][-15:]
            raise AssertionError(f"OHIF: {what} did not happen within {timeout_s:.0f}s ({shot}); page text: "
                                 f"{self.browser.find_element('tag name', 'body').text[:800]!r}; console: {console}") from None

    def _wait_quietly(self, condition, seconds: float) -> bool:
        """True when ``condition`` holds within ``seconds``, else False (no screenshot, no error)."""
        from selenium.common.exceptions import TimeoutException

        try:
            self._until(condition, seconds)
            return True
        except TimeoutException:
            return False

    def _click_all(self, xpath: str) -> int:
        from selenium.webdriver.common.by import By

        elements = self.browser.find_elements(By.XPATH, xpath)
        for element in elements:
            try:
                element.click()
            except Exception:  # it went away between finding and clicking (a closing tour)
                pass
        return len(elements)

    def _click_when_free(self, css: str) -> bool:
        """Click the first element matching ``css``; False while it is missing or covered (the first-visit
        tour can open after the page has loaded: it is skipped again before each try)."""
        from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
        from selenium.webdriver.common.by import By

        self._click_all("//*[normalize-space(text())='Skip all']")
        elements = self.browser.find_elements(By.CSS_SELECTOR, css)
        if not elements:
            return False
        try:
            elements[0].click()
        except (ElementClickInterceptedException, StaleElementReferenceException):
            return False
        return True

    def open_series(self, study_uid: str, series_description: str, screenshot: str, expect: tuple[str, ...] = (),
                    panel: str | None = None, attempts: int = 2) -> dict:
        """Open the study, double-click the series whose description starts with ``series_description``,
        answer OHIF's "open this segmentation / continue tracking?" with Yes, open ``panel`` (e.g.
        ``panelSegmentation``) and wait until every text of ``expect`` is on the page. Returns the page
        text, the console's SEVERE messages, the screenshot path and the attempt that succeeded.

        OHIF 3.13's SR viewport sometimes paints the image without the report's annotations after the same
        browser has shown other series of the study (the same file shows them in a fresh browser), so a
        page that misses a text is loaded again in a new browser, up to ``attempts`` times; a file OHIF
        cannot show fails every attempt."""
        for attempt in range(1, attempts + 1):
            try:
                return {**self._open_series_once(study_uid, series_description, screenshot, expect, panel), "attempt": attempt}
            except AssertionError:
                if attempt == attempts:
                    raise
                self.browser.quit()  # the next attempt is a new user: no state kept from the pages before
                self.browser = open_browser()

    def _open_series_once(self, study_uid: str, series_description: str, screenshot: str, expect: tuple[str, ...],
                          panel: str | None) -> dict:
        import time

        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        browser = self.browser
        browser.get_log("browser")  # drop what earlier pages logged
        browser.get(f"{self.server.origin}/viewer?StudyInstanceUIDs={study_uid}")
        xpath = f"//*[starts-with(normalize-space(text()), '{series_description}')]"
        self._wait(lambda: browser.find_elements(By.XPATH, xpath), f"the series {series_description!r} in the study browser")
        self._click_all("//*[normalize-space(text())='Skip all']")  # the first-visit tour
        ActionChains(browser).double_click(browser.find_elements(By.XPATH, xpath)[0]).perform()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not self._click_all("//button[normalize-space()='Yes']"):
            time.sleep(0.5)
        if panel:
            self._wait(lambda: self._click_when_free(f"[data-cy='{panel}-btn']"), f"a click on the {panel} button")
        reopened = 0
        for text in expect:
            # OHIF 3.13's SR viewport sometimes paints the image before the report's annotations are
            # mapped ("Measurement is preview, skipping") and never draws them; opening the series again
            # (a second double-click, as a user would) sometimes draws them. Up to two such reopenings.
            for _ in range(2):
                if self._wait_quietly(lambda: text in browser.page_source, 20.0):
                    break
                self._click_all("//*[normalize-space(text())='Skip all']")  # the tour can open late, over the page
                ActionChains(browser).double_click(browser.find_elements(By.XPATH, xpath)[0]).perform()
                reopened += 1
            self._wait(lambda: text in browser.page_source, f"{text!r} on the page", timeout_s=30.0)
        time.sleep(2)  # let the last overlay paint before the screenshot
        path = self.screenshots / f"{screenshot}.png"
        browser.save_screenshot(str(path))
        severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        return {"text": browser.find_element(By.TAG_NAME, "body").text, "source": browser.page_source, "severe": severe,
                "screenshot": path, "reopened": reopened}
