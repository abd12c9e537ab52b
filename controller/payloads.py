"""Delivery of secrets and configs to nodes, restricted as SwarmKit's is.

A node gets a payload only for a task of its own that uses it and has not
ended: the agent asks for one task's payloads when it prepares the task
(Dispatcher.TaskPayloads), over the session's mutual TLS, and the node ID
is the CN of its certificate (the dispatcher checks the request's node_id
against it). Anything else -- a task of another node, an unknown task, a
task that ended or is being stopped before it ran -- is PERMISSION_DENIED,
with the same message whether the task exists or not (an unknown ID tells a
curious node nothing), and nothing is sent. Refusals are logged with the
node and task; no payload is ever logged.

Why ask per task rather than push with the assignments (as SwarmKit does):
a payload then crosses the wire only when a container is about to be made
with it, the assignment stream (controller/dispatcher/assignments.py) stays as
it is, and the rule fits one pure function (`refusal`).

The payloads are opened here, in memory, from the sealed records of the
watch cache (controller/api/secrets.py seals them); a record that does not
open is DATA_LOSS, naming the object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import grpc

from swarm.api import pki
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

from .api.errors import FailedPrecondition, Relayed
from .store import WatchCache

log = logging.getLogger(__name__)


def refusal(task: pb.Task | None, node_id: str) -> str | None:
    """Why node_id may not have this task's payloads (None: it may). The
    task must be assigned to that node, not ended, and not told to stop."""
    if task is None or task.node_id != node_id:
        return "no such task on this node"
    if task.status.state < pb.ASSIGNED:
        return "the task is not assigned yet"
    if task.status.state > pb.RUNNING or task.desired_state > pb.RUNNING:
        return "the task has ended or is stopping"
    return None


class PayloadRefused(Relayed):
    """A refusal with its status code (the ErrorInterceptor answers it)."""


def open_payloads(task: pb.Task, secrets: Mapping[str, pb.Secret],
                  configs: Mapping[str, pb.Config], key: pki.DataKey) -> dpb.TaskPayloadsResponse:
    """The task's payloads, opened. Raises PayloadRefused when one is gone
    (removed after the task was made) or does not open."""
    response = dpb.TaskPayloadsResponse()
    container = task.spec.container
    wanted: list[tuple[str, str, Mapping[str, pb.Secret] | Mapping[str, pb.Config]]] = [
        *(("secret", r.secret_id, secrets) for r in container.secrets),
        *(("config", r.config_id, configs) for r in container.configs),
    ]
    seen: set[tuple[str, str]] = set()
    for kind, object_id, objects in wanted:
        if (kind, object_id) in seen:
            continue
        seen.add((kind, object_id))
        obj = objects.get(object_id)
        if obj is None:
            raise PayloadRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"{kind} {object_id} of task {task.id} no longer exists")
        try:
            data = key.open(obj.sealed_data, context=f"{kind}/{object_id}")
        except pki.SealedDataError as error:
            raise PayloadRefused(grpc.StatusCode.DATA_LOSS, str(error)) from None
        entry = dpb.Payload(id=object_id, name=obj.spec.name, data=data)
        (response.secrets if kind == "secret" else response.configs).append(entry)
    return response


class PayloadServer:
    """Answers Dispatcher.TaskPayloads (the dispatcher checks the caller first)."""

    def __init__(self, cache: WatchCache, data_key: Callable[[], pki.DataKey]) -> None:
        self._cache = cache
        self._data_key = data_key

    def serve(self, node_id: str, task_id: str) -> dpb.TaskPayloadsResponse:
        """Raises PayloadRefused."""
        task = self._cache.tasks.get(task_id)
        why = refusal(task, node_id)
        if why is not None:
            log.warning("node %s asked for the payloads of task %s: refused (%s)",
                        node_id, task_id, why)
            raise PayloadRefused(grpc.StatusCode.PERMISSION_DENIED,
                                 f"task {task_id}: {why}; payloads go only to the node "
                                 "running the task")
        assert task is not None
        response = open_payloads(task, self._cache.secrets, self._cache.configs,
                                 self._data_key())
        log.debug("sent %d secret(s) and %d config(s) of task %s to node %s",
                 len(response.secrets), len(response.configs), task_id, node_id)
        return response


def serve_task_payloads(server: PayloadServer | None, node_id: str,
                        task_id: str) -> dpb.TaskPayloadsResponse:
    """The RPC's body, once the dispatcher has checked node_id against the
    certificate. Raises PayloadRefused (or FailedPrecondition without a data key)."""
    if server is None:
        raise FailedPrecondition("this controller has no data key (--insecure): it keeps no secrets")
    return server.serve(node_id, task_id)
