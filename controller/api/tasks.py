"""Task handlers: read only (tasks are the orchestrator's to write)."""

from __future__ import annotations

from collections.abc import Iterable

from swarm.api.refs import resolve_ref
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .base import Handlers, with_prefix
from .errors import Context


class Tasks(Handlers):
    async def GetTask(self, request: cpb.GetRequest, context: Context) -> cpb.TaskResponse:
        self._fresh()
        task = resolve_ref(request.ref, self._store.cache.tasks, lambda t: t.id, "task")
        return cpb.TaskResponse(task=task)

    async def ListTasks(self, request: cpb.ListTasksRequest,
                        context: Context) -> cpb.ListTasksResponse:
        self._fresh()
        filters = request.filters
        cache = self._store.cache
        if filters.service_ids:
            candidates: Iterable[pb.Task] = [
                t for sid in filters.service_ids for t in cache.tasks_by_service.get(sid, {}).values()]
        elif filters.node_ids:
            candidates = [t for nid in filters.node_ids
                          for t in cache.tasks_by_node.get(nid, {}).values()]
        else:
            candidates = cache.tasks.values()
        tasks = with_prefix(candidates, lambda t: t.id, filters.id_prefixes)
        if filters.node_ids:
            node_ids = set(filters.node_ids)
            tasks = [t for t in tasks if t.node_id in node_ids]
        if filters.desired_states:
            states = set(filters.desired_states)
            tasks = [t for t in tasks if t.desired_state in states]
        if filters.slots:
            slots = set(filters.slots)
            tasks = [t for t in tasks if t.slot in slots]
        tasks.sort(key=lambda t: (t.service_name, t.slot, t.node_id,
                                  -t.meta.created_at.ToNanoseconds()))
        return cpb.ListTasksResponse(tasks=tasks)
