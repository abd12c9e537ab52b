"""The control API's one mapping from refusals to gRPC statuses, and the
store's retry backoff: pure functions."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.api import refs
from swarm.api.validation import ValidationError
from swarm.controller.allocator.endpoint import NeedsIngress
from swarm.controller.allocator.networks import AllocationError
from swarm.controller.api import errors
from swarm.controller.logbroker import SubscriptionRefused
from swarm.controller.store import StoreFull, StoreRejected, StoreUnavailable
from swarm.controller.store.store import RMW_BACKOFF_MAX, backoff_delay

Code = grpc.StatusCode


@pytest.mark.parametrize(("error", "code", "message"), [
    (errors.NotFound("service 'x' not found"), Code.NOT_FOUND, "service 'x' not found"),
    (errors.AlreadyExists("spec.name: taken"), Code.ALREADY_EXISTS, "spec.name: taken"),
    (errors.ChangedConcurrently("read it again"), Code.ABORTED, "read it again"),
    (errors.FailedPrecondition("in use"), Code.FAILED_PRECONDITION, "in use"),
    (errors.Unavailable("stale"), Code.UNAVAILABLE, "stale"),
    (errors.DataLoss("config 'c' does not open"), Code.DATA_LOSS, "config 'c' does not open"),
    (ValidationError("spec.name", "must not be empty"), Code.INVALID_ARGUMENT,
     "spec.name: must not be empty"),
    (AllocationError("spec.x", "bad"), Code.INVALID_ARGUMENT, "spec.x: bad"),
    (AllocationError("spec.x", "full", exhausted=True), Code.RESOURCE_EXHAUSTED, "spec.x: full"),
    (NeedsIngress("spec.endpoint.ports[0]", "no ingress"), Code.FAILED_PRECONDITION,
     "spec.endpoint.ports[0]: no ingress"),
    (refs.NotFound("node 'n' not found"), Code.NOT_FOUND, "node 'n' not found"),
    (refs.Ambiguous("ambiguous reference 'a'"), Code.NOT_FOUND, "ambiguous reference 'a'"),
    (SubscriptionRefused(Code.RESOURCE_EXHAUSTED, "too many"), Code.RESOURCE_EXHAUSTED,
     "too many"),
    (errors.Relayed(Code.PERMISSION_DENIED, "no"), Code.PERMISSION_DENIED, "no"),
])
def test_every_refusal_has_one_status_and_keeps_its_message(
        error: Exception, code: grpc.StatusCode, message: str) -> None:
    assert errors.status_of(error) == errors.Status(code, message)


def test_store_failures_say_what_could_not_be_done() -> None:
    full = errors.status_of(errors.StoreFailed(StoreFull("etcd is full"), "scale"))
    assert full is not None
    assert (full.code, full.message) == (Code.RESOURCE_EXHAUSTED, "cannot scale: etcd is full")
    rejected = errors.status_of(errors.StoreFailed(StoreRejected("too large"), "scale"))
    assert rejected is not None
    assert rejected.code == Code.INVALID_ARGUMENT
    down = errors.status_of(errors.StoreFailed(StoreUnavailable("gone"), "scale"))
    assert down is not None
    assert down.code == Code.UNAVAILABLE
    assert down.message.startswith("cannot scale: the store is unavailable")


def test_trailing_metadata_goes_with_the_refusal_and_bugs_are_not_refusals() -> None:
    hinted = errors.FailedPrecondition("stopping", trailing=(("swarm-retry", "endpoints"),))
    assert errors.status_of(hinted) == errors.Status(Code.FAILED_PRECONDITION, "stopping",
                                                     (("swarm-retry", "endpoints"),))
    assert errors.status_of(KeyError("a bug")) is None
    assert errors.status_of(RuntimeError("a bug")) is None


@given(st.integers(min_value=0, max_value=60))
def test_the_backoff_grows_and_stays_bounded(attempt: int) -> None:
    delay = backoff_delay(attempt)
    assert 0 < delay < RMW_BACKOFF_MAX * 1.5
    assert backoff_delay(attempt, base=0.01, cap=0.01) < 0.015
