"""Log handlers: a service's logs, from the leader's log broker (controller/logbroker.py).

Only the leader's broker serves logs (it holds the agents' log streams). A
follower relays the call to the leader itself, over the controllers' own
mutual TLS (its controller identity, which the leader's policy admits as
MANAGER), after its own interceptor checked the caller as for any call: so
no client ever has to find the leader. A relayed call is marked; a
controller that gets one while not leading (leadership just moved) refuses
it UNAVAILABLE rather than relaying it again, and the client retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from swarm.api.refs import resolve_ref
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import logs_pb2 as lpb

from .base import Handlers, service_name
from .errors import Context, InvalidArgument, Relayed, Unavailable

RELAYED_METADATA_KEY = "swarm-relayed-by"

Dial = Callable[[str], grpc.aio.Channel]
"""Opens a channel to another controller (HOST:PORT) with this one's identity."""


class Logs(Handlers):
    dial: Dial | None = None  # set by the controller; None: no relaying (tests of one controller)

    async def ServiceLogs(self, request: lpb.ServiceLogsRequest,
                          context: Context) -> AsyncIterator[lpb.ServiceLogsMessage]:
        service = resolve_ref(request.service, self._store.cache.services, service_name,
                              "service")
        options = request.options
        if options.HasField("tail") and options.tail < 0:
            raise InvalidArgument("options.tail: must not be negative (unset for all lines)")
        broker = self._logs
        if broker is not None and broker.leading:
            async with contextlib.aclosing(broker.subscribe(service, options)) as messages:
                async for message in messages:
                    yield message
            return
        relayed_by = dict(context.invocation_metadata() or ()).get(RELAYED_METADATA_KEY)
        leader = await self._leadership.confirmed_leader()
        if relayed_by or not leader or leader == self._leadership.identity or self.dial is None:
            raise Unavailable(f"logs are served by the leader, and the leader is "
                              f"{'unknown' if not leader else leader + ' (changing)'}; "
                              "try again shortly")
        async with contextlib.aclosing(self._relay(leader, request)) as messages:
            async for message in messages:
                yield message

    async def _relay(self, leader: str, request: lpb.ServiceLogsRequest
                     ) -> AsyncGenerator[lpb.ServiceLogsMessage, None]:
        assert self.dial is not None
        channel = self.dial(leader)
        try:
            call = cgrpc.ControlStub(channel).ServiceLogs(
                request, metadata=((RELAYED_METADATA_KEY, self._leadership.identity),))
            try:
                async for message in call:
                    yield message
            except grpc.aio.AioRpcError as error:
                raise Relayed(error.code(), error.details() or "") from None
            finally:
                call.cancel()
        finally:
            await channel.close(None)
