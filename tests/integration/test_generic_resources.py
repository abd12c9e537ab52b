"""Generic resources against a live control plane (real etcd, the real
controller, simulated nodes speaking the real dispatcher API): services
reserving a GPU land only on the node that advertises GPUs, each task gets its
own unit (stored on the task), a task that fits nowhere waits with the reason
("3 nodes lack gpu") and gets the unit freed when its holder goes; bad
reservations are refused by name with etcd unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from swarm.api import generic_resources as gres
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli import client
from swarm.cli.client import RpcFailure
from swarm.controller.server import Controller
from tests.etcd_server import EtcdServer
from tests.integration.conftest import (
    FAST_SESSION,
    admin_channel,
    controller_config,
    sim_cluster,
)
from tests.integration.live import BROKEN_IMAGE, LiveCluster, assert_one_line_error, ok, swarmctl
from tests.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration

GPU_HOST = "sim-0001"


@pytest.fixture
def gpu_live(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveCluster]:
    """The `live` cluster, its second node advertising two GPUs."""
    cluster = LiveCluster(etcd_server, etcd_prefix, reject_images={BROKEN_IMAGE},
                          generic={1: gres.merge(["gpu=nvidia0,nvidia1"])})
    cluster.controller.pki.admin_identity().save(tmp_path / "admin")
    monkeypatch.setenv("SWARMCTL_TLS_DIR", str(tmp_path / "admin"))
    try:
        yield cluster
    finally:
        cluster.close()


def gpu_spec(name: str, *reservations: str, replicas: int = 1) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    spec.task.container.image = "busybox"
    spec.task.resources.reservations.generic.extend(gres.merge(reservations, reservation=True))
    return spec


def units(task: pb.Task) -> list[str]:
    return [r.named_resource_spec.value for r in task.assigned_generic_resources]


def test_gpu_tasks_land_on_the_gpu_node_with_their_own_units(gpu_live: LiveCluster) -> None:
    live = gpu_live
    gpu_node = live.node_ids()[GPU_HOST]
    with client.connect(live.addr) as ctl:
        ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(spec=gpu_spec("train", "gpu=1",
                                                                                 replicas=2)))
        live.eventually(lambda: len(live.running("train")) == 2, message="train running")
        running = live.running("train")
        assert {t.node_id for t in running} == {gpu_node}
        assert sorted(u for t in running for u in units(t)) == ["nvidia0", "nvidia1"]

        ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(spec=gpu_spec("infer",
                                                                                 "gpu=1")))

        def waiting_reason() -> str:
            tasks = live.tasks("infer")
            return tasks[0].status.message if len(tasks) == 1 and \
                tasks[0].status.state == pb.PENDING else ""

        live.eventually(lambda: waiting_reason() == "no suitable node (3 nodes lack gpu)",
                        message="infer waiting for a gpu")
        # The holder goes: its unit goes to the waiting task, and to no one else.
        ctl.call(ctl.stub.RemoveService, cpb.RemoveRequest(ref="train"))
        live.eventually(lambda: len(live.running("infer")) == 1, timeout=20,
                        message="infer running")
        (task,) = live.running("infer")
        assert task.node_id == gpu_node
        assert len(units(task)) == 1


def test_particular_units_and_counts_of_other_kinds(gpu_live: LiveCluster) -> None:
    live = gpu_live
    with client.connect(live.addr) as ctl:
        ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(
            spec=gpu_spec("pinned", "gpu=nvidia1")))
        live.eventually(lambda: len(live.running("pinned")) == 1, message="pinned running")
        assert units(live.running("pinned")[0]) == ["nvidia1"]
        ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(spec=gpu_spec("fpga",
                                                                                 "fpga=1")))
        live.eventually(lambda: [t.status.message for t in live.tasks("fpga")]
                        == ["no suitable node (3 nodes lack fpga)"], message="fpga waiting")


BAD_RESERVATIONS = [
    ([gres.discrete("gpu", -1)],
     "spec.task.resources.reservations.generic[0]: gpu: invalid count -1: must be at least 1"),
    ([gres.discrete("g pu", 1)],
     "spec.task.resources.reservations.generic[0]: invalid resource kind 'g pu'"),
    ([gres.named("gpu", "a,b")],
     "spec.task.resources.reservations.generic[0]: gpu: invalid unit name 'a,b'"),
    ([gres.discrete("gpu", 1), gres.discrete("gpu", 1)],
     "spec.task.resources.reservations.generic: gpu: counted twice"),
    ([pb.GenericResource()],
     "spec.task.resources.reservations.generic[0]: neither a count nor a unit name"),
]


def test_the_controller_refuses_bad_reservations_and_writes_nothing(
        gpu_live: LiveCluster) -> None:
    live = gpu_live
    with client.connect(live.addr) as ctl:
        for reservations, message in BAD_RESERVATIONS:
            spec = gpu_spec("web")
            spec.task.resources.reservations.generic.extend(reservations)
            before = live.snapshot()
            with pytest.raises(RpcFailure) as caught:
                ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(spec=spec))
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert str(caught.value).startswith(message), str(caught.value)
            assert live.snapshot() == before


def test_swarmctl_reserves_and_changes_generic_resources(gpu_live: LiveCluster) -> None:
    live = gpu_live
    ok(swarmctl(live, "service", "create", "-d", "train", "--image", "busybox",
                "--generic-resource", "gpu=1"))
    live.eventually(lambda: len(live.running("train")) == 1, message="train running")
    (task,) = live.running("train")
    assert task.node_id == live.node_ids()[GPU_HOST]
    assert units(task) == ["nvidia0"]
    reserved = live.service("train").spec.task.resources.reservations
    assert gres.text(reserved.generic) == "gpu=1"

    ok(swarmctl(live, "service", "update", "-d", "train", "--generic-resource-add", "gpu=2",
                "--generic-resource-add", "fpga=1"))
    assert gres.text(live.service("train").spec.task.resources.reservations.generic) \
        == "gpu=2 fpga=1"
    ok(swarmctl(live, "service", "update", "-d", "train", "--generic-resource-rm", "fpga"))
    assert gres.text(live.service("train").spec.task.resources.reservations.generic) == "gpu=2"
    # Both GPUs for the one task now, on the only node that has them.
    live.eventually(lambda: [sorted(units(t)) for t in live.running("train")]
                    == [["nvidia0", "nvidia1"]], timeout=20, message="train with two GPUs")


BAD_FLAGS = [
    (("service", "create", "web", "--image", "busybox", "--generic-resource", "gpu=-1"),
     "--generic-resource: invalid generic resource 'gpu=-1': the count must be at least 1"),
    (("service", "create", "web", "--image", "busybox", "--generic-resource", "g pu=1"),
     "--generic-resource: invalid resource kind 'g pu'"),
    (("service", "create", "web", "--image", "busybox", "--generic-resource", "gpu"),
     "--generic-resource: invalid generic resource 'gpu': expected KIND=COUNT"),
    (("service", "create", "web", "--image", "busybox", "--generic-resource", "gpu=1",
      "--generic-resource", "gpu=2"), "--generic-resource: gpu: counted twice"),
    (("service", "update", "api", "--generic-resource-add", "gpu=0"),
     "--generic-resource-add: invalid generic resource 'gpu=0': the count must be at least 1"),
    (("service", "update", "api", "--generic-resource-rm", "g,pu"),
     "--generic-resource-rm: invalid resource kind 'g,pu'"),
]


def test_bad_generic_resource_flags_are_one_line_exit_2_and_write_nothing(
        gpu_live: LiveCluster) -> None:
    live = gpu_live
    ok(swarmctl(live, "service", "create", "-d", "api", "--image", "busybox"))
    live.eventually(lambda: len(live.running("api")) == 1, message="api running")
    for args, fragment in BAD_FLAGS:
        before = live.snapshot()
        result = swarmctl(live, *args)
        line = assert_one_line_error(result, fragment, exit_code=2)
        assert line.startswith(f"swarmctl: {fragment}"), line
        assert live.snapshot() == before, f"{args} wrote to etcd"


async def test_a_new_leader_gives_no_unit_twice(etcd_server: EtcdServer,
                                                etcd_prefix: str) -> None:
    """The units are stored on the tasks: a controller that takes over after
    the first one stopped knows which are held from etcd alone."""
    first = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
    await first.start()
    second: Controller | None = None
    nodes = sim_cluster(first, 2, settings=FAST_SESSION,
                        generic={1: gres.merge(["gpu=nvidia0,nvidia1"])})

    async def tasks_of(control: cgrpc.ControlAsyncStub, name: str) -> list[pb.Task]:
        service = (await control.GetService(cpb.GetRequest(ref=name))).service
        tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
        return [t for t in tasks if t.service_id == service.id]

    try:
        nodes.start()
        await nodes.wait_connected(timeout=15)
        async with admin_channel(first) as channel:
            control = cgrpc.ControlStub(channel)
            await control.CreateService(cpb.CreateServiceRequest(spec=gpu_spec("a", "gpu=1")))

            async def a_running() -> bool:
                return [t.status.state for t in await tasks_of(control, "a")] == [pb.RUNNING]

            await eventually_async(a_running, timeout=10, message="a running")
            (held,) = await tasks_of(control, "a")
        second = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
        await second.start()
        await eventually(lambda: all(len(n.session.controllers) == 2 for n in nodes.nodes),
                         timeout=10, message="agents told of the second controller")
        await first.stop()  # the second takes over, from what etcd holds
        async with admin_channel(second) as channel:
            control = cgrpc.ControlStub(channel)

            async def create(name: str) -> None:
                while True:  # until the second leads
                    try:
                        await control.CreateService(cpb.CreateServiceRequest(
                            spec=gpu_spec(name, "gpu=1")))
                        return
                    except grpc.aio.AioRpcError as error:
                        if error.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        await asyncio.sleep(0.1)

            await create("b")
            await create("c")

            async def settled() -> bool:
                b, c = await tasks_of(control, "b"), await tasks_of(control, "c")
                return len(b) == len(c) == 1 and {b[0].status.state, c[0].status.state} \
                    == {pb.RUNNING, pb.PENDING} and any(
                        t.status.message == "no suitable node (2 nodes lack gpu)"
                        for t in (*b, *c))

            await eventually_async(settled, timeout=15, message="one of b and c placed")
            placed = [t for name in ("b", "c") for t in await tasks_of(control, name)
                      if t.status.state == pb.RUNNING]
            assert sorted([*units(held), *units(placed[0])]) == ["nvidia0", "nvidia1"]
    finally:
        await nodes.stop()
        if second is not None:
            await second.stop()
        await first.stop()
