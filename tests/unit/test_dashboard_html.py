"""The dashboard's markup: escaped values, the pending reason shown, the summary."""

from __future__ import annotations

from datetime import UTC, datetime

from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dashboard import parse_listen
from swarm.cli.dashboard_html import Snapshot, page, sections

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def _snapshot() -> Snapshot:
    service = pb.Service(id="s1", spec=pb.ServiceSpec(
        name="web", replicated=pb.ReplicatedService(replicas=2)))
    service.spec.task.container.image = "evil<script>:1"
    node = pb.Node(id="n1", description=pb.NodeDescription(hostname="h1"),
                   status=pb.NodeStatus(state=pb.NodeStatus.READY))
    running = pb.Task(id="t1", service_id="s1", service_name="web", slot=1, node_id="n1",
                      desired_state=pb.RUNNING)
    running.status.state = pb.RUNNING
    pending = pb.Task(id="t2", service_id="s1", service_name="web", slot=2,
                      desired_state=pb.RUNNING)
    pending.status.state = pb.PENDING
    pending.status.message = "no suitable node (1 node lacks <memory>)"
    return Snapshot(nodes=[node], services=[service], tasks=[running, pending], now=NOW,
                    controller="127.0.0.1:2377")


def test_values_are_escaped_and_pending_reasons_shown() -> None:
    text = sections(_snapshot())
    assert "<script>" not in text
    assert "evil&lt;script&gt;:1" in text
    assert "no suitable node (1 node lacks &lt;memory&gt;)" in text
    assert 'data-replicas="1/2"' in text
    assert ">1/2</div><div class=\"label\">Services converged" not in text  # 0 of 1 converged
    assert ">0/1</div>" in text


def test_the_page_carries_its_script_and_sections() -> None:
    html = page(_snapshot())
    assert html.startswith("<!doctype html>")
    assert "new EventSource('events')" in html
    assert 'id="sections"' in html


def test_listen_address() -> None:
    assert parse_listen("127.0.0.1:8800") == ("127.0.0.1", 8800)
    assert parse_listen(":9000") == ("127.0.0.1", 9000)
