"""Registry credentials through the control plane, against a real etcd and a
real (mutual-TLS) controller with simulated nodes: sealed at rest, never in
an answer, given only to the node about to pull the service's task, refused
with one line (and nothing written) when malformed, for another registry, or
on an --insecure controller."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import grpc
import pytest

from swarm.agent.simulated import SimulatedCluster
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.api.registry_auth import INSECURE_REFUSAL
from swarm.controller.server import Controller
from tests.etcd_server import EtcdServer
from tests.integration.conftest import controller_config
from tests.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration

IMAGE = "127.0.0.1:5999/team/app:1"
PASSWORD = "pa55-w0rd-never-stored"
CREDENTIAL = pb.RegistryCredential(registry="127.0.0.1:5999", username="deployer",
                                   password=PASSWORD)


def spec(name: str, replicas: int = 1, image: str = IMAGE) -> pb.ServiceSpec:
    made = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    made.task.container.image = image
    return made


def forbidden_bytes(password: str) -> list[bytes]:
    """The password as it could appear: plain, or in basic auth's base64."""
    return [password.encode(),
            base64.b64encode(f"{CREDENTIAL.username}:{password}".encode())]


async def etcd_values(controller: Controller, prefix: str) -> dict[bytes, bytes]:
    _, kvs = await controller.etcd.range_prefix(prefix.encode())
    return {kv.key: kv.value for kv in kvs}


async def snapshot(controller: Controller, prefix: str) -> dict[bytes, int]:
    """The keys a service write makes (the service, its name), with their
    revisions. Tasks are left out: the orchestrator works on them meanwhile."""
    _, kvs = await controller.etcd.range_prefix(prefix.encode())
    kinds = (prefix + "services/").encode(), (prefix + "names/").encode()
    return {kv.key: kv.mod_revision for kv in kvs if kv.key.startswith(kinds)}


def given_to(nodes: SimulatedCluster) -> dict[str, dict[str, pb.RegistryCredential]]:
    """hostname -> the credentials its assignments brought, by task."""
    return {node.session.description.hostname: dict(node.worker.pull_credentials)
            for node in nodes.nodes}


async def running_tasks(control: cgrpc.ControlAsyncStub, service_id: str) -> list[pb.Task]:
    request = cpb.ListTasksRequest(filters=cpb.ListTasksRequest.Filters(
        service_ids=[service_id]))
    return [t for t in (await control.ListTasks(request)).tasks
            if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING]


async def test_credentials_are_sealed_and_go_only_to_the_pulling_node(
        controller: Controller, control: cgrpc.ControlAsyncStub, sim_nodes: SimulatedCluster,
        etcd_prefix: str) -> None:
    created = (await control.CreateService(cpb.CreateServiceRequest(
        spec=spec("web"), registry_auth=CREDENTIAL))).service
    # The answer says which registry, never the sealed blob (nor the plaintext).
    assert created.registry_auth.registry == "127.0.0.1:5999"
    assert not created.registry_auth.sealed
    tasks: list[pb.Task] = []

    async def one_running() -> bool:
        nonlocal tasks
        tasks = await running_tasks(control, created.id)
        return len(tasks) == 1

    await eventually_async(one_running, 15, "the task running")
    (task,) = tasks
    received = given_to(sim_nodes)
    holders = {host for host, creds in received.items() if creds}
    node_names = {n.id: n.description.hostname
                  for n in (await control.ListNodes(cpb.ListNodesRequest())).nodes}
    assert holders == {node_names[task.node_id]}, received
    assert received[node_names[task.node_id]] == {task.id: CREDENTIAL}

    # At rest: sealed. No key of the cluster holds the password, plain or encoded.
    values = await etcd_values(controller, etcd_prefix)
    for value in values.values():
        for forbidden in forbidden_bytes(PASSWORD):
            assert forbidden not in value
    stored = pb.Service.FromString(values[f"{etcd_prefix}services/{created.id}".encode()])
    assert stored.registry_auth.sealed
    assert not stored.spec.task.container.HasField("healthcheck")  # nothing leaked into spec
    for shown in [(await control.GetService(cpb.GetRequest(ref="web"))).service,
                  *(await control.ListServices(cpb.ListServicesRequest())).services]:
        assert shown.registry_auth.registry == "127.0.0.1:5999"
        assert not shown.registry_auth.sealed

    # New credentials roll nothing; tasks placed later get them.
    rotated = pb.RegistryCredential(registry="127.0.0.1:5999", username="deployer",
                                    password="rotated-" + PASSWORD)
    current = (await control.GetService(cpb.GetRequest(ref="web"))).service
    updated = (await control.UpdateService(cpb.UpdateServiceRequest(
        service_id=current.id, version=current.meta.version, spec=current.spec,
        registry_auth=rotated))).service
    assert updated.spec_version == current.spec_version
    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=3))
    await eventually(lambda: sum(len(c) for c in given_to(sim_nodes).values()) == 3, 15,
                     "the new tasks' credentials")
    later = {tid: c for creds in given_to(sim_nodes).values() for tid, c in creds.items()
             if tid != task.id}
    assert list(later.values()) == [rotated, rotated]
    values = await etcd_values(controller, etcd_prefix)
    assert not any(f in v for v in values.values() for f in forbidden_bytes(rotated.password))


@pytest.mark.parametrize(("credential", "image", "code", "message"), [
    (pb.RegistryCredential(registry="docker.io", username="u", password="p"), IMAGE,
     grpc.StatusCode.INVALID_ARGUMENT,
     "registry_auth.registry: the credentials are for docker.io, but the image "
     f"'{IMAGE}' is pulled from 127.0.0.1:5999"),
    (pb.RegistryCredential(registry="127.0.0.1:5999", username="u", password=""), IMAGE,
     grpc.StatusCode.INVALID_ARGUMENT, "registry_auth: the password is empty"),
])
async def test_bad_credentials_are_refused_and_nothing_is_written(
        controller: Controller, control: cgrpc.ControlAsyncStub, etcd_prefix: str,
        credential: pb.RegistryCredential, image: str, code: grpc.StatusCode,
        message: str) -> None:
    before = await snapshot(controller, etcd_prefix)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await control.CreateService(cpb.CreateServiceRequest(
            spec=spec("web", image=image), registry_auth=credential))
    assert caught.value.code() == code
    assert caught.value.details() == message
    assert await snapshot(controller, etcd_prefix) == before
    # An update of an existing service is refused the same way, and writes nothing.
    existing = (await control.CreateService(cpb.CreateServiceRequest(
        spec=spec("db", image=image)))).service
    before = await snapshot(controller, etcd_prefix)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await control.UpdateService(cpb.UpdateServiceRequest(
            service_id=existing.id, version=existing.meta.version, spec=existing.spec,
            registry_auth=credential))
    assert caught.value.details() == message
    assert await snapshot(controller, etcd_prefix) == before


@pytest.fixture
async def insecure_controller(etcd_server: EtcdServer, etcd_prefix: str
                              ) -> AsyncIterator[Controller]:
    instance = Controller(controller_config(etcd_server.endpoint, etcd_prefix, insecure=True))
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


async def test_an_insecure_controller_refuses_credentials(insecure_controller: Controller,
                                                          etcd_prefix: str) -> None:
    before = await snapshot(insecure_controller, etcd_prefix)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{insecure_controller.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cgrpc.ControlStub(channel).CreateService(cpb.CreateServiceRequest(
                spec=spec("web"), registry_auth=CREDENTIAL))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == INSECURE_REFUSAL
    assert await snapshot(insecure_controller, etcd_prefix) == before
