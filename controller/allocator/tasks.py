"""Pure planning of task addresses: NEW tasks get one address per attached
network (and one on the ingress network when their service publishes ports
in ingress mode) and move to PENDING, the state the scheduler picks up. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from swarm.api.units import timestamp
from swarm.api.v1 import objects_pb2 as pb

from .ingress import NO_INGRESS_MESSAGE, find_ingress
from .networks import Pool, wants_vips
from .ports import publishes_ingress

__all__ = ["ALLOCATING_MESSAGE", "PENDING_MESSAGE", "Promotion", "TaskPlan", "needs_allocation", "plan_tasks"]

# The orchestrator creates tasks with these messages (NEW when they need
# addresses, else straight to PENDING); the allocator owns the promotion.
PENDING_MESSAGE = "pending task scheduling"
ALLOCATING_MESSAGE = "waiting for network addresses"

WAITING_FOR_VIPS = "waiting for the service's virtual IPs"


def needs_allocation(task: pb.Task | None) -> bool:
    """NEW and still wanted: the allocator's work list."""
    return task is not None and task.status.state == pb.NEW and task.desired_state <= pb.RUNNING


@dataclass
class Promotion:
    task: pb.Task  # the new version: attachments filled in, PENDING
    claimed: list[tuple[str, int]]  # (network id, address)


@dataclass
class TaskPlan:
    promoted: list[Promotion] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # task id -> why it stays NEW
    pools: dict[str, Pool] = field(default_factory=dict)  # networks whose cursor moved

    def networks(self) -> list[pb.Network]:
        return [pool.network for pool in self.pools.values()]


def _missing_vips(task: pb.Task, service: pb.Service) -> bool:
    if not wants_vips(service.spec):
        return False
    have = {vip.network_id for vip in service.endpoint.virtual_ips}
    return any(a.target not in have for a in task.spec.networks)


def plan_tasks(tasks: Sequence[pb.Task], networks: Mapping[str, pb.Network],
               services: Mapping[str, pb.Service], used: Mapping[str, AbstractSet[int]],
               now: float) -> TaskPlan:
    """Addresses for `tasks` (NEW ones), all of a task's or none of them, in the
    given order. A task waits (stays NEW, with the reason) while its service's
    VIPs are not allocated yet, a network is missing, or a subnet is full.
    Inputs are not modified; `used` is per network, as networks.used_by_network."""
    plan = TaskPlan()
    ingress = find_ingress(networks.values())
    for task in tasks:
        service = services.get(task.service_id)
        if service is None:
            continue  # removed: the orchestrator shuts the task down
        if _missing_vips(task, service):
            plan.waiting[task.id] = WAITING_FOR_VIPS
            continue
        # A host-network task shares its node's namespace: no attachment, no address
        # (validation refuses networks and ports for it; this holds it anyway).
        targets = [] if task.spec.host_network else list(task.spec.networks)
        if publishes_ingress(service.spec) and not task.spec.host_network:
            # The routing mesh reaches the task on the ingress network, after its own.
            if ingress is None:
                plan.waiting[task.id] = NO_INGRESS_MESSAGE
                continue
            if all(a.target != ingress.id for a in targets):
                targets.append(pb.NetworkAttachmentConfig(target=ingress.id))
        taken: list[tuple[Pool, int, int | None]] = []
        problem = ""
        for attachment in targets:
            network = networks.get(attachment.target)
            if network is None or not network.subnet:
                problem = f"network {attachment.target} not found"
                break
            pool = plan.pools.get(network.id)
            if pool is None:
                pool = plan.pools[network.id] = Pool(network, used.get(network.id, ()))
            cursor = pool.cursor
            address = pool.take()
            if address is None:
                problem = pool.exhausted_message()
                break
            taken.append((pool, address, cursor))
        if problem:
            for pool, address, cursor in reversed(taken):
                pool.give_back(address, cursor)
            plan.waiting[task.id] = problem
            continue
        plan.promoted.append(Promotion(_promote(task, service, targets, taken, now),
                                       [(pool.network.id, address) for pool, address, _ in taken]))
    # Networks nobody took an address from need no write.
    plan.pools = {nid: pool for nid, pool in plan.pools.items()
                  if pool.network.address_cursor != networks[nid].address_cursor}
    return plan


def _promote(task: pb.Task, service: pb.Service, targets: Sequence[pb.NetworkAttachmentConfig],
             taken: Sequence[tuple[Pool, int, int | None]], now: float) -> pb.Task:
    result = pb.Task()
    result.CopyFrom(task)
    del result.networks[:]
    for attachment, (pool, address, _) in zip(targets, taken, strict=True):
        result.networks.add(network_id=pool.network.id, addresses=[pool.subnet.cidr(address)],
                            aliases=attachment.aliases)
    # The VIPs may have been allocated after the task was made.
    if service.HasField("endpoint"):
        result.endpoint.CopyFrom(service.endpoint)
    result.status.state = pb.PENDING
    result.status.message = PENDING_MESSAGE
    result.status.timestamp.CopyFrom(timestamp(now))
    return result
