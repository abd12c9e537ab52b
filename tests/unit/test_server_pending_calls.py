"""A busy controller's server lets calls wait for its event loop instead of
cancelling them (swarm/api/channels.py, server_options): gRPC core cancels
the calls past 1,000 waiting by default, and at 2,000 nodes every such
cancel was an agent dropping its session. A real grpc.aio server made by
channels.new_server, its loop held while 1,500 calls arrive."""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import grpc

from swarm.api import channels


async def test_calls_waiting_for_a_busy_loop_are_answered_not_cancelled() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = channels.new_server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    outcomes: collections.Counter[str] = collections.Counter()
    try:
        def clients() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/test.Echo/Echo", None, None)
                futures = [call.future(b"x", timeout=60) for _ in range(1500)]
                for future in futures:
                    try:
                        future.result()
                        outcomes["OK"] += 1
                    except grpc.RpcError as error:
                        outcomes[error.code().name] += 1

        thread = threading.Thread(target=clients)
        thread.start()
        time.sleep(3.0)  # noqa: ASYNC251 - a busy loop is the point: the calls pile up
        await asyncio.to_thread(thread.join)
    finally:
        await server.stop(None)
    assert outcomes == {"OK": 1500}
