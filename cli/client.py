"""The connection to a controller: the one place where a channel is made.

`connect()` is where transport security slots in (mutual TLS later); every
command goes through it and through `Controller.call`, which puts a deadline
on each RPC and turns gRPC failures into one-line errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import grpc
import typer
from google.protobuf.message import Message

from swarmapi.v1 import control_pb2_grpc as cgrpc

from .dev.context import read_context
from .errors import EXIT_FAILURE, CliError

DEFAULT_CONTROLLER = "127.0.0.1:2377"
DEFAULT_TIMEOUT = 10.0
CONTROLLER_ENV = "SWARMCTL_CONTROLLER"
_SETTINGS_KEY = "swarmctl.settings"

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Settings:
    """The global options: where the controller is, how long to wait for it."""

    controller: str = DEFAULT_CONTROLLER
    timeout: float = DEFAULT_TIMEOUT


class RpcFailure(CliError):
    """A failed RPC, reported in one line; keeps the status code for callers that retry."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


def describe_rpc_error(error: grpc.RpcError, target: str, timeout: float) -> RpcFailure:
    """The one line an operator sees for a failed call."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (error.details() if callable(getattr(error, "details", None)) else None) or ""
    details = details.strip() or code.name.lower().replace("_", " ")
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach controller at {target}: {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"controller at {target} did not answer within {timeout:g}s"
    else:
        message = details
    return RpcFailure(message, code)


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

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect(target: str, *, timeout: float = DEFAULT_TIMEOUT) -> Controller:
    """Open a channel to the controller at HOST:PORT. Transport security goes here."""
    channel = grpc.insecure_channel(target)
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
    return connect(settings.controller, timeout=settings.timeout)


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


CONFLICT_RETRIES = 3


def retry_on_conflict(action: Callable[[], T], retries: int = CONFLICT_RETRIES) -> T:
    """Run a read-modify-write `action`; when the write lost a race (ABORTED: the object
    changed since it was read) run it again, reading afresh, up to `retries` times."""
    for _ in range(retries):
        try:
            return action()
        except RpcFailure as error:
            if error.code != grpc.StatusCode.ABORTED:
                raise
    return action()
