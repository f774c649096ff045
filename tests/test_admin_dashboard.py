"""The admin dashboard (``/``) in headless Chromium, driven by selenium and chromedriver.

Chromium and chromium-driver are Debian packages installed by ``make deps``. The page must
load without console errors, draw the request-rate chart, list a host a test request
resolved (through the test DNS server) in the DNS table and show recent requests; the test
saves a screenshot as test-output/dashboard.png.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.origin import OriginServer
from tests.support.proxy import REPO_ROOT, ProxyProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
OUTPUT = REPO_ROOT / "test-output"
# Without the background-networking flags Chromium tries to reach Google's services, which
# this closed machine refuses (and which a test must not do anyway).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1700",
)
WAIT = 15.0


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed (make deps installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_js(driver: Any, script: str, what: str, timeout: float = WAIT) -> Any:
    """Poll ``script`` (a JS expression) until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script("return " + script)
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def table_text(driver: Any, table_id: str) -> str:
    return str(
        driver.execute_script(f"return document.querySelector('#{table_id} tbody').innerText")
    )


# Pixels of the chart in the 2xx colour (#2e9e5b), counted in the page.
GREEN_PIXELS = """
const c = document.getElementById('rps-chart');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i + 3] > 200 && Math.abs(d[i] - 0x2e) < 8 && Math.abs(d[i + 1] - 0x9e) < 8
      && Math.abs(d[i + 2] - 0x5b) < 8) n++;
}
return n;
"""


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_dashboard_live_in_chromium(
    browser: Any, proxy_factory, origin: OriginServer, workers: int
) -> None:
    args = ("--workers", str(workers)) if workers > 1 else ()
    p: ProxyProcess = proxy_factory(*args, timeout=30)
    host = f"shop.test:{origin.port}"
    for path, n in (("/echo", 5), ("/missing", 3), ("/status/503", 2)):
        for _ in range(n):
            assert p.curl(f"http://{host}{path}").returncode == 0
    browser.get(p.admin_url + "/")
    assert browser.title == "dfproxy admin"
    # the DNS table lists the host the requests resolved
    wait_js(browser, f"document.querySelector('#dns tbody').innerText.includes('{host}')", "DNS")
    dns = table_text(browser, "dns")
    assert "127.0.0.1" in dns and "success" in dns
    # the chart has bars for the seconds with traffic, drawn in the status classes' colours
    wait_js(browser, "Number(document.getElementById('rps-chart').dataset.bars) > 0", "chart")
    assert int(browser.execute_script(GREEN_PIXELS)) > 20
    # recent requests, newest first (the test proxy has an access log: every entry is kept)
    wait_js(
        browser, "document.querySelector('#log tbody').innerText.includes('/status/503')", "log"
    )
    log_rows = table_text(browser, "log")
    assert "503" in log_rows and host in log_rows
    # tiles, latency and breakers from the stats
    wait_js(browser, "document.getElementById('k-total').textContent === '10'", "total tile")
    assert "downstream_rq_time" in table_text(browser, "latency")
    breakers = str(browser.execute_script("return document.getElementById('breakers').innerText"))
    assert f"{1024 * workers:,}" in breakers  # the dashboard shows limits per worker × workers
    assert browser.find_element("id", "state").text == "LIVE"
    OUTPUT.mkdir(exist_ok=True)
    wait_js(browser, f"document.getElementById('workers').textContent === '{workers}'", "info")
    suffix = "" if workers == 1 else f"-{workers}-workers"
    browser.save_screenshot(str(OUTPUT / f"dashboard{suffix}.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []


def test_dashboard_files_are_served_without_external_assets(proxy_factory) -> None:
    p: ProxyProcess = proxy_factory()
    status, html = p.admin_get("/")
    assert status == 200 and b"<canvas" in html
    for path in ("/ui/dashboard.js", "/ui/dashboard.css"):
        status, body = p.admin_get(path)
        assert status == 200 and len(body) > 1000
        assert b"http://" not in body and b"https://" not in body  # nothing from outside
    assert b"http://" not in html and b"https://" not in html


def test_without_an_access_log_recent_requests_are_kept_only_once_watched(
    tmp_path: Path, dns_server, origin: OriginServer
) -> None:
    import json
    import subprocess
    import sys

    from tests.helpers import wait_for
    from tests.support.clients import RawClient, clean_env
    from tests.support.proxy import LOOPBACK_ALLOWED

    ports = tmp_path / "ports.json"
    cmd = [sys.executable, "-m", "dfproxy", "run", "--listen", "127.0.0.1:0", "--admin"]
    cmd += ["127.0.0.1:0", "--ports-file", str(ports), "--dns-resolver", dns_server.address]
    cmd += LOOPBACK_ALLOWED  # the embedded default denies loopback destinations
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=clean_env(), stderr=subprocess.DEVNULL)
    try:
        wait_for(ports.exists, 15, "the proxy to start")
        info = json.loads(ports.read_text())

        def get(url: str) -> int:
            with RawClient("127.0.0.1", info["listen"], timeout=5) as c:
                return c.request("GET", url).status

        def recent() -> list[dict[str, Any]]:
            with RawClient("127.0.0.1", info["admin"], timeout=5) as c:
                res = c.request("GET", "/access_log", headers=[("Host", "127.0.0.1")])
                entries: list[dict[str, Any]] = json.loads(res.body)["entries"]
                return entries

        url = f"http://quiet.test:{origin.port}/echo"
        assert get(url) == 200
        assert recent() == []  # nobody was watching: no entry was built
        assert get(url + "?watched") == 200  # the poll above plugged the ring in
        [entry] = recent()
        assert entry["path"] == "/echo?watched" and entry["response_code"] == 200
    finally:
        proc.terminate()
        proc.wait(10)
