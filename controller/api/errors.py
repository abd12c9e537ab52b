"""The control API's refusals, and the one interceptor that makes them gRPC statuses.

Handlers validate and write; when they refuse, they raise. The exceptions
below (and the domain errors of the layers under the API: a ValidationError,
an AllocationError, an unresolvable reference, a refused log subscription) are
mapped to a status code in one place, `status_of`, and `ErrorInterceptor`
turns them into the call's status with the exception's one-line message, so
no handler aborts by hand. Anything else is a bug: it propagates, is logged
by gRPC and answered UNKNOWN.

| raised                                  | status              |
|-----------------------------------------|---------------------|
| NotFound, refs.NotFound / Ambiguous     | NOT_FOUND           |
| AlreadyExists                           | ALREADY_EXISTS      |
| InvalidArgument, ValidationError,       | INVALID_ARGUMENT    |
| AllocationError (bad input)             |                     |
| ChangedConcurrently (a lost race)       | ABORTED             |
| FailedPrecondition, NeedsIngress        | FAILED_PRECONDITION |
| Exhausted, AllocationError (exhausted)  | RESOURCE_EXHAUSTED  |
| Unavailable                             | UNAVAILABLE         |
| Unimplemented                           | UNIMPLEMENTED       |
| DataLoss (a sealed record does not open)| DATA_LOSS           |
| Unauthenticated, PermissionDenied (CA)  | UNAUTHENTICATED, PERMISSION_DENIED |
| Relayed (the leader's refusal)          | the leader's        |
| StoreFailed (store unavailable, full,   | store_status: UNAVAILABLE, |
| rejected)                               | RESOURCE_EXHAUSTED, INVALID_ARGUMENT |
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from swarm.api import refs
from swarm.api.channels import Adapter, HandlerInterceptor
from swarm.api.validation import ValidationError

from ..allocator.endpoint import NeedsIngress
from ..allocator.networks import AllocationError
from ..logbroker import SubscriptionRefused
from ..store import StoreError, store_status

Metadata = tuple[tuple[str, str], ...]


class ApiError(Exception):
    """A refusal: the one-line message the caller sees, its status code, and
    trailing metadata for the client (e.g. a retry hint)."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, trailing: Metadata = ()) -> None:
        super().__init__(message)
        self.trailing = trailing


class NotFound(ApiError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ChangedConcurrently(ApiError):
    """The object changed under the caller (or kept changing while retried)."""

    code = grpc.StatusCode.ABORTED


class FailedPrecondition(ApiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Exhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(ApiError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DataLoss(ApiError):
    """Stored data is unreadable (a sealed payload that does not open)."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(ApiError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ApiError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Relayed(ApiError):
    """The refusal of the controller a call was relayed to, passed on as it was."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class StoreFailed(Relayed):
    """The store could not do `what` (unavailable, full, or the request refused)."""

    def __init__(self, error: StoreError, what: str) -> None:
        super().__init__(*store_status(error, what))


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    message: str
    trailing: Metadata = ()


def status_of(error: BaseException) -> Status | None:
    """The status a refusal is answered with; None for anything that is not
    a refusal (a bug: left to propagate)."""
    match error:
        case ApiError():
            return Status(error.code, str(error), error.trailing)
        case ValidationError():
            return Status(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        case NeedsIngress():
            return Status(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        case AllocationError():
            return Status(grpc.StatusCode.RESOURCE_EXHAUSTED if error.exhausted
                          else grpc.StatusCode.INVALID_ARGUMENT, str(error))
        case refs.NotFound() | refs.Ambiguous():
            return Status(grpc.StatusCode.NOT_FOUND, str(error.args[0]))
        case SubscriptionRefused():
            return Status(error.code, str(error))
    return None


Context = grpc.aio.ServicerContext[Any, Any]


async def _answer(context: Context, error: Exception) -> None:
    status = status_of(error)
    if status is None:
        raise error
    if status.trailing:
        context.set_trailing_metadata(status.trailing)
    await context.abort(status.code, status.message)


def _mapping(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):
        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behaviour(request, context):
                    yield response
            except Exception as error:  # mapped, or re-raised
                await _answer(context, error)
        return streaming

    async def unary(request: Any, context: Context) -> Any:
        try:
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result
        except Exception as error:  # mapped, or re-raised
            await _answer(context, error)
    return unary


class ErrorInterceptor(HandlerInterceptor):
    """Answers every call that raised a refusal with its status (status_of)."""

    def adapter(self, method: str) -> Adapter:
        return _mapping
