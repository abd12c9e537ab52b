"""Log handlers: a service's logs, from the leader's log broker (controller/logbroker.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from swarm.api.metadata import LEADER_METADATA_KEY
from swarm.api.refs import resolve_ref
from swarm.api.v1 import logs_pb2 as lpb

from .base import Context, Handlers, service_name
from .errors import FailedPrecondition, InvalidArgument


class Logs(Handlers):
    async def ServiceLogs(self, request: lpb.ServiceLogsRequest,
                          context: Context) -> AsyncIterator[lpb.ServiceLogsMessage]:
        """A follower does not proxy: it names the leader, as the dispatcher does."""
        service = resolve_ref(request.service, self._store.cache.services, service_name,
                              "service")
        options = request.options
        if options.HasField("tail") and options.tail < 0:
            raise InvalidArgument("options.tail: must not be negative (unset for all lines)")
        broker = self._logs
        if broker is None or not broker.leading:
            leader = await self._leadership.confirmed_leader()
            raise FailedPrecondition(
                f"logs are served by the leader; the leader is {leader or 'unknown'}",
                trailing=((LEADER_METADATA_KEY, leader),))
        async with contextlib.aclosing(broker.subscribe(service, options)) as messages:
            async for message in messages:
                yield message
