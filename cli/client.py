"""The connection to a controller: the one place where a channel is made.

`connect()` opens a mutual-TLS channel (swarm.api.channels) with the
operator's admin identity: node.crt, node.key and ca.crt in --tls-dir
(SWARMCTL_TLS_DIR), else the paths in the context of `swarmctl dev up`.
`--insecure` talks plaintext to an --insecure controller (development only).
Every command goes through `Controller.call`, which puts a deadline on each
RPC and turns gRPC failures into one-line errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc
import typer
from google.protobuf.message import Message

from swarm.api import channels
from swarm.api.certfiles import NodeCertificate
from swarm.api.metadata import RETRY_METADATA_KEY
from swarm.api.v1 import ca_pb2_grpc as cagrpc
from swarm.api.v1 import control_pb2_grpc as cgrpc

from .dev.context import read_context
from .errors import EXIT_FAILURE, CliError

DEFAULT_CONTROLLER = "127.0.0.1:2377"
DEFAULT_TIMEOUT = 10.0
CONTROLLER_ENV = "SWARMCTL_CONTROLLER"
TLS_DIR_ENV = "SWARMCTL_TLS_DIR"
INSECURE_ENV = "SWARMCTL_INSECURE"
_SETTINGS_KEY = "swarmctl.settings"

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Settings:
    """The global options: where the controller is, how long to wait for it."""

    controller: str = DEFAULT_CONTROLLER
    timeout: float = DEFAULT_TIMEOUT
    tls_dir: str = ""  # the admin identity; default: the context's
    insecure: bool = False


# Trailing metadata the controller adds to a refusal that resolves itself
# (control.proto: RemoveNetwork while tasks stop): retrying later succeeds.


class RpcFailure(CliError):
    """A failed RPC, reported in one line; keeps the status code (and whether the
    controller said a later retry succeeds) for callers that retry."""

    def __init__(self, message: str, code: grpc.StatusCode, retry: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.retry = retry  # the controller's swarm-retry hint, e.g. "endpoints"


def _retry_hint(error: grpc.RpcError) -> str:
    trailing = getattr(error, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    for key, value in metadata or ():
        if key == RETRY_METADATA_KEY and isinstance(value, str):
            return value
    return ""


def describe_rpc_error(error: grpc.RpcError, target: str, timeout: float) -> RpcFailure:
    """The one line an operator sees for a failed call."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (error.details() if callable(getattr(error, "details", None)) else None) or ""
    details = details.strip() or code.name.lower().replace("_", " ")
    if code == grpc.StatusCode.UNAVAILABLE and "handshake" in details.lower():
        message = (f"cannot reach controller at {target}: TLS handshake failed (is the admin "
                   f"certificate of this cluster, unexpired and not revoked?): {details}")
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach controller at {target}: {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"controller at {target} did not answer within {timeout:g}s"
    else:
        message = details
    return RpcFailure(message, code, _retry_hint(error))


@dataclass
class Controller:
    """A Control API client with a deadline on every call."""

    target: str
    stub: cgrpc.ControlStub
    timeout: float = DEFAULT_TIMEOUT
    channel: grpc.Channel | None = field(default=None, repr=False)

    def call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        """`ctl.call(ctl.stub.GetService, GetRequest(ref=...))`; raises RpcFailure."""
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise describe_rpc_error(error, self.target, self.timeout) from None

    @property
    def ca(self) -> cagrpc.CAAdminStub:
        """The CA administration API on the same channel."""
        assert self.channel is not None
        return cagrpc.CAAdminStub(self.channel)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def admin_identity(tls_dir: str = "") -> NodeCertificate:
    """The operator's identity: --tls-dir / SWARMCTL_TLS_DIR, else the context's.
    certfiles' NodeCertificate, not pki.NodeIdentity: it checks the key against
    the certificate with the ssl module, so no command imports cryptography
    (about 45 ms of every start-up) just to connect."""
    tls_dir = tls_dir or os.environ.get(TLS_DIR_ENV, "")
    try:
        if tls_dir:
            return NodeCertificate.load(Path(tls_dir))
        context = read_context()
        if context is not None and context.cert:
            return NodeCertificate(key_pem=Path(context.key).read_bytes(),
                                   cert_pem=Path(context.cert).read_bytes(),
                                   ca_pem=Path(context.ca).read_bytes())
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read the admin certificate: {error}") from None
    raise CliError("no admin certificate: pass --tls-dir DIR (node.crt, node.key, ca.crt, as "
                   "written by `swarm-controller --admin-out DIR`) or set SWARMCTL_TLS_DIR; "
                   "`swarmctl dev up` sets one in its context")


def controller_addrs(controller: str) -> list[str]:
    """--controller as addresses: HOST:PORT, or several comma-separated."""
    return [part.strip() for part in controller.split(",") if part.strip()]


def grpc_target(controller: str) -> str:
    """The gRPC target of --controller: several IPv4 HOST:PORT become one
    target whose first answering address is used (any controller serves)."""
    addrs = controller_addrs(controller)
    return addrs[0] if len(addrs) == 1 else "ipv4:" + ",".join(addrs)


def connect(target: str, *, timeout: float = DEFAULT_TIMEOUT, tls_dir: str = "",
            insecure: bool = False) -> Controller:
    """Open a mutual-TLS channel to the controller at HOST:PORT, or any of
    several comma-separated IPv4 ones (plaintext with insecure=True). Raises
    CliError without an admin identity."""
    insecure = insecure or os.environ.get(INSECURE_ENV, "") not in ("", "0")
    identity = None if insecure else admin_identity(tls_dir)
    channel = channels.blocking_client_channel(grpc_target(target), identity, insecure=insecure)
    return Controller(target=target, stub=cgrpc.ControlStub(channel), timeout=timeout,
                      channel=channel)


def store_settings(ctx: typer.Context, settings: Settings) -> None:
    ctx.meta[_SETTINGS_KEY] = settings


def settings_of(ctx: typer.Context) -> Settings:
    """The global options; the environment's defaults when the root callback did not run."""
    found = ctx.meta.get(_SETTINGS_KEY)
    if isinstance(found, Settings):
        return found
    return Settings(controller=default_controller(os.environ.get(CONTROLLER_ENV)))


def default_controller(given: str | None) -> str:
    """--controller or SWARMCTL_CONTROLLER, else the current context (written by
    `swarmctl dev up`), else 127.0.0.1:2377."""
    if given:
        return given
    context = read_context()
    return context.controller if context is not None else DEFAULT_CONTROLLER


def open_controller(ctx: typer.Context) -> Controller:
    """Connect as the global options say. Call only after all input has been parsed."""
    settings = settings_of(ctx)
    return connect(settings.controller, timeout=settings.timeout, tls_dir=settings.tls_dir,
                   insecure=settings.insecure)


T = TypeVar("T")
_FATAL = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def for_each(refs: Sequence[str], action: Callable[[str], T]) -> tuple[list[T], int]:
    """Run `action` on each ref, as docker does for `inspect a b`, `rm a b`: a refused
    one is reported on stderr and counted, the others go on. An unreachable controller
    stops everything."""
    results: list[T] = []
    failed = 0
    for ref in refs:
        try:
            results.append(action(ref))
        except RpcFailure as error:
            if error.code in _FATAL:
                raise
            error.show()
            failed += 1
    return results, failed


def fail_if(failed: int) -> None:
    """Exit 1 after partial output when some refs failed."""
    if failed:
        raise typer.Exit(EXIT_FAILURE)
