"""What a node's tasks depend on, reconciled before the tasks themselves (as
SwarmKit's worker reconciles networks before tasks): the overlay networks and
their peers, the routing mesh (the ingress sandbox and published ports), and
DNS and VIP load balancing for the tasks on overlay networks. The worker
(agent/worker.py) asks this for each assignment message first, attaches each
task's namespace through it, and tells it which tasks run and which went.

Without an overlay manager (a node with no overlay networking, the tests of
the task loop) tasks get loopback only; without published ports none are
served; without discovery no names or VIPs are answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from ipaddress import IPv4Interface
from pathlib import Path

from swarm.api.loops import cancel_all, start_supervised
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

from .discovery import Discovery
from .network.dns import DnsError
from .network.lb import LoadBalancerError
from .network.model import OverlayNetwork
from .network.overlay import OverlayError, OverlayManager
from .overlay_sync import PeerSets, add_networks, networks_to_remove, peers_of
from .published import PublishedPorts, host_routes
from .runtime import RejectError, Runtime

log = logging.getLogger(__name__)


class NetworkDependencies:
    """The networks, published ports and service discovery of one node."""

    def __init__(self, runtime: Runtime, overlay: OverlayManager | None = None,
                 netns_path: Callable[[str], Path] | None = None,
                 ports: PublishedPorts | None = None,
                 discovery: Discovery | None = None,
                 resync_period: float = 30.0) -> None:
        self.runtime = runtime
        # The overlay data plane, and where a task's network namespace is (to
        # attach it); without them tasks get loopback only.
        self.overlay = overlay
        self._netns_path = netns_path
        self._peer_sets = PeerSets()
        self._networks: dict[str, OverlayNetwork] = {}
        # Why a network could not be set up on this node, by id, until it can:
        # its tasks are rejected with this reason.
        self._network_errors: dict[str, str] = {}
        # Networks the controller no longer names that a local task still
        # held when it said so (a task stopping): removed once none does. The
        # controller says it once, often in the message that stops the task.
        self._unneeded: set[str] = set()
        # Published ports (routing mesh and host mode); without it none are served.
        self.ports = ports
        # DNS and VIP load balancing for the tasks on overlay networks.
        self.discovery = discovery
        self._resync_period = resync_period
        self._resync: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.overlay is not None and self._resync is None:
            self._resync = start_supervised("overlay-resync", self._resync_networks_forever)

    async def close(self) -> None:
        if self._resync is not None:
            await cancel_all([self._resync])
            self._resync = None

    async def _resync_networks_forever(self) -> None:
        while True:
            await asyncio.sleep(self._resync_period)
            await self.resync_networks()

    async def resync_networks(self) -> None:
        """Converge each network this node has to what the controller last
        said (its devices and its peers' entries); every step is idempotent,
        so on a healthy host this changes nothing."""
        if self.overlay is None:
            return
        for network_id, network in list(self._networks.items()):
            try:
                await self.overlay.ensure_network(network)
                # Peers read after the await: a message applied meanwhile is
                # not undone (set_peers calls are served in call order).
                await self.overlay.set_peers(network, peers_of(
                    self._peer_sets.endpoints(network_id), network_id))
                self._network_errors.pop(network_id, None)
            except (OverlayError, ValueError, OSError) as error:
                log.error("overlay network %s: converging again: %s", network_id, error)

    async def apply(self, assignments: dpb.Assignments) -> None:
        """The message's networks, ingress and service records, before its tasks."""
        if self.overlay is not None:
            # Networks first: the message's new tasks attach to them.
            for entry in assignments.networks:
                self._networks[entry.network.id] = OverlayNetwork.from_proto(entry.network)
            failed = await add_networks(self.overlay, assignments, self._peer_sets)
            for entry in assignments.networks:
                if entry.network.id in failed:
                    self._network_errors[entry.network.id] = failed[entry.network.id]
                else:
                    self._network_errors.pop(entry.network.id, None)
            if self.ports is not None:
                for entry in assignments.networks:
                    if entry.network.spec.ingress:
                        try:
                            await self.ports.set_ingress(
                                entry, self._peer_sets.endpoints(entry.network.id))
                        except (OverlayError, ValueError, OSError) as error:
                            log.error("routing mesh: %s", error)
        if self.discovery is not None:
            # After the data plane: a name or VIP backend is handed out only
            # once its FDB and neighbour entries are in place.
            self.discovery.apply(assignments)

    async def remove_unused(self, assignments: dpb.Assignments, in_use: Collection[str]) -> None:
        """Networks the controller no longer names, once no local task of ours
        is attached: one a stopping task still holds is remembered and goes
        with the message that removes the last such task."""
        if self.overlay is None:
            return
        self._unneeded = pending_removals(self._unneeded, assignments,
                                          networks_to_remove(self.overlay, assignments))
        for network_id in sorted(self._unneeded):
            if network_id in in_use:
                continue
            try:
                await self.overlay.remove_network(network_id)
            except (OverlayError, OSError) as error:  # tried again with the next message
                log.error("removing overlay network %s: %s", network_id, error)
                continue
            self._unneeded.discard(network_id)
            self._peer_sets.forget(network_id)
            self._network_errors.pop(network_id, None)
            self._networks.pop(network_id, None)
            if self.ports is not None:
                try:
                    await self.ports.ingress_removed(network_id)
                except OSError as error:
                    log.error("removing the ingress sandbox: %s", error)

    def host_ports_changed(self, tasks: Iterable[tuple[pb.Task, int]]) -> None:
        """Tell the published ports which of our tasks publish host-mode ports
        and run (cheap: called on every status change)."""
        if self.ports is None or self._netns_path is None:
            return
        netns_path = self._netns_path
        self.ports.set_host_routes(host_routes(
            ((task, state) for task, state in tasks if task.endpoint.ports),
            lambda task_id: str(netns_path(task_id))))

    async def settled(self, timeout: float) -> bool:
        """Whether what apply() was given is in force in DNS, the routing
        mesh (both at once) and every load-balancing table (discovery's
        passes), waiting up to `timeout`: the agent then confirms the
        networks' versions to the controller (drain before stop)."""
        if self.discovery is None:
            return True
        return await self.discovery.settled(timeout)

    def release(self, task_id: str) -> None:
        """The task's container has stopped (or goes): no more DNS or VIPs for it."""
        if self.discovery is not None:
            self.discovery.release(task_id)

    async def attach(self, task: pb.Task) -> None:
        """The task's namespace onto each of its networks (eth0, eth1... in the
        order of the spec; the default route on the first). A failure removes
        the prepared container and rejects the task."""
        if not task.networks:
            return
        try:
            if self.overlay is None or self._netns_path is None:
                raise RejectError("this agent has no overlay networking")
            for index, attachment in enumerate(task.networks):
                network = self._networks.get(attachment.network_id)
                if attachment.network_id in self._network_errors:
                    raise RejectError(self._network_errors[attachment.network_id])
                if network is None or not attachment.addresses:
                    raise RejectError(f"network {attachment.network_id}: not assigned to this "
                                      "node, or no address allocated")
                await self.overlay.attach(self._netns_path(task.id), network,
                                          IPv4Interface(attachment.addresses[0]),
                                          ifname=f"eth{index}", default_route=index == 0)
            if self.discovery is not None:
                await self.discovery.serve(
                    task.id, self._netns_path(task.id), [a.network_id for a in task.networks],
                    task.spec.container.dns_config.nameservers)
        except (DnsError, LoadBalancerError) as error:
            await self.runtime.remove(task.id)
            raise RejectError(f"service discovery: {error}") from error
        except (OverlayError, ValueError, OSError) as error:
            await self.runtime.remove(task.id)
            raise RejectError(f"network attachment: {error}") from error
        except RejectError:
            await self.runtime.remove(task.id)
            raise

    async def serve(self, task: pb.Task, tlog: logging.LoggerAdapter[logging.Logger]) -> None:
        """DNS and load balancing for a container found prepared or running
        (after an agent restart; idempotent otherwise). A failure is logged:
        the container runs on, with the names and VIPs unanswered."""
        if self.discovery is None or self._netns_path is None or not task.networks:
            return
        try:
            await self.discovery.serve(
                task.id, self._netns_path(task.id), [a.network_id for a in task.networks],
                task.spec.container.dns_config.nameservers)
        except (DnsError, LoadBalancerError, OSError) as error:
            tlog.error("service discovery: %s", error)


def pending_removals(pending: Collection[str], assignments: dpb.Assignments,
                     removed: Collection[str]) -> set[str]:
    """The networks waiting to be taken down after this message: those still
    waiting, less any the message names again, plus those it removes."""
    named = {entry.network.id for entry in assignments.networks}
    return (set(pending) - named) | set(removed)
