"""How objects are laid out in etcd: one key per object, protobuf values.

    {prefix}nodes/{id}  services/{id}  tasks/{id}  networks/{id}  clusters/{id}
    {prefix}secrets/{id}  configs/{id}     payloads sealed with the cluster data key
    {prefix}names/{kind}/{name} -> id      unique names (services, networks, secrets, configs)
    {prefix}leader                         the leading controller (leased)
    {prefix}controllers/{addr}             a running controller (ControllerInfo, leased)
    {prefix}ipam/addr/{network}/{ip} -> owner  an address handed out ("task/ID", "vip/ID")
    {prefix}ipam/vni/{vni} -> network id
    {prefix}ipam/subnet/{bits} -> network id   a subnet, named by its prefix bits
    {prefix}ipam/port/{protocol}/{port} -> service id   a port published in ingress mode

A stored object's meta.version is the key's mod_revision, filled in on read.
"""

from __future__ import annotations

from typing import TypeAlias

from swarm.api.v1 import objects_pb2 as pb

StoredObject: TypeAlias = (pb.Node | pb.Service | pb.Task | pb.Network | pb.Cluster
                           | pb.Secret | pb.Config)

KIND_TYPES: dict[str, type[StoredObject]] = {
    "nodes": pb.Node,
    "services": pb.Service,
    "tasks": pb.Task,
    "networks": pb.Network,
    "clusters": pb.Cluster,
    "secrets": pb.Secret,
    "configs": pb.Config,
}
_KIND_OF_TYPE = {message_type: kind for kind, message_type in KIND_TYPES.items()}


def kind_of(obj: StoredObject) -> str:
    return _KIND_OF_TYPE[type(obj)]


class Keys:
    def __init__(self, prefix: str) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix.encode()
        self.leader = self.prefix + b"leader"
        self._names = self.prefix + b"names/"
        self.controllers = self.prefix + b"controllers/"

    def controller(self, addr: str) -> bytes:
        return self.controllers + addr.encode()

    def object(self, kind: str, object_id: str) -> bytes:
        return self.objects(kind) + object_id.encode()

    def objects(self, kind: str) -> bytes:
        """The prefix of every object of a kind."""
        return self.prefix + kind.encode() + b"/"

    def of(self, obj: StoredObject) -> bytes:
        return self.object(kind_of(obj), obj.id)

    def name(self, kind: str, name: str) -> bytes:
        return self._names + kind.encode() + b"/" + name.encode()

    # IPAM records: raw keys, not objects (the watch cache ignores them).

    @property
    def ipam(self) -> bytes:
        return self.prefix + b"ipam/"

    def address(self, network_id: str, ip: str) -> bytes:
        """ip is a plain dotted address (no prefix length)."""
        return self.network_addresses(network_id) + ip.encode()

    def network_addresses(self, network_id: str) -> bytes:
        return self.ipam + b"addr/" + network_id.encode() + b"/"

    def vni(self, vni: int) -> bytes:
        return self.ipam + b"vni/" + str(vni).encode()

    def subnet(self, bits: str) -> bytes:
        return self.ipam + b"subnet/" + bits.encode()

    def port(self, protocol: int, port: int) -> bytes:
        """A published (routing-mesh) port: protocol is PortConfig.Protocol."""
        return self.ipam + b"port/" + str(protocol).encode() + b"/" + str(port).encode()

    def parse(self, key: bytes) -> tuple[str, str] | None:
        """(kind, id) of an object key; None for names, the leader key and strangers."""
        if not key.startswith(self.prefix):
            return None
        kind, _, object_id = key[len(self.prefix):].decode().partition("/")
        if kind not in KIND_TYPES or not object_id or "/" in object_id:
            return None
        return kind, object_id


def decode(kind: str, value: bytes, mod_revision: int) -> StoredObject:
    obj = KIND_TYPES[kind].FromString(value)
    obj.meta.version = mod_revision
    return obj
