"""The agent's container runtime as a plug-in point: what the worker needs from
whatever runs its containers, and the small value types that cross it.

The runtime knows nothing about images (it is handed unpacked layer
directories and the image config) nor about the controller: it turns one task
into one container, and back into nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from swarm.api.v1 import objects_pb2 as pb


class ContainerError(Exception):
    """A container could not be prepared, started, signalled or removed."""


class RejectError(ContainerError):
    """The task cannot run as given (unknown user, missing executable, a bind
    mount outside the allowed roots, a limit below the minimum...). Retrying
    the same task on this node will fail the same way; nothing was left behind."""


class NoSuchContainer(ContainerError, KeyError):
    """The runtime does not know this container."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "no such container"


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config the runtime merges with the task's
    ContainerSpec, as docker does."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # KEY=VALUE
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""


@dataclass(frozen=True)
class ImageInput:
    """An image ready to run: unpacked layer directories, LOWEST first (the
    order of the manifest), and its config."""

    layers: tuple[Path, ...]
    config: ImageConfig = field(default_factory=ImageConfig)


@dataclass(frozen=True)
class PayloadFile:
    """One file of a task's secrets or configs (agent/payloads.py): where it
    appears in the container, its owner and mode, and its content (kept out
    of repr, hence out of logs). Only ever in memory and in the task's tmpfs."""

    kind: Literal["secret", "config"]
    name: str  # the secret's or config's name, for messages
    path: str  # absolute, normalized, in the container
    uid: int
    gid: int
    mode: int
    data: bytes = field(repr=False)


ContainerStatus = Literal["created", "running", "paused", "stopped", "unknown"]


@dataclass(frozen=True)
class ContainerState:
    """One container of this runtime as observed now.

    status is runc's ("created", "running", "paused", "stopped"), or "unknown"
    for a bundle that runc does not know (a prepare cut short by a crash: it
    only awaits remove()). pid is 0 unless the container process exists.
    exit_code is set once the monitor recorded the exit, also when the
    container ended while no agent ran. monitor_pid is the live conmon, if any.
    oom_killed: the kernel's OOM killer struck in the container's memory cgroup.
    """

    id: str
    status: ContainerStatus
    pid: int = 0
    exit_code: int | None = None
    monitor_pid: int | None = None
    oom_killed: bool = False


class Runtime(Protocol):
    """Runs a task's container. Container ID = task ID. Every method is safe
    to call again after an agent restart (a new Runtime object with the same
    settings sees the same containers)."""

    async def prepare(self, task: pb.Task, image: ImageInput,
                      files: Sequence[PayloadFile] = ()) -> None:
        """Everything up to a CREATED container: rootfs, mounts, network
        namespace, config, monitor; `files` (secrets, configs) in a tmpfs of
        the task's, bind-mounted read-only. Raises RejectError for input that
        can never run, ContainerError otherwise; either way nothing is left."""
        ...

    async def release_payloads(self, task_id: str) -> None:
        """Unmount and delete the task's secrets and configs (its container
        has stopped). Idempotent."""
        ...

    async def start(self, task_id: str) -> int:
        """Start the created container; returns its pid (in the host's pid
        namespace)."""
        ...

    async def wait(self, task_id: str) -> int:
        """Until the container exits; returns its exit code (128+N when
        killed by signal N)."""
        ...

    async def shutdown(self, task_id: str, signal: str, grace: float) -> None:
        """Send the stop signal; after `grace` seconds, SIGKILL. Returns once
        the container has exited. A container that already exited is fine."""
        ...

    async def remove(self, task_id: str) -> None:
        """Kill if needed and delete everything of the container: runc state,
        monitor, rootfs mount, network namespace, cgroups, bundle, log, exit
        file. Named volumes stay. Idempotent."""
        ...

    async def list(self) -> dict[str, ContainerState]:
        """The containers of THIS runtime (its runc root and state dir)."""
        ...

    async def exec(self, task_id: str, argv: Sequence[str],
                   timeout: float) -> int:
        """Run argv inside the running container (health checks) with the
        container's user, env and cwd; returns its exit code. Raises
        TimeoutError (after killing the process) when it runs past timeout."""
        ...
