"""Service discovery's decisions, pure: the directory's answers per asker,
the DNS responses made of them, the load-balancing ruleset, the upstream
parsing, and the directory fed from hand-made assignments (deltas, removals)."""

from __future__ import annotations

from ipaddress import IPv4Address

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from swarm.agent.discovery import Discovery
from swarm.agent.main import parse_args
from swarm.agent.network.directory import Outcome, ServiceDirectory, normalize, records_from_assignment
from swarm.agent.network.dns import (
    Forwarder,
    Upstream,
    error_for_wire,
    local_answer,
    to_udp_wire,
    upstreams_from_resolv_conf,
)
from swarm.agent.network.lb import DnsRedirect, gone_backends, ruleset
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

A = IPv4Address


def network(network_id: str, subnet: str, *, ingress: bool = False) -> pb.Network:
    result = pb.Network(id=network_id, vni=4096, subnet=subnet,
                        gateway=subnet.replace("0/24", "1"))
    result.spec.name = network_id
    result.spec.ingress = ingress
    return result


def service(service_id: str, name: str, vip: str = "", dnsrr: bool = False,
            aliases: tuple[str, ...] = ()) -> dpb.ServiceRecord:
    return dpb.ServiceRecord(id=service_id, name=name, vip=vip, aliases=list(aliases),
                             mode=pb.EndpointSpec.DNSRR if dnsrr else pb.EndpointSpec.VIP)


def peer(task_id: str, service_id: str, address: str, ready: bool = True,
         name: str = "") -> dpb.OverlayPeer:
    return dpb.OverlayPeer(task_id=task_id, node_id="n1", address=address, vtep="192.168.1.1",
                           service_id=service_id, ready=ready,
                           task_name=name or f"{service_id}-name.1.{task_id}")


def entry(net: pb.Network, services: list[dpb.ServiceRecord], peers: list[dpb.OverlayPeer],
          *, delta: bool = False, removed: tuple[str, ...] = ()) -> dpb.NetworkAssignment:
    return dpb.NetworkAssignment(network=net, services=services, peers=peers, delta=delta,
                                 removed_peers=list(removed))


FRONT = network("front", "10.1.0.0/24")
BACK = network("back", "10.2.0.0/24")
STACK = network("shop_default", "10.3.0.0/24")


def directory() -> ServiceDirectory:
    result = ServiceDirectory()
    result.set(records_from_assignment(FRONT, [
        service("s-web", "web", "10.1.0.2/24"),
        service("s-rr", "rr", dnsrr=True),
        service("s-empty", "empty", "10.1.0.3/24"),
    ], [
        peer("t1", "s-web", "10.1.0.11/24", name="web.1.t1"),
        peer("t2", "s-web", "10.1.0.12/24", name="web.2.t2"),
        peer("t3", "s-web", "10.1.0.13/24", ready=False, name="web.3.t3"),
        peer("t4", "s-rr", "10.1.0.14/24", name="rr.1.t4"),
        peer("t5", "s-rr", "10.1.0.15/24", name="rr.2.t5"),
    ]))
    result.set(records_from_assignment(BACK, [
        service("s-db", "db", "10.2.0.2/24"),
        service("s-web", "web", "10.2.0.3/24"),
    ], [
        peer("t6", "s-db", "10.2.0.16/24", name="db.1.t6"),
        peer("t1b", "s-web", "10.2.0.11/24", name="web.1.t1"),
    ]))
    result.set(records_from_assignment(STACK, [
        service("s-api", "shop_api", "10.3.0.2/24", aliases=("api", "backend")),
        service("s-x", "shop_web", "10.3.0.4/24", aliases=("web", "shop_api"))],
                                       [peer("t7", "s-api", "10.3.0.17/24", name="shop_api.1.t7")]))
    return result


@pytest.mark.parametrize(("name", "networks", "outcome", "addresses"), [
    ("web", ["front"], Outcome.FOUND, ["10.1.0.2"]),  # vip mode: the VIP
    ("WEB.", ["front"], Outcome.FOUND, ["10.1.0.2"]),  # case-insensitive, absolute
    ("tasks.web", ["front"], Outcome.FOUND, ["10.1.0.11", "10.1.0.12"]),  # ready only
    ("rr", ["front"], Outcome.FOUND, ["10.1.0.14", "10.1.0.15"]),  # dnsrr: the tasks
    ("tasks.rr", ["front"], Outcome.FOUND, ["10.1.0.14", "10.1.0.15"]),
    ("empty", ["front"], Outcome.FOUND, ["10.1.0.3"]),  # a VIP even with no task
    ("tasks.empty", ["front"], Outcome.FOUND, []),  # known, nothing ready: no records
    ("web.3.t3", ["front"], Outcome.FOUND, ["10.1.0.13"]),  # task names, ready or not
    ("db", ["front"], Outcome.HIDDEN, []),  # only on a network the asker is not on
    ("db.1.t6", ["front"], Outcome.HIDDEN, []),
    ("db", ["front", "back"], Outcome.FOUND, ["10.2.0.2"]),
    ("web", ["back", "front"], Outcome.FOUND, ["10.2.0.3"]),  # the first network answers
    ("web.1.t1", ["back"], Outcome.FOUND, ["10.2.0.11"]),  # its address on that network
    ("example.org", ["front", "back"], Outcome.UNKNOWN, []),
    ("s-web", ["front"], Outcome.UNKNOWN, []),  # service IDs are not names (as docker)
    ("shop_api", ["shop_default"], Outcome.FOUND, ["10.3.0.2"]),  # a name wins over an alias
    ("api", ["shop_default"], Outcome.FOUND, ["10.3.0.2"]),  # and its aliases
    ("Backend", ["shop_default"], Outcome.FOUND, ["10.3.0.2"]),
    ("tasks.api", ["shop_default"], Outcome.FOUND, ["10.3.0.17"]),
    ("web", ["shop_default"], Outcome.FOUND, ["10.3.0.4"]),  # alias of shop_web
    ("web", ["front", "shop_default"], Outcome.FOUND, ["10.1.0.2"]),  # first network wins
    ("api", ["front"], Outcome.HIDDEN, []),
])
def test_directory_answers_per_asker(name: str, networks: list[str], outcome: Outcome,
                                     addresses: list[str]) -> None:
    got = directory().resolve(name, networks)
    assert got.outcome is outcome
    assert sorted(map(str, got.addresses)) == addresses


def test_backends_are_each_vip_with_its_ready_tasks() -> None:
    assert directory().backends(["front", "back"]) == {
        A("10.1.0.2"): (A("10.1.0.11"), A("10.1.0.12")),
        A("10.1.0.3"): (),
        A("10.2.0.2"): (A("10.2.0.16"),),
        A("10.2.0.3"): (A("10.2.0.11"),),
    }
    assert directory().backends(["nowhere"]) == {}


def test_the_ingress_network_has_no_names_and_no_vips() -> None:
    ingress = network("ingress", "10.0.0.0/24", ingress=True)
    records = records_from_assignment(ingress, [service("s-web", "web", "10.0.0.2/24")],
                                      [peer("t1", "s-web", "10.0.0.11/24")])
    assert dict(records.names) == {}
    assert dict(records.vips) == {}


def test_bad_addresses_are_left_out_not_fatal() -> None:
    records = records_from_assignment(FRONT, [service("s-web", "web", "not-an-ip")],
                                      [peer("t1", "s-web", "10.1.0.11/24"),
                                       peer("t2", "s-web", "bogus")])
    assert records.names["web"] == ()  # no VIP to give
    assert records.names["tasks.web"] == (A("10.1.0.11"),)


def test_normalize() -> None:
    assert normalize("Web.Example.") == "web.example"


# ---------------------------------------------------------------- discovery bookkeeping


def test_deltas_complete_sets_and_removed_networks_reach_the_directory() -> None:
    discovery = Discovery(Forwarder([]))
    web = service("s-web", "web", "10.1.0.2/24")
    discovery.apply(dpb.Assignments(type=dpb.Assignments.COMPLETE, networks=[
        entry(FRONT, [web], [peer("t1", "s-web", "10.1.0.11/24")]),
        entry(BACK, [], [])]))
    assert discovery.directory.backends(["front"]) == {A("10.1.0.2"): (A("10.1.0.11"),)}
    version = discovery.directory.version
    # A delta: t2 comes (not ready yet), t1 goes.
    discovery.apply(dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
        entry(FRONT, [web], [peer("t2", "s-web", "10.1.0.12/24", ready=False)], delta=True,
              removed=("t1",))]))
    assert discovery.directory.backends(["front"]) == {A("10.1.0.2"): ()}
    assert discovery.resolve("s-web-name.1.t2", ["front"]).addresses == (A("10.1.0.12"),)
    assert discovery.directory.version > version
    # The same again changes nothing.
    version = discovery.directory.version
    discovery.apply(dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
        entry(FRONT, [web], [peer("t2", "s-web", "10.1.0.12/24", ready=False)], delta=True)]))
    assert discovery.directory.version == version
    # Ready now.
    discovery.apply(dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
        entry(FRONT, [web], [peer("t2", "s-web", "10.1.0.12/24")], delta=True)]))
    assert discovery.resolve("tasks.web", ["front"]).addresses == (A("10.1.0.12"),)
    discovery.apply(dpb.Assignments(type=dpb.Assignments.INCREMENTAL, removed_networks=["back"]))
    assert discovery.directory.networks() == ["front"]
    # A complete set that does not name a network removes it.
    discovery.apply(dpb.Assignments(type=dpb.Assignments.COMPLETE))
    assert discovery.directory.networks() == []
    assert discovery.resolve("web", ["front"]).outcome is Outcome.UNKNOWN


# ---------------------------------------------------------------- DNS answers


def ask(name: str, rdtype: str = "A", networks: tuple[str, ...] = ("front",)
        ) -> dns.message.Message | None:
    query = dns.message.make_query(name, rdtype)
    d = directory()
    return local_answer(query, lambda n: d.resolve(n, networks))


def addresses(response: dns.message.Message | None) -> list[str]:
    assert response is not None
    return sorted(item.address for rrset in response.answer for item in rrset)


def test_dns_answers_from_the_directory() -> None:
    response = ask("tasks.web")
    assert response is not None
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert response.flags & dns.flags.RA
    assert addresses(response) == ["10.1.0.11", "10.1.0.12"]
    assert response.answer[0].ttl == 0
    assert addresses(ask("web.")) == ["10.1.0.2"]
    aaaa = ask("web", "AAAA")  # known, IPv4 only: NOERROR, no records
    assert aaaa is not None
    assert aaaa.rcode() == dns.rcode.NOERROR
    assert not aaaa.answer
    hidden = ask("db")
    assert hidden is not None
    assert hidden.rcode() == dns.rcode.NXDOMAIN
    assert ask("example.org") is None  # to be forwarded
    assert ask("tasks.empty") is not None
    assert addresses(ask("tasks.empty")) == []


@pytest.mark.parametrize(("address", "networks", "rcode", "name"), [
    ("10.1.0.12", ("front",), dns.rcode.NOERROR, "web.2.t2."),  # a task: its name
    ("10.1.0.2", ("front",), dns.rcode.NOERROR, "web."),  # a VIP: its service
    ("10.2.0.16", ("front",), dns.rcode.NXDOMAIN, ""),  # on a network not shared
    ("10.2.0.16", ("front", "back"), dns.rcode.NOERROR, "db.1.t6."),
])
def test_reverse_lookups_of_our_addresses(address: str, networks: tuple[str, ...],
                                          rcode: dns.rcode.Rcode, name: str) -> None:
    d = directory()
    query = dns.message.make_query(dns.reversename.from_address(address), "PTR")
    response = local_answer(query, lambda n: d.resolve(n, networks),
                            lambda a: d.name_of(a, networks))
    assert response is not None
    assert response.rcode() == rcode
    assert [item.target.to_text() for rrset in response.answer for item in rrset] == \
        ([name] if name else [])


def test_reverse_lookups_of_other_addresses_are_forwarded() -> None:
    d = directory()
    for name in (dns.reversename.from_address("192.0.2.1"), "1.0.10.in-addr.arpa."):
        query = dns.message.make_query(name, "PTR")
        assert local_answer(query, lambda n: d.resolve(n, ["front"]),
                            lambda a: d.name_of(a, ["front"])) is None


def test_dns_refuses_what_it_does_not_do() -> None:
    query = dns.message.make_query("web", "A")
    query.set_opcode(dns.opcode.UPDATE)
    response = local_answer(query, lambda n: directory().resolve(n, ["front"]))
    assert response is not None
    assert response.rcode() == dns.rcode.NOTIMP
    assert error_for_wire(b"\x12\x34\x01\x00 garbage!!", dns.rcode.FORMERR) is not None
    truncated = b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\xff"  # a question cut short
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(truncated)
    reply = error_for_wire(truncated, dns.rcode.FORMERR)
    assert reply is not None
    parsed = dns.message.from_wire(reply)
    assert parsed.id == 0x1234
    assert parsed.rcode() == dns.rcode.FORMERR
    assert error_for_wire(b"\x00", dns.rcode.FORMERR) is None  # not even a header
    assert error_for_wire(b"\x12\x34\x81\x00" + b"\x00" * 8, dns.rcode.FORMERR) is None  # a reply


def test_a_udp_answer_too_big_is_cut_with_tc() -> None:
    d = ServiceDirectory()
    d.set(records_from_assignment(network("big", "10.9.0.0/16".replace("/16", "/24")), [
        service("s", "many", dnsrr=True)],
        [peer(f"t{i}", "s", f"10.9.0.{i + 10}/24") for i in range(100)]))
    query = dns.message.make_query("many", "A")
    response = local_answer(query, lambda n: d.resolve(n, ["big"]))
    assert response is not None
    wire = to_udp_wire(response, 512)
    assert len(wire) <= 512
    cut = dns.message.from_wire(wire)
    assert cut.flags & dns.flags.TC
    assert 0 < len(cut.answer[0]) < 100


# ---------------------------------------------------------------- the ruleset


def test_ruleset_dnats_each_vip_and_rejects_those_without_backends() -> None:
    text = ruleset({A("10.1.0.2"): [A("10.1.0.12"), A("10.1.0.11")], A("10.1.0.3"): [],
                    A("10.1.0.4"): [A("10.1.0.14")]})
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:2] == ["table ip swarm-lb", "delete table ip swarm-lb"]  # atomic replace
    assert ("ip daddr 10.1.0.2 dnat to numgen random mod 2 map "
            "{ 0 : 10.1.0.11, 1 : 10.1.0.12 }") in lines
    assert "ip daddr 10.1.0.4 dnat to 10.1.0.14" in lines
    assert "ip daddr 10.1.0.3 meta l4proto tcp reject with tcp reset" in lines
    assert "ip daddr 10.1.0.3 reject with icmp type port-unreachable" in lines
    assert ruleset({}) == "table ip swarm-lb\ndelete table ip swarm-lb\n"  # no VIP: no table
    with_dns = ruleset({}, DnsRedirect("127.0.0.11", 53, 40001, 40002))
    assert "ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:40001" in with_dns
    assert "ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:40002" in with_dns
    # Deterministic: the same backends in any order give the same text.
    assert text == ruleset({A("10.1.0.4"): [A("10.1.0.14")], A("10.1.0.3"): [],
                            A("10.1.0.2"): [A("10.1.0.11"), A("10.1.0.12")]})


def test_gone_backends_are_those_that_left_their_vip() -> None:
    before = {A("10.1.0.2"): (A("10.1.0.11"), A("10.1.0.12")), A("10.1.0.3"): (A("10.1.0.13"),)}
    assert gone_backends(before, {A("10.1.0.2"): (A("10.1.0.12"), A("10.1.0.14"))}) == {
        A("10.1.0.2"): {A("10.1.0.11")}, A("10.1.0.3"): {A("10.1.0.13")}}
    assert gone_backends(before, before) == {}
    assert gone_backends({}, before) == {}


# ---------------------------------------------------------------- upstreams


@pytest.mark.parametrize(("text", "host", "port"), [
    ("10.0.0.2", "10.0.0.2", 53), ("10.0.0.2:5353", "10.0.0.2", 5353),
    ("::1", "::1", 53), ("[::1]:5353", "::1", 5353), (" 127.0.0.1 ", "127.0.0.1", 53),
])
def test_upstream_parse(text: str, host: str, port: int) -> None:
    assert Upstream.parse(text) == Upstream(host, port)


@pytest.mark.parametrize("text", ["dns.example", "10.0.0.2:0", "10.0.0.2:99999", "[::1",
                                  "10.0.0.2:x", ""])
def test_upstream_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"address|port|expected"):
        Upstream.parse(text)


def test_upstreams_from_resolv_conf_keep_loopback_and_three_at_most() -> None:
    text = ("# comment\nnameserver 127.0.0.53\nsearch x\nnameserver fe80::1%eth0\n"
            "nameserver bogus\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n")
    assert upstreams_from_resolv_conf(text) == [Upstream("127.0.0.53"), Upstream("fe80::1"),
                                                Upstream("10.0.0.2")]


def test_agent_dns_forwarder_flags(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--controller", "127.0.0.1:2377", "--state-dir", "/tmp/swarm-agent-test-flags",
            "--advertise-addr", "127.0.0.1"]
    assert parse_args(base).dns_forwarders is None
    assert parse_args([*base, "--dns-forwarder", "10.0.0.2", "--dns-forwarder",
                       "127.0.0.1:5353"]).dns_forwarders == (Upstream("10.0.0.2"),
                                                             Upstream("127.0.0.1", 5353))
    assert parse_args([*base, "--dns-forwarder", "none"]).dns_forwarders == ()
    for bad, message in ((["--dns-forwarder", "dns.example"], "not an IP address"),
                         (["--dns-forwarder", "none", "--dns-forwarder", "10.0.0.2"],
                          "cannot be combined")):
        with pytest.raises(SystemExit) as exit_info:
            parse_args([*base, *bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err
        assert "--dns-forwarder" in err
        assert err.count("\n") == 1
