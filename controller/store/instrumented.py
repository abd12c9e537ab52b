"""etcd requests measured (metrics on): a stand-in for the client's KV and Lease
stubs that times each unary call by method, counts failures, and counts the
transactions whose compare failed (a lost optimistic-concurrency race: the
writer reads again and retries, so many of them mean contention).
Streaming calls (watch, lease keep-alive) pass through untouched."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from swarm.api.telemetry import Telemetry

_UNARY = frozenset({"Range", "Txn", "Put", "DeleteRange", "Compact",
                    "LeaseGrant", "LeaseRevoke", "LeaseTimeToLive"})


class TimedStub:
    def __init__(self, stub: Any, telemetry: Telemetry) -> None:
        self._stub = stub
        self._telemetry = telemetry

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if name not in _UNARY:
            return method
        return _timed(method, name, self._telemetry)


def _timed(method: Callable[..., Any], name: str, telemetry: Telemetry) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            response = await method(*args, **kwargs)
        except BaseException:
            telemetry.inc("swarm_etcd_request_errors_total", name)
            raise
        finally:
            telemetry.observe("swarm_etcd_request_seconds", time.perf_counter() - started, name)
        if name == "Txn" and not response.succeeded:
            telemetry.inc("swarm_etcd_conflicts_total")
        return response

    return call
