"""Cluster handlers: the cluster object, as clients may see it."""

from __future__ import annotations

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .base import Handlers
from .errors import Context, NotFound


class Cluster(Handlers):
    async def GetCluster(self, request: cpb.GetClusterRequest,
                         context: Context) -> cpb.ClusterResponse:
        self._fresh()
        clusters = list(self._store.cache.clusters.values())
        if not clusters:
            raise NotFound("the cluster is not initialised")
        cluster = pb.Cluster()
        cluster.CopyFrom(clusters[0])
        if cluster.HasField("ca"):
            cluster.ca.ClearField("encrypted_ca_key")  # sealed, but no client needs it
        return cpb.ClusterResponse(cluster=cluster, leader_addr=self._leadership.leader_addr)
