"""`swarmctl dashboard` in a real headless Chromium against a live control plane:
the page shows the services, the nodes and why a task is pending; a scale made
from the CLI shows within 2 s without a reload; a screenshot is kept as an
artifact ($SWARM_TEST_ARTIFACTS, else the test's tmp dir)."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.cli import client
from swarm.cli.dashboard import Settings, serve_in_thread
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


def post(url: str, body: dict[str, object], headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())["message"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]


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
    browser.wait_for("document.querySelector('#tasks').innerText"
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

    # The buttons act as the operator: + scales web to 5, Drain drains a node.
    browser.evaluate("document.querySelector('tr[data-service=\"web\"] "
                     "button[data-replicas=\"5\"]').click()")
    browser.wait_for(f"({_replicas('web')} || '').endsWith('/5')", timeout=5)
    assert live.service("web").spec.replicated.replicas == 5
    browser.evaluate("document.querySelector('tr[data-node=\"sim-0002\"] "
                     "button[data-action=\"availability\"]').click()")
    browser.wait_for("document.querySelector('tr[data-node=\"sim-0002\"]')"
                     ".innerText.includes('drain')", timeout=5)
    browser.wait_for("document.getElementById('toast').textContent.includes('sim-0002')")

    # The picture without the toast and the fresh events' highlight.
    browser.wait_for("!document.getElementById('toast').classList.contains('show')", timeout=6)
    time.sleep(1.3)
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


def test_dashboard_actions_need_the_page_token(live: LiveCluster, dashboard: str) -> None:
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox"))
    with urllib.request.urlopen(dashboard, timeout=5) as answer:
        page = answer.read().decode()
    token = re.search(r'name="swarm-token" content="([^"]+)"', page)
    assert token
    good = {"X-Swarm-Token": token.group(1)}
    scale = dashboard + "api/scale"
    assert post(scale, {"service": "api", "replicas": 2}, {}) == \
        (403, "missing or wrong X-Swarm-Token (reload the page)")
    status, why = post(scale, {"service": "api", "replicas": 2},
                       {**good, "Host": "evil.example:80"})
    assert status == 403
    assert "unexpected Host" in why
    assert post(scale, {"service": "api", "replicas": -1}, good)[0] == 400
    assert post(dashboard + "api/explode", {}, good) == (400, "unknown action 'explode'")
    status, why = post(scale, {"service": "nope", "replicas": 1}, good)
    assert status == 409
    assert "nope" in why
    assert live.service("api").spec.replicated.replicas == 1  # nothing was written
    assert post(scale, {"service": "api", "replicas": 2}, good) == (200, "api scaled to 2")
    assert live.service("api").spec.replicated.replicas == 2


def test_read_only_dashboard_has_no_buttons(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox"))
    with client.connect(live.addr) as ctl:
        server, stop = serve_in_thread(ctl, settings=Settings(read_only=True))
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            with urllib.request.urlopen(url, timeout=5) as answer:
                page = answer.read().decode()
            assert "<button" not in page
            assert 'name="swarm-token"' not in page
            assert post(url + "api/scale", {"service": "api", "replicas": 3}, {})[0] == 404
        finally:
            stop()
