"""The control API's configs: as secrets (controller/api/secrets.py), sealed
the same way, except that GetConfig may return the data (with_data), as
`docker config inspect --pretty` shows it: a config is meant to be read by
operators; a secret never leaves the controllers but for the nodes that run
a task using it."""

from __future__ import annotations

import grpc

from swarm.api import pki
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .secrets import Context, PayloadHandlers, abort, filtered, seal_context, without_data


class ConfigHandlers(PayloadHandlers):
    """CreateConfig, GetConfig, ListConfigs, RemoveConfig."""

    async def CreateConfig(self, request: cpb.CreateConfigRequest,
                           context: Context) -> cpb.ConfigResponse:
        config = await self._create_payload("config", request.spec, request.data,
                                            self._store.cache.configs, context)
        assert isinstance(config, pb.Config)
        return cpb.ConfigResponse(config=without_data(config))

    async def GetConfig(self, request: cpb.GetConfigRequest,
                        context: Context) -> cpb.ConfigResponse:
        config = await self._resolve_payload("config", request.ref, self._store.cache.configs,
                                             context)
        response = cpb.ConfigResponse(config=without_data(config))
        if request.with_data:
            key = await self._data_key("config", context)
            try:
                response.data = key.open(config.sealed_data,
                                         context=seal_context("config", config.id))
            except pki.SealedDataError as error:
                await abort(context, grpc.StatusCode.DATA_LOSS, str(error))
        return response

    async def ListConfigs(self, request: cpb.ListConfigsRequest,
                          context: Context) -> cpb.ListConfigsResponse:
        filters = request.filters
        return cpb.ListConfigsResponse(configs=filtered(
            self._store.cache.configs, list(filters.names), list(filters.id_prefixes),
            filters.labels))

    async def RemoveConfig(self, request: cpb.RemoveRequest,
                           context: Context) -> cpb.RemoveResponse:
        return await self._remove_payload("config", request.ref, self._store.cache.configs,
                                          context)
