"""The control API's configs: as secrets (controller/api/secrets.py), sealed
the same way, except that GetConfig may return the data (with_data), as
`docker config inspect --pretty` shows it: a config is meant to be read by
operators; a secret never leaves the controllers but for the nodes that run
a task using it."""

from __future__ import annotations

from swarm.api import pki
from swarm.api.refs import resolve_ref
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .base import select
from .errors import Context, DataLoss
from .secrets import Payloads, payload_name, seal_context, without_data


class Configs(Payloads):
    """CreateConfig, GetConfig, ListConfigs, RemoveConfig."""

    async def CreateConfig(self, request: cpb.CreateConfigRequest,
                           context: Context) -> cpb.ConfigResponse:
        config = await self._create_payload("config", request.spec, request.data)
        assert isinstance(config, pb.Config)
        return cpb.ConfigResponse(config=without_data(config))

    async def GetConfig(self, request: cpb.GetConfigRequest,
                        context: Context) -> cpb.ConfigResponse:
        self._fresh()
        config = resolve_ref(request.ref, self._store.cache.configs, payload_name, "config")
        response = cpb.ConfigResponse(config=without_data(config))
        if request.with_data:
            key = self._data_key("config")
            try:
                response.data = key.open(config.sealed_data,
                                         context=seal_context("config", config.id))
            except pki.SealedDataError as error:
                raise DataLoss(str(error)) from error
        return response

    async def ListConfigs(self, request: cpb.ListConfigsRequest,
                          context: Context) -> cpb.ListConfigsResponse:
        self._fresh()
        filters = request.filters
        configs = select(self._store.cache.configs.values(), filters, lambda c: c.id,
                         payload_name, lambda c: c.spec.labels, filters.labels)
        configs.sort(key=payload_name)
        return cpb.ListConfigsResponse(configs=[without_data(c) for c in configs])

    async def RemoveConfig(self, request: cpb.RemoveRequest,
                           context: Context) -> cpb.RemoveResponse:
        return await self._remove_payload("config", request.ref)
