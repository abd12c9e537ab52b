"""Registry credentials of services: sealed at rest, opened only for the node
that is about to pull.

`swarmctl --with-registry-auth` sends the operator's credentials for the
image's registry with the service (control API, controller/api/registry_auth.py);
they are kept on the Service object (not its spec) as a RegistryAuth: the
serialized RegistryCredential sealed with the cluster data key
(swarm.api.pki.DataKey, under the KEK, beside the CA key) and bound to the
context "registry-auth/<service id>", so a blob copied to another service does
not open there. etcd never holds them in plaintext.

The dispatcher adds them to a node's assignment message for each task of that
message that has yet to pull (desired to run, not running yet) and whose
image is from the registry the credentials are for: a node running no task
of the service, or only tasks already started, never receives them (the way
SwarmKit's dispatcher sends a service's pull options with the task only).
Opened credentials are cached per sealed blob, in memory, on the leader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from swarm.api import pki
from swarm.api.imageref import InvalidReference, parse_reference
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)


def context_of(service_id: str) -> str:
    """The authenticated context a service's credentials are sealed under."""
    return f"registry-auth/{service_id}"


def seal(data_key: pki.DataKey, service_id: str, credential: pb.RegistryCredential
         ) -> pb.RegistryAuth:
    auth = pb.RegistryAuth(registry=credential.registry, sealed=data_key.seal(
        credential.SerializeToString(deterministic=True), context=context_of(service_id)))
    auth.updated_at.GetCurrentTime()
    return auth


def open_sealed(data_key: pki.DataKey, service_id: str, auth: pb.RegistryAuth
                ) -> pb.RegistryCredential:
    """Raises pki.SealedDataError when it does not open (altered, moved, or
    sealed by another cluster)."""
    return pb.RegistryCredential.FromString(
        data_key.open(auth.sealed, context=context_of(service_id)))


def redacted(service: pb.Service) -> pb.Service:
    """What the control API answers: the service without the sealed blob
    (registry and time stay, so inspect can say credentials were sent)."""
    if not service.registry_auth.sealed:
        return service
    copy = pb.Service()
    copy.CopyFrom(service)
    copy.registry_auth.ClearField("sealed")
    return copy


def needs_pull(task: pb.Task) -> bool:
    """Whether the task may still pull its image on its node."""
    return task.desired_state <= pb.RUNNING and task.status.state < pb.RUNNING


def image_registry(task: pb.Task) -> str | None:
    try:
        return parse_reference(task.spec.container.image).registry
    except InvalidReference:
        return None


class PullCredentials:
    """Opens services' credentials for the dispatcher (see the module's
    docstring). data_key: the cluster's, or None (an --insecure controller
    has none: it sends none)."""

    def __init__(self, services: Mapping[str, pb.Service],
                 data_key: Callable[[], pki.DataKey | None]) -> None:
        self._services = services
        self._data_key = data_key
        self._opened: dict[str, tuple[bytes, pb.RegistryCredential | None]] = {}

    def _credential(self, service: pb.Service) -> pb.RegistryCredential | None:
        sealed = service.registry_auth.sealed
        cached = self._opened.get(service.id)
        if cached is not None and cached[0] == sealed:
            return cached[1]
        key = self._data_key()
        if key is None:
            return None
        credential: pb.RegistryCredential | None
        try:
            credential = open_sealed(key, service.id, service.registry_auth)
        except pki.SealedDataError as error:
            log.warning("service %s: its registry credentials are not sent: %s",
                        service.spec.name, error)
            credential = None
        if len(self._opened) > 4096:  # services come and go: keep it bounded
            self._opened.clear()
        self._opened[service.id] = (sealed, credential)
        return credential

    def for_tasks(self, tasks: Iterable[pb.Task]) -> list[dpb.TaskPullCredential]:
        found = []
        for task in tasks:
            if not needs_pull(task):
                continue
            service = self._services.get(task.service_id)
            if service is None or not service.registry_auth.sealed:
                continue
            if image_registry(task) != service.registry_auth.registry:
                continue  # the image moved to another registry: not theirs
            credential = self._credential(service)
            if credential is not None:
                found.append(dpb.TaskPullCredential(task_id=task.id, credential=credential))
        return found


def for_tasks(source: PullCredentials | None, tasks: Iterable[pb.Task]
              ) -> list[dpb.TaskPullCredential]:
    """The dispatcher's one call: the credentials of `tasks` (none without a source)."""
    return [] if source is None else source.for_tasks(tasks)
