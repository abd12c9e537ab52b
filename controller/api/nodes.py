"""Node handlers: read, update (availability, role, labels), remove.

A node's status changes all the time (the dispatcher's writes); an update
given the version it read is refused only when the node's spec changed since.
A removed node's certificates are revoked, and its own addresses (ingress)
released, in the same transaction.
"""

from __future__ import annotations

from swarm.api.refs import resolve_ref
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import normalize_node_spec

from ..allocator.claims import release_node
from ..ca import revoke_node_ops
from ..store import Delete, Planned, Update
from .base import Handlers, copy, hostname, select
from .errors import ChangedConcurrently, Context, FailedPrecondition, NotFound


class Nodes(Handlers):
    async def GetNode(self, request: cpb.GetRequest, context: Context) -> cpb.NodeResponse:
        self._fresh()
        node = resolve_ref(request.ref, self._store.cache.nodes, hostname, "node")
        return cpb.NodeResponse(node=node)

    async def ListNodes(self, request: cpb.ListNodesRequest,
                        context: Context) -> cpb.ListNodesResponse:
        self._fresh()
        filters = request.filters
        nodes = select(self._store.cache.nodes.values(), filters, lambda n: n.id, hostname,
                       lambda n: n.spec.labels, filters.labels)
        if filters.roles:
            nodes = [n for n in nodes if n.spec.role in set(filters.roles)]
        nodes.sort(key=lambda n: (n.description.hostname, n.id))
        return cpb.ListNodesResponse(nodes=nodes)

    async def UpdateNode(self, request: cpb.UpdateNodeRequest,
                         context: Context) -> cpb.NodeResponse:
        nodes = self._store.cache.nodes
        if request.node_id not in nodes:
            raise NotFound(f"node {request.node_id!r} not found")
        spec = normalize_node_spec(request.spec)

        async def step() -> Planned[pb.Node]:
            current = nodes.get(request.node_id)
            if current is None:
                raise NotFound(f"node {request.node_id!r} not found")
            if not await self._spec_unchanged_since(current, request.version):
                raise ChangedConcurrently(f"node {current.description.hostname!r} changed "
                                          "since it was read; read it again")
            node = copy(current)
            node.spec.CopyFrom(spec)
            return Planned([Update(node)], node)

        node = await self._write(f"update node {request.node_id}", step)
        return cpb.NodeResponse(node=node)

    async def RemoveNode(self, request: cpb.RemoveNodeRequest,
                         context: Context) -> cpb.RemoveResponse:
        nodes = self._store.cache.nodes
        found = resolve_ref(request.ref, nodes, hostname, "node")

        def step() -> Planned[pb.Node]:
            node = nodes.get(found.id)
            if node is None:
                raise NotFound(f"node {request.ref!r} not found")
            if node.status.state == pb.NodeStatus.READY and not request.force:
                raise FailedPrecondition(f"node {node.description.hostname or node.id} is not "
                                         "down and can't be removed; drain it first or use "
                                         "--force")
            return Planned([Delete("nodes", node.id, node.meta.version),
                            *revoke_node_ops(self._store, node.id),
                            *release_node(self._store.keys, node)], node)

        node = await self._write(f"remove node {found.id}", step)
        return cpb.RemoveResponse(id=node.id)
