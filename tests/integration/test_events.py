"""The event stream against a live control plane: `swarmctl events` reports what
happened, in order, with docker's line format; bad flags are refused before sending."""

from __future__ import annotations

import json
from typing import Any

from swarm.api.v1 import objects_pb2 as pb
from tests.integration.live import LiveCluster, assert_one_line_error, ok, swarmctl


def _events(live: LiveCluster, *flags: str) -> list[dict[str, Any]]:
    result = ok(swarmctl(live, "events", "--since", "5m", "--until", "0s", "-o", "json", *flags))
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_events_report_create_scale_and_task_transitions_in_order(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2"))
    ok(swarmctl(live, "service", "scale", "web=3"))
    events = _events(live, "--filter", "name=web")

    services = [e for e in events if e["type"] == "service"]
    assert services[0]["action"] == "create"
    assert services[0]["name"] == "web"
    assert services[0]["attributes"]["replicas"] == "2"
    scaled = [e for e in services if e["attributes"].get("replicas.new") == "3"]
    assert len(scaled) == 1
    assert scaled[0]["attributes"]["replicas.old"] == "2"
    assert services.index(scaled[0]) > 0

    tasks = [e for e in events if e["type"] == "task"]
    assert {e["name"] for e in tasks} == {"web.1", "web.2", "web.3"}
    order = [pb.TaskState.Value(name.upper()) for name in ("new", "pending", "assigned",
                                                           "accepted", "running")]
    for name in ("web.1", "web.2", "web.3"):
        states = [str(e["attributes"].get("state.new", e["attributes"].get("state")))
                  for e in tasks if e["name"] == name]
        assert states[-1] == "running", states
        values = [pb.TaskState.Value(state.upper()) for state in states]
        assert values == sorted(values), states  # states only move forward
        assert set(order) - {pb.NEW} <= set(values) | {pb.PENDING, pb.ACCEPTED}, states
    # The third task comes after the scale, the first two before it.
    first_of = {name: events.index(next(e for e in tasks if e["name"] == name))
                for name in ("web.1", "web.2", "web.3")}
    assert first_of["web.3"] > events.index(scaled[0]) > max(first_of["web.1"], first_of["web.2"])
    revisions = [int(str(e["revision"])) for e in events if e["action"] != "remove"]
    assert all(isinstance(e["timeNano"], int) for e in events)
    assert revisions  # a revision per event


def test_events_lines_filters_and_bad_flags(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox"))
    result = ok(swarmctl(live, "events", "--since", "5m", "--until", "0s",
                         "--filter", "type=service", "--filter", "event=create"))
    lines = result.stdout.splitlines()
    assert any(" service create " in line and "name=api" in line and "replicas=1" in line
               for line in lines), lines
    assert all(" service create " in line for line in lines), lines
    # docker's time: RFC 3339 with nanoseconds, in UTC
    assert lines[0][:30].endswith("Z")
    assert lines[0][19] == "."

    assert_one_line_error(swarmctl(live, "events", "--filter", "type=volume"),
                          "--filter", "volume", exit_code=2)
    assert_one_line_error(swarmctl(live, "events", "--since", "yesterday-ish"),
                          "--since", exit_code=2)
    assert_one_line_error(swarmctl(live, "events", "--since", "1m", "--until", "5m"),
                          "--until", exit_code=2)


def test_version_lists_the_client_controllers_and_agents(live: LiveCluster) -> None:
    result = ok(swarmctl(live, "version", "-o", "json"))
    data = json.loads(result.stdout)
    roles = [row["role"] for row in data["components"]]
    assert roles[:2] == ["client", "controller (leader)"]
    agents = [row for row in data["components"] if row["role"] == "agent"]
    assert [a["name"] for a in agents] == ["sim-0000", "sim-0001", "sim-0002"]
    assert {a["version"] for a in agents} == {data["client"]}
    assert data["skew"] is False
    table = ok(swarmctl(live, "version")).stdout
    assert "sim-0002" in table
    assert "SKEW" in table.splitlines()[0]


def test_format_on_ls_ps_and_inspect(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2"))
    names = ok(swarmctl(live, "service", "ls", "--format", "{{.Name}} {{.Replicas}}")).stdout
    assert names.strip() == "web 2/2"
    table = ok(swarmctl(live, "service", "ls", "--format", "table {{.ID}}\\t{{.Name}}")).stdout
    header, row = table.strip().splitlines()
    assert header.split() == ["ID", "NAME"]
    assert row.split()[1] == "web"
    row_json = json.loads(ok(swarmctl(live, "service", "ls", "--format", "{{json .}}")).stdout)
    assert row_json["Name"] == "web"
    assert row_json["Mode"] == "replicated"
    tasks = ok(swarmctl(live, "service", "ps", "web", "--format",
                        "{{.Name}} {{.CurrentState}}")).stdout.splitlines()
    assert sorted(line.split()[0] for line in tasks) == ["web.1", "web.2"]
    assert all(line.split()[1] == "Running" for line in tasks)
    service_id = live.service("web").id
    assert ok(swarmctl(live, "service", "inspect", "-f", "{{.ID}} {{.Spec.Name}}", "web")
              ).stdout.strip() == f"{service_id} web"
    spec = json.loads(ok(swarmctl(live, "service", "inspect", "--format", "{{json .Spec}}",
                                  "web")).stdout)
    assert spec["name"] == "web"
    hostnames = ok(swarmctl(live, "node", "ls", "--format", "{{.Hostname}}")).stdout.split()
    assert hostnames == sorted(hostnames)
    assert len(hostnames) == 3
    assert ok(swarmctl(live, "network", "inspect", "-f", "{{.Spec.Name}}", "ingress")
              ).stdout.strip() == "ingress"

    assert_one_line_error(swarmctl(live, "service", "ls", "--format", "{{.Nmae}}"),
                          "--format", "Nmae", exit_code=2)
    assert_one_line_error(swarmctl(live, "service", "ls", "--format", "{{range .X}}"),
                          "--format", exit_code=2)
    assert_one_line_error(swarmctl(live, "service", "ls", "-o", "json", "--format", "{{.ID}}"),
                          "--format", exit_code=2)
