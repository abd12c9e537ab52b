"""`swarm-controller`: run one controller until SIGTERM or SIGINT.

Security (mutual TLS is the default; see deploy/PRODUCTION.md):

    swarm-controller --init --kek-file /etc/swarm/kek --admin-out /etc/swarm/admin ...

--kek-file is the key that encrypts the cluster CA's key in etcd; every
controller of a cluster needs the same file (mode 0600). With --init a missing
file is created (random, 0600); without --init it must exist, so a typo in
the path never silently starts a second, unrelated CA key. The first
controller of a cluster creates the CA (or takes --external-ca-cert/-key).
--admin-out DIR writes an admin client identity for swarmctl (node.key,
node.crt, ca.crt). --insecure serves plaintext gRPC, for development only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import swarm
from swarm.api import logformat, pki, sdnotify
from swarm.api.loops import cancel_all, start_supervised
from swarm.api.telemetry import metrics_addr_error

from .allocator.ipam import DEFAULT_POOLS, MAX_PREFIX, MIN_PREFIX
from .api.control import MAX_STALENESS
from .ca import CASettings
from .compaction import DEFAULT_INTERVAL as DEFAULT_COMPACTION_INTERVAL
from .compaction import CompactionSettings
from .dispatcher import DispatcherSettings
from .leadership import LeadershipSettings
from .orchestrator.autorebalance import DEFAULT_INTERVAL as DEFAULT_REBALANCE_INTERVAL
from .orchestrator.autorebalance import AutoRebalanceSettings
from .orchestrator.disruption import DisruptionSettings
from .server import Controller, ControllerConfig
from .store import EtcdSettings


def parse_args(argv: Sequence[str] | None = None) -> ControllerConfig:
    parser = argparse.ArgumentParser(
        prog="swarm-controller",
        description="Run a controller: keeps desired state in etcd, schedules tasks, "
                    "serves swarmctl and node agents. Several may run; one leads.",
    )
    parser.add_argument("--version", action="version", version=f"swarm-controller {swarm.__version__}")
    parser.add_argument("--listen", default="0.0.0.0:2377", help="gRPC address (default %(default)s)")
    parser.add_argument("--advertise-addr", default="",
                        help="address agents and clients use to reach this controller")
    parser.add_argument("--etcd", action="append", default=[],
                        help="etcd endpoint HOST:PORT (repeatable; default 127.0.0.1:2379)")
    parser.add_argument("--etcd-ca", default="", help="CA bundle to verify etcd over TLS")
    parser.add_argument("--etcd-cert", default="", help="client certificate for etcd")
    parser.add_argument("--etcd-key", default="", help="client key for etcd")
    parser.add_argument("--prefix", default="/swarm/", help="etcd key prefix (default %(default)s)")
    parser.add_argument("--etcd-compaction-interval", type=float, default=DEFAULT_COMPACTION_INTERVAL,
                        metavar="SECONDS",
                        help="the leader compacts etcd's history this often, keeping one to two "
                             "intervals (default %(default)s, as kube-apiserver; 0: never, "
                             "when etcd runs with --auto-compaction-retention)")
    parser.add_argument("--max-read-staleness", type=float, default=MAX_STALENESS,
                        metavar="SECONDS",
                        help="refuse reads (UNAVAILABLE) once the watch cache has not heard from "
                             "etcd for this long (default %(default)s)")
    parser.add_argument("--heartbeat-period", type=float, default=5.0,
                        help="agent heartbeat period in seconds, for a new cluster")
    parser.add_argument("--lease-ttl", type=int, default=5,
                        help="leadership lease in seconds: a dead leader is replaced after this")
    parser.add_argument("--leader-watchdog", type=float, default=30.0, metavar="SECONDS",
                        help="a leader whose event loop has not run for this long gives up its "
                             "lease so another controller takes over (default %(default)s)")
    parser.add_argument("--disconnect-threshold", type=float, default=1 / 3, metavar="FRACTION",
                        help="more than this fraction of the nodes DOWN within two heartbeat "
                             "periods is a mass disconnect: their tasks are replaced one node "
                             "at a time (default 1/3)")
    parser.add_argument("--disconnect-release-periods", type=float, default=2.0, metavar="N",
                        help="in a mass disconnect, one node's tasks are replaced per N "
                             "heartbeat periods (default %(default)s)")
    parser.add_argument("--default-addr-pool", action="append", default=[], metavar="CIDR",
                        help="address pool for networks created without --subnet, for a new "
                             "cluster (repeatable; default 10.0.0.0/8)")
    parser.add_argument("--default-addr-pool-mask-length", type=int, default=24, metavar="N",
                        help="prefix length of each network taken from the pools (default 24)")
    parser.add_argument("--ingress-subnet-size", type=int, default=16, metavar="N",
                        help="prefix length of the routing mesh's ingress network, which gives "
                             "every node an address (default 16: 65,534 nodes); taken at "
                             "--init, an existing cluster keeps its ingress network")
    parser.add_argument("--auto-rebalance", action="store_true",
                        help="when a node joins or comes back, rebalance replicated services "
                             "that are unbalanced, one at a time (off by default)")
    parser.add_argument("--auto-rebalance-interval", type=float, default=DEFAULT_REBALANCE_INTERVAL,
                        metavar="SECONDS",
                        help="quiet time after the last node arrival before rebalancing, and "
                             "the least time between two rebalance starts (default %(default)s)")
    security = parser.add_argument_group("security (mutual TLS unless --insecure)")
    security.add_argument("--insecure", action="store_true",
                          help="plaintext gRPC without authentication: development only")
    security.add_argument("--init", action="store_true",
                          help="initialising a cluster: create --kek-file if it does not exist")
    security.add_argument("--kek-file", default="",
                          help="key-encryption key of the CA key in etcd (mode 0600; the same "
                               "file on every controller)")
    security.add_argument("--external-ca-cert", default="",
                          help="PEM certificate of an external root CA for a new cluster")
    security.add_argument("--external-ca-key", default="", help="its PEM private key (ECDSA)")
    security.add_argument("--admin-out", default="",
                          help="write an admin identity for swarmctl into this directory")
    security.add_argument("--join-listen", default="",
                          help="join service address (default: the --listen port + 1)")
    security.add_argument("--cert-validity-days", type=float, default=90.0,
                          help="validity of node certificates, for a new cluster (default 90)")
    security.add_argument("--join-rate", type=float, default=2.0,
                          help="joins per second allowed per peer address (burst 20)")
    parser.add_argument("--heartbeat-listen", default="", metavar="HOST:PORT",
                        help="where agents' heartbeats are served off the event loop (default: "
                             "the --listen host, an ephemeral port, told to agents in their "
                             "sessions; 'off': agents beat on the control port)")
    # Test only: on SIGUSR1 the event loop runs busy for this many seconds.
    parser.add_argument("--debug-stall-loop", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=logformat.LOG_FORMATS,
                        help="text (default) or json: one JSON object per line")
    parser.add_argument("--metrics-addr", default="", metavar="HOST:PORT",
                        help="serve Prometheus metrics on /metrics, and /healthz and /readyz, "
                             "on this address (default: off)")
    args = parser.parse_args(argv)
    logformat.configure(args.log_level, args.log_format)
    if args.metrics_addr and metrics_addr_error(args.metrics_addr):
        parser.error(f"--metrics-addr: {metrics_addr_error(args.metrics_addr)}")
    if args.heartbeat_listen not in ("", "off") and heartbeat_listen_error(args.heartbeat_listen):
        parser.error(f"--heartbeat-listen: {heartbeat_listen_error(args.heartbeat_listen)}")
    if args.debug_stall_loop < 0:
        parser.error("--debug-stall-loop: must not be negative")
    if args.heartbeat_period <= 0:
        parser.error("--heartbeat-period: must be positive")
    if args.auto_rebalance_interval <= 0:
        parser.error("--auto-rebalance-interval: must be positive")
    if args.etcd_compaction_interval < 0:
        parser.error("--etcd-compaction-interval: must be 0 (off) or positive")
    if args.max_read_staleness <= 0:
        parser.error("--max-read-staleness: must be positive")
    if args.lease_ttl < 1:
        parser.error("--lease-ttl: must be at least 1")
    if args.leader_watchdog <= args.lease_ttl:
        parser.error("--leader-watchdog: must be longer than --lease-ttl")
    if not 0 < args.disconnect_threshold <= 1:
        parser.error(f"--disconnect-threshold: must be above 0 and at most 1 "
                     f"(got {args.disconnect_threshold})")
    if args.disconnect_release_periods <= 0:
        parser.error("--disconnect-release-periods: must be positive")
    pools = _address_pools(parser, args.default_addr_pool or list(DEFAULT_POOLS),
                           args.default_addr_pool_mask_length)
    if not MIN_PREFIX <= args.ingress_subnet_size <= MAX_PREFIX:
        parser.error(f"--ingress-subnet-size: must be between {MIN_PREFIX} and {MAX_PREFIX} "
                     f"(got {args.ingress_subnet_size})")
    ca = CASettings(node_cert_validity=dt.timedelta(days=args.cert_validity_days),
                    join_rate=args.join_rate)
    if args.insecure:
        logging.getLogger(__name__).warning(
            "INSECURE: --insecure serves plaintext gRPC without authentication; anyone who can "
            "reach this controller controls the cluster. Development only.")
    else:
        ca = _security(parser, args, ca)
    return ControllerConfig(
        listen=args.listen,
        insecure=args.insecure,
        ca=ca,
        join_listen=args.join_listen,
        admin_out=args.admin_out,
        advertise_addr=args.advertise_addr,
        etcd=EtcdSettings(endpoints=tuple(args.etcd or ["127.0.0.1:2379"]),
                          ca_file=args.etcd_ca, cert_file=args.etcd_cert, key_file=args.etcd_key),
        prefix=args.prefix,
        leadership=LeadershipSettings(lease_ttl=args.lease_ttl,
                                      watchdog=args.leader_watchdog),
        compaction=CompactionSettings(interval=args.etcd_compaction_interval),
        max_read_staleness=args.max_read_staleness,
        dispatcher=DispatcherSettings(heartbeat_period=args.heartbeat_period),
        heartbeat_period=args.heartbeat_period,
        disruption=DisruptionSettings(threshold=args.disconnect_threshold,
                                      release_periods=args.disconnect_release_periods),
        address_pools=pools,
        subnet_size=args.default_addr_pool_mask_length,
        ingress_subnet_size=args.ingress_subnet_size,
        auto_rebalance=AutoRebalanceSettings(enabled=args.auto_rebalance,
                                             interval=args.auto_rebalance_interval),
        metrics_addr=args.metrics_addr,
        heartbeat_listen=args.heartbeat_listen,
        debug_stall_loop=args.debug_stall_loop,
    )


def heartbeat_listen_error(value: str) -> str:
    """What is wrong with a --heartbeat-listen HOST:PORT ('' if nothing)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return f"expected HOST:PORT, got {value!r}"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"port must be a number from 0 to 65535, got {port!r}"
    return ""


def _address_pools(parser: argparse.ArgumentParser, pools: list[str], size: int) -> tuple[str, ...]:
    if not MIN_PREFIX <= size <= MAX_PREFIX:
        parser.error(f"--default-addr-pool-mask-length: must be between {MIN_PREFIX} and "
                     f"{MAX_PREFIX} (got {size})")
    result = []
    for text in pools:
        try:
            pool = ipaddress.IPv4Network(text)
        except ValueError as error:
            parser.error(f"--default-addr-pool: {text!r} is not an IPv4 network in CIDR form "
                         f"({error})")
        if pool.prefixlen > size:
            parser.error(f"--default-addr-pool: {pool} is smaller than one /{size} network")
        result.append(str(pool))
    return tuple(result)


def _security(parser: argparse.ArgumentParser, args: argparse.Namespace,
              ca: CASettings) -> CASettings:
    if not args.kek_file:
        parser.error("--kek-file is required (with --init to create it), or --insecure")
    kek_path = Path(args.kek_file)
    if not kek_path.exists():
        if not args.init:
            parser.error(f"--kek-file {kek_path}: does not exist (use --init to create it "
                         "when initialising a cluster)")
        kek_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(kek_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pki.generate_kek() + b"\n")
        logging.getLogger(__name__).info("created the key-encryption key %s", kek_path)
    try:
        kek = pki.load_kek(kek_path)
    except (OSError, pki.PKIError) as error:
        parser.error(f"--kek-file: {error}")
    if bool(args.external_ca_cert) != bool(args.external_ca_key):
        parser.error("--external-ca-cert and --external-ca-key go together")
    try:
        cert = Path(args.external_ca_cert).read_bytes() if args.external_ca_cert else b""
        key = Path(args.external_ca_key).read_bytes() if args.external_ca_key else b""
    except OSError as error:
        parser.error(f"external CA: {error}")
    return CASettings(kek=kek, external_ca_cert=cert, external_ca_key=key,
                      node_cert_validity=ca.node_cert_validity, join_rate=ca.join_rate)


async def serve(config: ControllerConfig) -> None:
    controller = Controller(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if config.debug_stall_loop:
        seconds = config.debug_stall_loop

        def stall() -> None:
            # Busy, as a loop busy with a burst is: pure Python, holding the
            # GIL but for the interpreter's switch interval.
            logging.getLogger(__name__).warning("test: stalling the event loop for %gs",
                                                seconds)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass

        loop.add_signal_handler(signal.SIGUSR1, stall)
    await controller.start()
    sdnotify.notify("READY=1")  # Type=notify units (deploy/systemd)
    watchdog = start_supervised("systemd-watchdog", sdnotify.watchdog)
    await stop.wait()
    logging.getLogger(__name__).info("shutting down")
    sdnotify.notify("STOPPING=1")
    await cancel_all([watchdog])
    await controller.stop()


def main() -> None:
    asyncio.run(serve(parse_args()))


if __name__ == "__main__":
    main()
