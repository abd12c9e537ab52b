"""`swarm-controller`: run one controller until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
from collections.abc import Sequence

from .allocator.ipam import DEFAULT_POOLS, MAX_PREFIX, MIN_PREFIX
from .dispatcher import DispatcherSettings
from .leadership import LeadershipSettings
from .server import Controller, ControllerConfig
from .store import EtcdSettings


def parse_args(argv: Sequence[str] | None = None) -> ControllerConfig:
    parser = argparse.ArgumentParser(
        prog="swarm-controller",
        description="Run a controller: keeps desired state in etcd, schedules tasks, "
                    "serves swarmctl and node agents. Several may run; one leads.",
    )
    parser.add_argument("--listen", default="0.0.0.0:2377", help="gRPC address (default %(default)s)")
    parser.add_argument("--advertise-addr", default="",
                        help="address agents and clients use to reach this controller")
    parser.add_argument("--etcd", action="append", default=[],
                        help="etcd endpoint HOST:PORT (repeatable; default 127.0.0.1:2379)")
    parser.add_argument("--etcd-ca", default="", help="CA bundle to verify etcd over TLS")
    parser.add_argument("--etcd-cert", default="", help="client certificate for etcd")
    parser.add_argument("--etcd-key", default="", help="client key for etcd")
    parser.add_argument("--prefix", default="/swarm/", help="etcd key prefix (default %(default)s)")
    parser.add_argument("--heartbeat-period", type=float, default=5.0,
                        help="agent heartbeat period in seconds, for a new cluster")
    parser.add_argument("--lease-ttl", type=int, default=5,
                        help="leadership lease in seconds: a dead leader is replaced after this")
    parser.add_argument("--default-addr-pool", action="append", default=[], metavar="CIDR",
                        help="address pool for networks created without --subnet, for a new "
                             "cluster (repeatable; default 10.0.0.0/8)")
    parser.add_argument("--default-addr-pool-mask-length", type=int, default=24, metavar="N",
                        help="prefix length of each network taken from the pools (default 24)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.heartbeat_period <= 0:
        parser.error("--heartbeat-period: must be positive")
    if args.lease_ttl < 1:
        parser.error("--lease-ttl: must be at least 1")
    pools = _address_pools(parser, args.default_addr_pool or list(DEFAULT_POOLS),
                           args.default_addr_pool_mask_length)
    return ControllerConfig(
        listen=args.listen,
        advertise_addr=args.advertise_addr,
        etcd=EtcdSettings(endpoints=tuple(args.etcd or ["127.0.0.1:2379"]),
                          ca_file=args.etcd_ca, cert_file=args.etcd_cert, key_file=args.etcd_key),
        prefix=args.prefix,
        leadership=LeadershipSettings(lease_ttl=args.lease_ttl),
        dispatcher=DispatcherSettings(heartbeat_period=args.heartbeat_period),
        heartbeat_period=args.heartbeat_period,
        address_pools=pools,
        subnet_size=args.default_addr_pool_mask_length,
    )


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


async def serve(config: ControllerConfig) -> None:
    controller = Controller(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await controller.start()
    await stop.wait()
    logging.getLogger(__name__).info("shutting down")
    await controller.stop()


def main() -> None:
    asyncio.run(serve(parse_args()))


if __name__ == "__main__":
    main()
