"""Controller handlers: the registered controllers (controller/registry.py)."""

from __future__ import annotations

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .base import Handlers
from .errors import Context


class Controllers(Handlers):
    async def ListControllers(self, request: cpb.ListControllersRequest,
                              context: Context) -> cpb.ListControllersResponse:
        """`leader` as etcd has it now."""
        leader = await self._leadership.confirmed_leader()
        found = []
        for addr, info in sorted(self._store.cache.controllers.items()):
            entry = pb.ControllerInfo()
            entry.CopyFrom(info)
            entry.leader = addr == leader
            found.append(entry)
        return cpb.ListControllersResponse(controllers=found)
