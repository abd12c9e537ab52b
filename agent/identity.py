"""The node's identity in the cluster: joining with a token, keeping the key
and certificate in the state dir, renewing before expiry, and the mutual-TLS
channels the session uses.

Joining (`join`), as in Docker Swarm:

1. read the certificates the controller's join port presents, unverified
   (`channels.fetch_offered_chain`), and keep the CA whose digest the token
   pins (`pki.find_ca_for_token`): a wrong cluster or a man in the middle is
   refused before anything is sent;
2. make a key (it never leaves the node) and a CSR;
3. send token and CSR over TLS verified against that CA; the controller
   answers with the node certificate (node ID in CN, role in OU).

Renewal (`IdentityKeeper.renew_forever`) makes a new key and asks the
controller over the mutual-TLS port, at a random 50-80 % of the
certificate's life. Sessions in progress keep their channel; new ones use the
new certificate, so running tasks are never disturbed.

Between joining and renewing the agent holds its identity as
certfiles.NodeCertificate, read without cryptography. pki (which loads it,
about 10 MiB of a process) is needed only to join and to renew; an agent
with a state dir does both in a short-lived child process (`python -m
swarm.agent.identity join|renew`, the token on its stdin) that writes the
certs dir, so the long-lived agent never loads it. Without a directory (the
simulated agents of tests and benchmarks) both run in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from swarm.api import channels
from swarm.api.certfiles import NodeCertificate, PemFiles
from swarm.api.v1 import ca_pb2 as capb
from swarm.api.v1 import ca_pb2_grpc as cagrpc

if TYPE_CHECKING:
    from swarm.api import pki
    from swarm.api.pki import NodeIdentity

log = logging.getLogger(__name__)

_RPC_TIMEOUT = 10.0
CHILD_RENEW_TIMEOUT = 60.0
_JOIN_REFUSED = 2  # the child's exit status for a JoinError
_FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
          grpc.StatusCode.PERMISSION_DENIED)


class JoinError(Exception):
    """The node cannot join: the token or the controller's CA is wrong."""


class RenewError(OSError):
    """A renewal in the child process failed (its message)."""


def join_address(controller: str) -> str:
    """The default join port of a controller: its control port + 1."""
    host, _, port = controller.rpartition(":")
    return f"{host}:{int(port) + 1}"


async def fetch_ca(join_addr: str, token: pki.JoinToken, *, timeout: float = 10.0) -> bytes:
    """The controller's CA certificate (PEM), checked against the token's
    digest before it is trusted. Raises pki.CAMismatch, OSError."""
    from swarm.api import pki

    offered = await asyncio.to_thread(channels.fetch_offered_chain, join_addr, timeout=timeout)
    return pki.cert_to_pem(pki.find_ca_for_token(offered, token))


async def request_certificate(join_addr: str, token: str, ca_pem: bytes, *,
                              role: int = capb.JOIN_ROLE_UNSPECIFIED) -> NodeIdentity:
    """Send the token and a CSR for a new key to a controller verified against
    ca_pem; the new identity. Raises grpc.aio.AioRpcError, pki.PKIError."""
    from swarm.api import pki
    from swarm.api.pki import NodeIdentity

    key = pki.generate_key()
    async with channels.client_channel(join_addr, None, ca_pem=ca_pem) as channel:
        response = await cagrpc.CAJoinStub(channel).IssueNodeCertificate(
            capb.IssueNodeCertificateRequest(token=token, csr_pem=pki.make_csr(key), role=role),  # type: ignore[arg-type]
            timeout=_RPC_TIMEOUT)
    pki.verify_issued_by(pki.cert_from_pem(response.certificate_pem), pki.cert_from_pem(ca_pem))
    return NodeIdentity(key_pem=pki.key_to_pem(key), cert_pem=response.certificate_pem,
                        ca_pem=ca_pem)


async def join(join_addrs: Sequence[str], token_text: str, *, attempts: int = 5,
               role: int = capb.JOIN_ROLE_UNSPECIFIED) -> NodeIdentity:
    """Join through the first controller that answers. Raises JoinError for a
    refusal that retrying cannot fix (bad token, CA mismatch)."""
    from swarm.api import pki

    try:
        token = pki.parse_join_token(token_text)
    except pki.InvalidJoinToken as error:
        raise JoinError(str(error)) from None
    last = ""
    for attempt in range(attempts):
        for addr in join_addrs:
            try:
                ca_pem = await fetch_ca(addr, token)
                identity = await request_certificate(addr, token_text, ca_pem, role=role)
            except pki.CAMismatch as error:
                raise JoinError(f"{addr}: {error}") from None
            except grpc.aio.AioRpcError as error:
                if error.code() in _FATAL:
                    raise JoinError(f"{addr} refused to join this node: {error.details()}") from None
                last = f"{addr}: {error.code().name} {error.details()}"
            except (OSError, pki.PKIError) as error:
                last = f"{addr}: {error}"
            else:
                log.info("joined the cluster as %s %s", identity.role.value, identity.node_id)
                return identity
            log.warning("cannot join through %s", last)
        await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
    raise JoinError(f"no controller let this node join; last error: {last}")


async def renew(controller: str, identity: PemFiles) -> NodeIdentity:
    from swarm.api import pki
    from swarm.api.pki import NodeIdentity

    key = pki.generate_key()
    async with channels.client_channel(controller, identity) as channel:
        response = await cagrpc.NodeCAStub(channel).RenewNodeCertificate(
            capb.RenewNodeCertificateRequest(csr_pem=pki.make_csr(key)), timeout=_RPC_TIMEOUT)
    renewed = NodeIdentity(key_pem=pki.key_to_pem(key), cert_pem=response.certificate_pem,
                           ca_pem=response.ca_pem or identity.ca_pem)
    pki.verify_issued_by(renewed.cert, pki.cert_from_pem(renewed.ca_pem))
    before = NodeCertificate.of(identity).node_id
    if renewed.node_id != before:
        raise pki.PKIError(f"renewal returned node {renewed.node_id}, not {before}")
    return renewed


class IdentityKeeper:
    """The current identity, its channels, and its renewal."""

    def __init__(self, identity: PemFiles, controllers: Sequence[str], *,
                 directory: Path | None = None, rng: random.Random | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.identity = _light(identity)
        self._controllers = list(controllers)
        # Where to renew: the session's current controller set when followed.
        self._source: Callable[[], Sequence[str]] | None = None
        self._directory = directory
        self._rng = rng or random.Random()
        self._clock = clock
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retired: list[grpc.aio.Channel] = []
        self.renewals = 0
        # Never renew in a tight loop, even with very short certificates.
        self.min_delay = 1.0

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def follow(self, controllers: Callable[[], Sequence[str]]) -> None:
        """Renew through these controllers (the session's, learned from the
        leader) instead of those the agent was started with."""
        self._source = controllers

    def channel(self, addr: str) -> grpc.aio.Channel:
        """The session's ChannelFactory: one cached mutual-TLS channel per
        controller, made anew after a renewal."""
        found = self._channels.get(addr)
        if found is None:
            found = self._channels[addr] = channels.client_channel(addr, self.identity)
        return found

    def replace(self, identity: NodeIdentity) -> None:
        if self._directory is not None:
            identity.save(self._directory)
        self._swap(_light(identity))

    def _swap(self, identity: NodeCertificate) -> None:
        self.identity = identity
        self._retired.extend(self._channels.values())  # sessions on them carry on
        self._channels = {}

    async def renew_forever(self) -> None:
        failures = 0
        while True:
            delay = self.identity.renewal_delay(self._clock(), self._rng)
            if failures:
                delay = min(delay, min(300.0, 2.0 ** failures))
            await asyncio.sleep(max(delay, self.min_delay))
            addrs = list(self._source() if self._source is not None else ()) \
                or self._controllers
            addr = addrs[failures % len(addrs)]
            try:
                if self._directory is not None:
                    self._swap(await renew_in_child(addr, self._directory))
                else:
                    self.replace(await _renew_here(addr, self.identity))
                self.renewals += 1
                failures = 0
                log.info("renewed the node certificate (expires %s)", self.identity.not_after)
            except (grpc.aio.AioRpcError, OSError) as error:  # RenewError too
                failures += 1
                log.warning("certificate renewal through %s failed: %s", addr, error)

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._retired]:
            await channel.close(None)
        self._channels, self._retired = {}, []


def _light(identity: PemFiles) -> NodeCertificate:
    return identity if isinstance(identity, NodeCertificate) else NodeCertificate.of(identity)


async def _renew_here(controller: str, identity: PemFiles) -> NodeIdentity:
    """renew() in this process, its refusals as RenewError."""
    from swarm.api import pki

    try:
        return await renew(controller, identity)
    except pki.PKIError as error:
        raise RenewError(str(error)) from None


# ---------------------------------------------------------------- in a child process


async def _child(args: Sequence[str], stdin: bytes, timeout: float | None
                 ) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarm.agent.identity", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    lines = err.decode(errors="replace").strip().splitlines()
    return process.returncode or 0, lines[-1] if lines else ""


async def join_in_child(join_addrs: Sequence[str], token: str, directory: Path
                        ) -> NodeCertificate:
    """join(), in a child process that saves the identity into `directory`
    (the token goes over its stdin, never its command line). Raises
    JoinError."""
    code, message = await _child(
        ["join", "--certs-dir", str(directory), *(f"--join-addr={a}" for a in join_addrs)],
        token.encode(), None)
    if code == _JOIN_REFUSED:
        raise JoinError(message)
    if code:
        raise JoinError(f"joining failed (exit {code}): {message}")
    return NodeCertificate.load(directory)


async def renew_in_child(controller: str, directory: Path,
                         timeout: float = CHILD_RENEW_TIMEOUT) -> NodeCertificate:
    """renew() through `controller`, in a child process that reads and
    rewrites `directory`. Raises RenewError, TimeoutError."""
    code, message = await _child(["renew", "--certs-dir", str(directory),
                                  f"--controller={controller}"], b"", timeout)
    if code:
        raise RenewError(message or f"exit {code}")
    return NodeCertificate.load(directory)


def _child_main(argv: Sequence[str]) -> int:
    from swarm.api import pki

    parser = argparse.ArgumentParser(prog="python -m swarm.agent.identity")
    parser.add_argument("action", choices=("join", "renew"))
    parser.add_argument("--certs-dir", type=Path, required=True)
    parser.add_argument("--join-addr", action="append", default=[])
    parser.add_argument("--controller", default="")
    args = parser.parse_args(argv)
    try:
        if args.action == "join":
            identity = asyncio.run(join(args.join_addr, sys.stdin.read().strip()))
        else:
            identity = asyncio.run(renew(args.controller,
                                         pki.NodeIdentity.load(args.certs_dir)))
        identity.save(args.certs_dir)
    except JoinError as error:
        print(error, file=sys.stderr)
        return _JOIN_REFUSED
    except grpc.aio.AioRpcError as error:
        print(f"{args.controller}: {error.code().name} {error.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError, pki.PKIError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
