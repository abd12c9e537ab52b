"""`swarmctl dashboard` in a real headless Chromium against a live control plane:
the page shows the services, the nodes and why a task is pending; a scale made
from the CLI shows within 2 s without a reload; a screenshot is kept as an
artifact ($SWARM_TEST_ARTIFACTS, else the test's tmp dir)."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.cli import client
from swarm.cli.dashboard import serve_in_thread
from tests.browser import Browser, chromium_path
from tests.integration.live import LiveCluster, ok, swarmctl


@pytest.fixture
def dashboard(live: LiveCluster) -> Iterator[str]:
    with client.connect(live.addr) as ctl:
        server, stop = serve_in_thread(ctl)
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    if chromium_path() is None and not os.environ.get("CI"):
        pytest.skip("chromium is not installed (deploy/setup.sh installs it)")
    with Browser.start() as instance:
        yield instance


def _replicas(name: str) -> str:
    return (f"(document.querySelector('#services tr[data-service=\"{name}\"] td.replicas')"
            " || {dataset: {}}).dataset.replicas")


def test_dashboard_shows_the_cluster_and_follows_a_scale(
        live: LiveCluster, dashboard: str, browser: Browser, tmp_path: Path) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2"))
    ok(swarmctl(live, "service", "create", "-d", "mars", "--image", "busybox",
                "--constraint", "node.labels.planet==mars"))
    browser.navigate(dashboard)
    browser.wait_for(f"{_replicas('web')} === '2/2'")
    assert browser.evaluate("document.querySelectorAll('#nodes tbody tr[data-node]').length") == 3
    assert browser.evaluate("document.querySelector('#tasks').innerText"
                            ".includes('no suitable node')")
    browser.wait_for("document.getElementById('live').classList.contains('on')")
    browser.wait_for("document.querySelectorAll('#events li').length > 0")
    browser.evaluate("window.notReloaded = true")

    ok(swarmctl(live, "service", "scale", "-d", "web=4"))
    shown = browser.wait_for(f"({_replicas('web')} || '').endsWith('/4')", timeout=5)
    assert shown < 2.0, f"the scale showed after {shown:.2f}s"
    browser.wait_for(f"{_replicas('web')} === '4/4'", timeout=10)
    assert browser.evaluate("window.notReloaded === true")
    assert browser.evaluate("document.querySelector('#events').innerText"
                            ".includes('service update')")

    time.sleep(1.3)  # the fresh events' highlight fades before the picture
    artifacts = Path(os.environ.get("SWARM_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    picture = artifacts / "dashboard.png"
    picture.write_bytes(browser.screenshot())
    assert picture.stat().st_size > 10_000


def test_dashboard_sections_and_health(live: LiveCluster, dashboard: str) -> None:
    with urllib.request.urlopen(dashboard + "healthz", timeout=5) as answer:
        assert answer.read() == b"ok\n"
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox",
                "--env", "X=<b>"))
    with urllib.request.urlopen(dashboard + "sections", timeout=5) as answer:
        text = answer.read().decode()
    assert 'data-service="api"' in text
    assert text.count("<tr data-node=") == 3
    with urllib.request.urlopen(dashboard + "events", timeout=5) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert stream.readline().startswith(b"data: {")  # the replay starts at once
