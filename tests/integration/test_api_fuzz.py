"""Property: no request body crashes the controller or leaves partial state.

Arbitrary (well-framed) wire bytes for CreateService, UpdateService and
CreateNetwork go through the real controller over mutual TLS. Each call is
either accepted or refused with INVALID_ARGUMENT / ALREADY_EXISTS /
NOT_FOUND / ABORTED / RESOURCE_EXHAUSTED -- never UNKNOWN or INTERNAL (a
crash in a handler) -- and a refused call changes nothing in etcd. The
controller answers a well-formed request afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.api import channels
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.controller.server import Controller
from tests.integration.live import LiveCluster
from tests.unit.test_validation import _wire

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ABORTED,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}

METHODS: dict[str, tuple[Any, Callable[[cgrpc.ControlStub], Any]]] = {
    "CreateService": (cpb.CreateServiceRequest, lambda stub: stub.CreateService),
    "UpdateService": (cpb.UpdateServiceRequest, lambda stub: stub.UpdateService),
    "CreateNetwork": (cpb.CreateNetworkRequest, lambda stub: stub.CreateNetwork),
}


def _stub(controller: Controller) -> tuple[grpc.Channel, cgrpc.ControlStub]:
    channel = channels.blocking_client_channel(f"127.0.0.1:{controller.port}",
                                               controller.pki.admin_identity())
    return channel, cgrpc.ControlStub(channel)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(METHODS)))
    message = METHODS[method][0]
    return method, draw(_wire(message.DESCRIPTOR))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
def test_no_request_crashes_the_controller_or_writes_half(live: LiveCluster,
                                                          request: tuple[str, bytes]) -> None:
    method, body = request
    message_type, call = METHODS[method]
    message = message_type()
    try:
        message.ParseFromString(body)
    except Exception:  # not decodable here either: gRPC would refuse it before any handler
        return
    channel, stub = _stub(live.controller)
    try:
        before = live.snapshot()
        refusal: grpc.RpcError | None = None
        try:
            call(stub)(message, timeout=10)
        except grpc.RpcError as error:
            refusal = error
        if refusal is not None:
            code, details = refusal.code(), refusal.details()
            assert code in REFUSALS, f"{method}: {code} {details}"
            assert live.snapshot() == before, f"refused {method} wrote to etcd"
        # Still serving.
        stub.ListServices(cpb.ListServicesRequest(), timeout=10)
    finally:
        channel.close()
