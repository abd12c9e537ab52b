"""The dashboard's buttons: scale a service by one, drain or reactivate a node,
roll a service back, each through the control API as the matching swarmctl
command does (read-modify-write retried on a version conflict).

The browser must prove it loaded the page: every POST carries the page's
random token (a header a cross-site form cannot set), and its Host header must
name this server (a rebound DNS name pointing at 127.0.0.1 does not). Off with
`swarmctl dashboard --read-only`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from . import client

AVAILABILITIES = {"active": pb.NodeSpec.ACTIVE, "pause": pb.NodeSpec.PAUSE,
                  "drain": pb.NodeSpec.DRAIN}
MAX_REPLICAS = 10_000  # a button press adds one; this only refuses nonsense


class ActionError(ValueError):
    """A request the dashboard refuses before calling the controller."""


def allowed(headers: Mapping[str, str], token: str, hosts: frozenset[str]) -> str:
    """'' when a POST may act, else why not."""
    given = headers.get("X-Swarm-Token", "")
    if not given or not hmac.compare_digest(given, token):
        return "missing or wrong X-Swarm-Token (reload the page)"
    if headers.get("Host", "") not in hosts:
        return f"unexpected Host {headers.get('Host', '')!r}"
    return ""


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ActionError(f"{key}: expected a non-empty string")
    return value


def act(ctl: client.Controller, action: str, body: Mapping[str, Any]) -> str:
    """Run one action; returns what to tell the operator. Raises ActionError for a
    bad request, CliError when the controller refused or is out of reach."""
    if action == "scale":
        service = _text(body, "service")
        replicas = body.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or \
                not 0 <= replicas <= MAX_REPLICAS:
            raise ActionError(f"replicas: expected a whole number from 0 to {MAX_REPLICAS}")
        done = ctl.call(ctl.stub.ScaleService,
                        cpb.ScaleServiceRequest(ref=service, replicas=replicas)).service
        return f"{done.spec.name} scaled to {replicas}"
    if action == "availability":
        node = _text(body, "node")
        word = _text(body, "availability")
        if word not in AVAILABILITIES:
            raise ActionError(f"availability: expected one of {', '.join(AVAILABILITIES)}")

        def set_availability() -> pb.Node:
            current = ctl.call(ctl.stub.GetNode, cpb.GetRequest(ref=node)).node
            spec = pb.NodeSpec()
            spec.CopyFrom(current.spec)
            spec.availability = AVAILABILITIES[word]
            return ctl.call(ctl.stub.UpdateNode, cpb.UpdateNodeRequest(
                node_id=current.id, version=current.meta.version, spec=spec)).node

        updated = set_availability()  # the controller retries over status writes
        return f"{updated.description.hostname}: {word}"
    if action == "rollback":
        service = _text(body, "service")

        def roll_back() -> pb.Service:
            current = ctl.call(ctl.stub.GetService, cpb.GetRequest(ref=service)).service
            return ctl.call(ctl.stub.UpdateService, cpb.UpdateServiceRequest(
                service_id=current.id, version=current.meta.version, rollback=True)).service

        return f"{roll_back().spec.name}: rolling back"
    raise ActionError(f"unknown action {action!r}")
