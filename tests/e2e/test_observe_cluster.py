"""What an operator sees of a real local cluster (`swarmctl dev up`: netns hosts,
real agents and runc containers): every process's metrics URL in `dev status`,
the controller's replica gauges agreeing with `service ls`, the agents' own
metrics and readiness, `swarmctl version` listing the agents, and the events of
a create and a scale."""

from __future__ import annotations

import json
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from swarm.cli.dev import cluster
from swarm.cli.main import app
from tests.e2e.test_dev_cluster import _require_root

pytestmark = pytest.mark.timeout(240)
SUBNET = "192.168.127.0/24"


@pytest.fixture
def name() -> Iterator[str]:
    _require_root()
    name = "o" + secrets.token_hex(3)
    try:
        yield name
    finally:
        cluster.down(name, say=lambda _: None)


def swarmctl(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"swarmctl {' '.join(args)}: {result.output}"
    return result.stdout


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def gauge(text: str, name: str, label: str) -> float:
    found = re.search(rf'^{name}{{\w+="{re.escape(label)}"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name}{{{label}}} not in the metrics"
    return float(found.group(1))


def test_metrics_version_and_events_of_a_real_cluster(name: str) -> None:
    state = cluster.up(name, 2, SUBNET, say=lambda _: None)
    processes = json.loads(swarmctl("dev", "status", "--name", name, "-o", "json"))["processes"]
    urls = {p["role"]: p["metrics"] for p in processes}
    controller_url = urls["controller"]
    agent_urls = [url for role, url in urls.items() if role.startswith("agent ")]
    assert controller_url == f"http://{state.gateway}:{cluster.METRICS_PORT}/metrics"
    assert len(agent_urls) == 2
    assert urls["etcd"] is None

    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    swarmctl("service", "create", "web", "--image", image, "--replicas", "2", "--timeout", "60s")
    swarmctl("service", "scale", "web=3", "--timeout", "60s")

    listed = swarmctl("service", "ls", "--format", "{{.Name}} {{.Replicas}}").split()
    assert listed == ["web", "3/3"]
    status, text = get(controller_url)
    assert status == 200
    assert gauge(text, "swarm_service_replicas_desired", "web") == 3
    assert gauge(text, "swarm_service_replicas_running", "web") == 3
    assert get(controller_url.replace("/metrics", "/readyz")) == (200, "ok\n")

    started = 0.0
    for url in agent_urls:
        status, text = get(url)
        assert status == 200
        found = re.search(r"^swarm_agent_container_start_seconds_count (\S+)$", text,
                          re.MULTILINE)
        assert found
        started += float(found.group(1))
        assert "swarm_agent_image_pull_seconds_count" in text
        assert re.search(r"^swarm_agent_mesh_connections 0\.0$", text, re.MULTILINE)
        assert get(url.replace("/metrics", "/readyz")) == (200, "ok\n")
    assert started == 3  # every container's start was timed, on one node or the other

    versions = json.loads(swarmctl("version", "-o", "json"))
    agents = [row for row in versions["components"] if row["role"] == "agent"]
    assert sorted(a["name"] for a in agents) == [f"{name}-h1", f"{name}-h2"]
    assert versions["skew"] is False

    lines = swarmctl("events", "--since", "5m", "--until", "0s", "-o", "json",
                     "--filter", "name=web").splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0]["type"] == "service"
    assert events[0]["action"] == "create"
    assert any(e["attributes"].get("replicas.new") == "3" for e in events)
    running = {e["name"] for e in events if e["type"] == "task"
               and e["attributes"].get("state.new") == "running"}
    assert running == {"web.1", "web.2", "web.3"}
