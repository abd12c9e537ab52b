"""The control API's side of registry credentials (`--with-registry-auth`):
check what a Create/UpdateServiceRequest brings, seal it for the service
(controller/pullauth.py), and keep the sealed blob out of every answer.

A request's credentials are refused (nothing is written) when:
- this controller runs --insecure (FAILED_PRECONDITION): it has no data key
  to seal them with, and they crossed the network in plaintext;
- they are malformed (INVALID_ARGUMENT, naming the field);
- they are for another registry than the image's (INVALID_ARGUMENT): a node
  would never use them.
"""

from __future__ import annotations

from swarm.api.imageref import InvalidReference, parse_reference
from swarm.api.registryauth import credential_problem
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .. import pullauth
from .base import DataKeySource
from .errors import FailedPrecondition, InvalidArgument

INSECURE_REFUSAL = (
    "registry_auth: this controller runs --insecure: it has no data key to seal registry "
    "credentials with, and they would cross the network in plaintext; run it with mutual "
    "TLS to use --with-registry-auth")


def problem(credential: pb.RegistryCredential, spec: pb.ServiceSpec) -> str | None:
    """Why the credentials cannot go with a service of `spec` (pure), or None."""
    why = credential_problem(credential.registry, credential.username, credential.password)
    if why is not None:
        return f"registry_auth: {why}"
    try:
        registry = parse_reference(spec.task.container.image).registry
    except InvalidReference:
        return None  # the spec's own validation names it
    if registry != credential.registry:
        return (f"registry_auth.registry: the credentials are for {credential.registry}, but "
                f"the image {spec.task.container.image!r} is pulled from {registry}")
    return None


def sealed_credentials(data_key: DataKeySource | None,
                       request: cpb.CreateServiceRequest | cpb.UpdateServiceRequest,
                       service_id: str, spec: pb.ServiceSpec) -> pb.RegistryAuth | None:
    """The request's credentials sealed for the service; None when it brings
    none. Raises the refusal (nothing is written then)."""
    if not request.HasField("registry_auth"):
        return None
    if data_key is None:
        raise FailedPrecondition(INSECURE_REFUSAL)
    why = problem(request.registry_auth, spec)
    if why is not None:
        raise InvalidArgument(why)
    return pullauth.seal(data_key(), service_id, request.registry_auth)


redacted = pullauth.redacted
