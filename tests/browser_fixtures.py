"""A headless Chromium driven by Selenium for the viewer's tests (``browser`` marker).

The browser and its driver are the system's (Debian: ``apt-get install chromium chromium-driver``), found on PATH
or named by ``CTAGRG_CHROMIUM`` / ``CTAGRG_CHROMEDRIVER``; nothing is downloaded (Selenium Manager is never asked:
both paths are given). Tests skip with the reason when no Chromium or no driver is found.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WAIT_S = 30.0


def find_chromium() -> tuple[str, str] | str:
    """(browser, chromedriver) paths, or the reason why there are none."""
    browser = os.environ.get("CTAGRG_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = os.environ.get("CTAGRG_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser:
        return (f"no Chromium found (none of {', '.join(BROWSERS)} on PATH, CTAGRG_CHROMIUM unset): "
                f"apt-get install chromium chromium-driver")
    if not driver:
        return f"Chromium at {browser} but no chromedriver on PATH (CTAGRG_CHROMEDRIVER unset): apt-get install " \
               f"chromium-driver"
    return browser, driver


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium (1280 x 1000 window) whose downloads go to ``chrome.download_dir``."""
    found = find_chromium()
    if isinstance(found, str):
        if os.environ.get("CTAGRG_REQUIRE_BROWSER"):  # .ci/run installed one: a missing browser is a failure there
            pytest.fail(f"CTAGRG_REQUIRE_BROWSER is set but {found}")
        pytest.skip(found)
    try:  # the browser is here: a missing client library is a broken dev install, not a reason to skip
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"Chromium found but Selenium is not installed ({exc}): pip install -e '.[dev]'")
    browser, driver_path = found
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.download_dir = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: Callable[[], Any], message: str, timeout: float = WAIT_S) -> Any:
    """Poll ``what()`` until it returns something true (returned); AssertionError with ``message`` after
    ``timeout`` seconds (the browser works asynchronously: images load, fetches answer)."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s: {message} (last value {value!r})")
        time.sleep(0.05)


def console_errors(driver: Any, allowed: tuple[str, ...] = ()) -> list[str]:
    """The browser console's errors since the last call, except those containing one of ``allowed``."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def downloaded(directory: Path, suffix: str) -> Path:
    """The one finished download in ``directory`` ending with ``suffix`` (waits for it)."""
    def done() -> Path | None:
        files = [p for p in directory.iterdir() if p.name.endswith(suffix)]
        return files[0] if len(files) == 1 and files[0].stat().st_size > 0 else None
    return wait_for(done, f"a download named *{suffix} in {directory}")
