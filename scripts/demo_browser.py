"""Drive ``latentmap demo`` in Debian's headless Chromium: start the server, open the page, act, read it.

Shared by the browser test (tests/test_demo_browser.py) and the screenshot script
(scripts/demo_screenshots.py). Selenium drives ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``
(packages ``chromium`` and ``chromium-driver``; ``bash scripts/setup-browser.sh`` installs them): both
paths are given, so Selenium never looks for, or downloads, a browser or driver of its own.

Every wait is explicit (a condition polled until a deadline, generous because the CI machine is a
loaded 2-core box); nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("LATENTMAP_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("LATENTMAP_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL_HINT = ("install Debian's chromium and chromium-driver: `bash scripts/setup-browser.sh` "
                "(apt-get install -y chromium chromium-driver), and selenium: pip install -e \".[dev]\"")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1100"]
SERVER_START_TIMEOUT = 240.0  # importing torch and gradio on a loaded 2-core machine takes a while
PAGE_TIMEOUT = 120.0


class BrowserMissing(RuntimeError):
    """Chromium, chromedriver or selenium is not installed; the message says how to install them."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def demo_server(checkpoint: str | os.PathLike, *, port: int | None = None,
                env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[str]:
    """Run ``python -m latentmap demo --checkpoint CHECKPOINT`` on 127.0.0.1; yields its URL once it answers."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = log or Path(tempfile.mkdtemp(prefix="latentmap-demo-log-")) / "demo.log"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "latentmap", "demo", "--checkpoint", str(checkpoint), "--host", "127.0.0.1",
             "--port", str(port), "--device", "cpu"],
            cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"latentmap demo exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/", timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(answers, SERVER_START_TIMEOUT, f"latentmap demo to answer on {url}", interval=0.25)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def check_browser() -> None:
    """Raise :class:`BrowserMissing` (saying how to install) unless chromium, chromedriver and selenium exist."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        raise BrowserMissing(f"the browser test needs {', '.join(missing)}: {INSTALL_HINT}")


@contextmanager
def chromium(downloads: Path | None = None) -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile, logging every network request, saving
    downloads in ``downloads`` (default: a folder inside the profile)."""
    check_browser()
    # Both paths are given, so Selenium Manager has nothing to find; should it run anyway, it must not
    # download a browser or driver, nor send its usage statistics.
    os.environ.setdefault("SE_OFFLINE", "true")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="latentmap-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    downloads = downloads or Path(profile) / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class DemoPage:
    """The demo page in a WebDriver: the actions a user takes and what the page shows."""

    def __init__(self, driver: Any, url: str, timeout: float = PAGE_TIMEOUT):
        self.driver = driver
        self.url = url
        self.timeout = timeout
        self.requested: set[str] = set()  # every URL the browser asked for (from the performance log)

    # -- finding things -------------------------------------------------------------------------
    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        """``condition`` polled until truthy; an element the page re-rendered meanwhile means "not yet"."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )

        def attempt() -> Any:
            try:
                return condition()
            except (StaleElementReferenceException, NoSuchElementException):
                return None

        return wait_until(attempt, self.timeout, what)

    # -- actions --------------------------------------------------------------------------------
    def open(self) -> DemoPage:
        self.driver.get(self.url + "/")
        self.wait(lambda: self.find_all("#prompt textarea, #prompt input"), "the prompt box")
        self.wait(lambda: self.find_all("#generate"), "the Generate button")
        return self

    def type_into(self, elem_id: str, text: str) -> None:
        box = self.find(f"#{elem_id} textarea, #{elem_id} input")
        box.clear()
        box.send_keys(text)

    def click(self, elem_id: str) -> None:
        """Click ``#elem_id`` once it is enabled (found afresh: Gradio re-renders components)."""
        button = self.wait(lambda: next((b for b in self.find_all(f"#{elem_id}") if b.is_enabled()), None),
                           f"#{elem_id} to be enabled")
        button.click()

    def set_slider(self, elem_id: str, value: float) -> None:
        """Set a slider as a user does: type the value into its number box and leave the box."""
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{elem_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value))
        box.send_keys(Keys.TAB)

    def press_slider_keys(self, elem_id: str, key: str, times: int = 1) -> None:
        """Move a slider with the keyboard (its range input has focus), ``times`` presses of ``key``."""
        from selenium.webdriver.common.keys import Keys

        handle = self.find(f"#{elem_id} input[type=range]")
        handle.click()  # focus (moves it to where it is clicked: the middle)
        for _ in range(times):
            handle.send_keys(getattr(Keys, key))

    # -- reading --------------------------------------------------------------------------------
    def slider_value(self, elem_id: str) -> float:
        return float(self.find(f"#{elem_id} input[type=range]").get_attribute("value"))

    def status(self) -> str:
        elements = self.find_all("#status")
        return elements[0].text.strip() if elements else ""

    def image_sources(self) -> list[str]:
        """The ``src`` of each image in the gallery, in order (best first)."""
        return [img.get_attribute("src") or "" for img in self.find_all("#gallery img")]

    def captions(self) -> list[str]:
        return [element.text.strip() for element in self.find_all("#gallery .caption-label, #gallery figcaption")]

    def error_messages(self) -> list[str]:
        """Texts of the error toasts shown now."""
        return [element.text.strip() for element in self.find_all("[data-testid=toast-text]") if element.text.strip()]

    def wait_for_new_images(self, previous: list[str], count: int) -> list[str]:
        """Wait until the gallery shows ``count`` images whose sources differ from ``previous``; return them."""
        def changed() -> list[str] | None:
            sources = self.image_sources()
            if len(sources) == count and all(sources) and sources != previous:
                return sources
            return None

        return self.wait(changed, f"{count} new gallery images")

    def wait_idle(self) -> None:
        """Wait until no component shows Gradio's loading state (every status tracker hidden)."""
        script = ("return [...document.querySelectorAll('[data-testid=status-tracker]')]"
                  ".filter(e => !e.classList.contains('hide')).length")
        self.wait(lambda: self.driver.execute_script(script) == 0, "the page to finish its requests")

    def wait_for_error(self, contains: str) -> str:
        return self.wait(lambda: next((m for m in self.error_messages() if contains in m), None),
                         f"an error message containing {contains!r}")

    def fetch(self, source: str) -> bytes:
        """The bytes behind an image or download URL of the page (fetched from the test, not the browser)."""
        with urllib.request.urlopen(source, timeout=30) as response:
            return response.read()

    def download(self, elem_id: str, folder: Path, suffix: str) -> Path:
        """Click download button ``elem_id`` and wait for the browser to save a ``suffix`` file in ``folder``
        (the download folder :func:`chromium` was given)."""
        before = set(folder.glob(f"*{suffix}"))
        self.click(elem_id)

        def saved() -> Path | None:
            new = [path for path in folder.glob(f"*{suffix}") if path not in before]
            return new[0] if new and new[0].stat().st_size > 0 else None

        return self.wait(saved, f"the browser to save a {suffix} file from #{elem_id}")

    def resources(self) -> list[str]:
        """Every URL the browser requested so far: the performance log's requests, and the page's
        resource timing entries (which also list what a service worker or the cache answered)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requested.add(message["params"]["request"]["url"])
            elif message.get("method") == "Network.webSocketCreated":
                self.requested.add(message["params"]["url"])
        timed = self.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        return sorted(self.requested | set(timed or []))

    def foreign_requests(self) -> list[str]:
        """Requests to any host but the demo's own (data: and blob: URLs are not requests)."""
        own = urlparse(self.url).netloc
        return [url for url in self.resources()
                if urlparse(url).scheme not in ("data", "blob", "about", "chrome", "devtools")
                and urlparse(url).netloc != own]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path
