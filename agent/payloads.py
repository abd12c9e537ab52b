"""A task's secrets and configs on the node: memory and a per-task tmpfs only.

When the worker prepares a task that references secrets or configs, it asks
the controller for that task's payloads (Dispatcher.TaskPayloads, over the
session's mutual TLS; the controller gives them only to the node running
the task) and hands them to the runtime as `PayloadFile`s, which hold the
data in memory. The runtime (runc.py) mounts a tmpfs under the task's bundle
directory (`payloads/`, mode 0700, root's), writes each file there with its
uid, gid and mode, and bind-mounts it read-only at its place in the
container: /run/secrets/TARGET for a secret, TARGET for a config. Nothing is
written to persistent disk; nothing here logs a payload (the dataclass hides
the data from repr).

Configs go into the same tmpfs as secrets, not into a 0600 file in the task
directory: one code path, nothing of them on disk to clean after a crash,
and a config file often holds something that is sensitive enough (a
connection string, an upstream's address) not to want it on a disk that
outlives the task. Their size is bounded (500 KiB each), so memory is no
concern.

The tmpfs goes away when the task ends: the worker releases it once the
container has stopped (its process -- the only other holder of the bind
mounts -- is gone), and the runtime's removal unmounts everything under the
bundle anyway; an agent restarted after a crash removes the containers of
tasks no longer assigned the same way, and releases those that ended.
"""

from __future__ import annotations

import posixpath

from swarm.api import payloads
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

from .runtime.base import PayloadFile, RejectError


def plan_files(task: pb.Task, response: dpb.TaskPayloadsResponse) -> tuple[PayloadFile, ...]:
    """The task's files from what the controller sent. Raises RejectError
    when one is missing or a target would leave the container's file system
    (the controller checked; this is defence in depth)."""
    secrets = {p.id: p for p in response.secrets}
    configs = {p.id: p for p in response.configs}
    files: list[PayloadFile] = []
    container = task.spec.container
    refs: list[tuple[payloads.Kind, str, str, pb.FileTarget]] = [
        *(("secret", r.secret_id, r.secret_name, r.file) for r in container.secrets),
        *(("config", r.config_id, r.config_name, r.file) for r in container.configs),
    ]
    for kind, object_id, name, target in refs:
        found = (secrets if kind == "secret" else configs).get(object_id)
        if found is None:
            raise RejectError(f"{kind} {name!r} was not sent by the controller")
        if ".." in target.name.split("/") or not target.name:
            raise RejectError(f"{kind} {name!r}: invalid target {target.name!r}")
        path = posixpath.normpath(payloads.container_path(kind, target.name))
        if target.mode > payloads.MAX_MODE:
            raise RejectError(f"{kind} {name!r}: invalid mode {target.mode:o}")
        files.append(PayloadFile(kind, name, path, target.uid, target.gid,
                                 target.mode or payloads.DEFAULT_MODE, found.data))
    return tuple(files)


def needs_payloads(task: pb.Task) -> bool:
    container = task.spec.container
    return bool(container.secrets or container.configs)


def tmpfs_size(files: tuple[PayloadFile, ...]) -> int:
    """Room for the files with a page of slack each."""
    return sum(len(f.data) + 4096 for f in files) + 4096
