"""Service discovery and VIP load balancing for the tasks of this node:
the ServiceDirectory fed from the dispatcher's assignments, a DNS responder
and an nftables load-balancing table in each served task's namespace.

The worker calls, for each task on overlay networks:
  apply(assignments)          with every message, after the overlay data
                              plane took its peers and before its tasks start
                              (pure bookkeeping; DNS answers change at once)
  await serve(task, netns)    once its namespace is attached, before its
                              process starts (and again, idempotently, for a
                              container adopted after an agent restart): the
                              DNS sockets, and the task's nftables table (the
                              redirect of 127.0.0.11:53 to them, the VIPs), so
                              that the first lookup and connection work
  release(task_id)            when its container has stopped (synchronous)

and `run()` is a supervised loop that brings every served task's table up
to date after directory changes: one pass per burst of changes (the pass
recomputes each task's table from the directory as it is then, and applies
it only when its text changed), a bounded number of nft processes at once.

Latency from a peer becoming ready on another host to an answer here:
the controller's assignment message -> the worker: the data plane's FDB
and neighbour entries, then apply() (DNS answers from then on, well under
a millisecond later) -> the next pass of run() (the VIP's backends in every
local task's table: one `nft -f` per task whose table changed, 15-30 ms
each, LB_CONCURRENCY at once; bench.discovery measures both).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from swarm.api.telemetry import NO_TELEMETRY, Telemetry
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.host.netlinklib import NetlinkError

from .network import lb
from .network.directory import Resolution, ServiceDirectory, records_from_assignment
from .network.dns import ADDRESS, PORT, Forwarder, TaskDns, Upstream
from .overlay_sync import PeerSets

log = logging.getLogger(__name__)

LB_CONCURRENCY = 8  # nft processes at once (each is short; this bounds a burst)
RETRY_DELAY = 1.0  # after a failed apply


@dataclass
class _Served:
    task_id: str
    netns: str
    networks: tuple[str, ...]
    dns: TaskDns
    redirect: lb.DnsRedirect | None = None
    applied: str | None = None  # the nft script in force
    backends: lb.Backends = field(default_factory=dict)  # what it balances
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Discovery:
    def __init__(self, forwarder: Forwarder, *, dns_address: str = ADDRESS,
                 dns_port: int = PORT, lb_concurrency: int = LB_CONCURRENCY) -> None:
        self.directory = ServiceDirectory()
        self.forwarder = forwarder
        self._dns_address = dns_address
        self._dns_port = dns_port
        self._peer_sets = PeerSets()
        self._served: dict[str, _Served] = {}
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(lb_concurrency)
        self.passes = 0  # completed load-balancer passes (tests, benchmarks)
        self.telemetry: Telemetry = NO_TELEMETRY  # metrics (agent/metrics.py)
        # Drain before stop: directory changes are numbered, and a pass that
        # applied every table without error records the number it started
        # from, so the agent confirms to the controller only what its load
        # balancers really have (settled()).
        self._generation = 0
        self._synced_generation = 0
        self._synced = asyncio.Event()

    # ------------------------------------------------------------ the directory

    def apply(self, assignments: dpb.Assignments) -> None:
        """Take a session message's networks (complete sets replace, deltas
        add on top; in a COMPLETE message a network not named is gone)."""
        changed = False
        named = set()
        for entry in assignments.networks:
            network_id = entry.network.id
            named.add(network_id)
            self._peer_sets.apply_changes(entry)
            records = records_from_assignment(entry.network, entry.services,
                                              self._peer_sets.endpoints(network_id))
            changed |= self.directory.set(records)
        gone = set(assignments.removed_networks)
        if assignments.type == dpb.Assignments.COMPLETE:
            gone |= set(self.directory.networks())
        for network_id in gone - named:
            self._peer_sets.forget(network_id)
            changed |= self.directory.remove(network_id)
        if changed:
            self._generation += 1
            self._changed.set()

    async def settled(self, timeout: float) -> bool:
        """Whether every change applied so far is in every served task's
        load-balancing table (DNS answers follow apply() at once), waiting
        up to `timeout` for the passes to get there."""
        target = self._generation
        deadline = asyncio.get_running_loop().time() + timeout
        while self._synced_generation < target:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self._synced.clear()
            try:
                await asyncio.wait_for(self._synced.wait(), left)
            except TimeoutError:
                return False
        return True

    def resolve(self, name: str, networks: Sequence[str]) -> Resolution:
        resolution = self.directory.resolve(name, networks)
        self.telemetry.inc("swarm_agent_dns_queries_total", resolution.outcome.value)
        return resolution

    # ------------------------------------------------------------ served tasks

    def serving(self) -> list[str]:
        return sorted(self._served)

    async def serve(self, task_id: str, netns: str | os.PathLike[str],
                    networks: Sequence[str], nameservers: Sequence[str] = ()) -> None:
        """DNS and load balancing for a task (idempotent). Raises DnsError
        (the sockets) or LoadBalancerError (the table); nothing is left
        served then. A task's own `nameservers` (--dns) are where its other
        names go instead of the node's upstreams, as docker's embedded
        resolver forwards to a container's --dns servers."""
        if task_id in self._served:
            return
        path = os.fspath(netns)
        forwarder = self.forwarder
        if nameservers:
            forwarder = Forwarder([Upstream(server) for server in nameservers],
                                  forwarder.try_timeout, forwarder.deadline)
        responder = TaskDns(task_id, networks, self.resolve, forwarder,
                            self.directory.name_of)
        await responder.start(path, self._dns_address, 0)  # ephemeral ports: see dns.py
        served = _Served(task_id, path, tuple(networks), responder, lb.DnsRedirect(
            self._dns_address, self._dns_port, responder.udp_port, responder.tcp_port))
        self._served[task_id] = served
        try:
            await self._sync(served)
        except BaseException:
            self.release(task_id)
            raise
        log.info("task %s: DNS on %s:%d (udp %d, tcp %d), load balancing for %d VIPs",
                 task_id, self._dns_address, self._dns_port, responder.udp_port,
                 responder.tcp_port, len(self.directory.backends(served.networks)))

    def release(self, task_id: str) -> None:
        """Stop serving a task: its sockets close now (they would keep its
        namespace alive). Its table goes with its namespace."""
        served = self._served.pop(task_id, None)
        if served is not None:
            served.dns.close_now()
            log.debug("task %s: DNS closed", task_id)

    async def close(self) -> None:
        served = list(self._served.values())
        self._served.clear()
        for entry in served:
            await entry.dns.close()

    # ------------------------------------------------------------ load balancing

    async def run(self) -> None:
        """Keep every served task's table in step with the directory."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            generation = self._generation
            failed = await self.sync_all()
            self.passes += 1
            if not failed:
                self._synced_generation = max(self._synced_generation, generation)
                self._synced.set()
            if failed:
                await asyncio.sleep(RETRY_DELAY)
                self._changed.set()

    async def sync_all(self) -> int:
        """One pass over the served tasks; how many failed."""
        results = await asyncio.gather(*(self._sync_limited(s) for s in list(self._served.values())),
                                       return_exceptions=True)
        failed = 0
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                failed += 1
        return failed

    async def _sync_limited(self, served: _Served) -> None:
        async with self._slots:
            if self._served.get(served.task_id) is not served:
                return  # released meanwhile
            try:
                await self._sync(served)
            except (lb.LoadBalancerError, OSError, TimeoutError) as error:
                if self._served.get(served.task_id) is served:
                    log.warning("task %s: load balancer: %s", served.task_id, error)
                    raise
                # released while nft ran: its namespace may be gone; nothing to do

    async def _sync(self, served: _Served) -> None:
        async with served.lock:
            backends = self.directory.backends(served.networks)
            script = lb.ruleset(backends, served.redirect)
            if script == served.applied:
                return
            await lb.apply(served.netns, script)
            served.applied = script
            self.telemetry.inc("swarm_agent_lb_updates_total")
            gone = lb.gone_backends(served.backends, backends)
            served.backends = backends
            try:
                flushed = await lb.flush_udp(served.netns, gone)
            except (OSError, NetlinkError) as error:  # the table is right; flows may linger
                log.warning("task %s: forgetting UDP flows to gone backends: %s",
                            served.task_id, error)
            else:
                if flushed:
                    log.debug("task %s: %d UDP flows to gone backends forgotten",
                              served.task_id, flushed)
