"""The words operators type for enumerated API values (`--update-order
start-first`, compose `order: start-first`), each mapped to its proto value:
one table per enum, shared by the flags and the compose loader."""

from __future__ import annotations

from swarm.api.v1 import objects_pb2 as pb

PROTOCOLS: dict[str, pb.PortConfig.Protocol.ValueType] = {
    "tcp": pb.PortConfig.TCP, "udp": pb.PortConfig.UDP, "sctp": pb.PortConfig.SCTP}
PUBLISH_MODES: dict[str, pb.PortConfig.PublishMode.ValueType] = {
    "ingress": pb.PortConfig.INGRESS, "host": pb.PortConfig.HOST}
PROXY_PROTOCOLS: dict[str, pb.PortConfig.ProxyProtocol.ValueType] = {
    "none": pb.PortConfig.PROXY_NONE, "v2": pb.PortConfig.PROXY_V2}
RESTART_CONDITIONS: dict[str, pb.RestartPolicy.Condition.ValueType] = {
    "any": pb.RestartPolicy.ANY, "on-failure": pb.RestartPolicy.ON_FAILURE,
    "none": pb.RestartPolicy.NONE}
FAILURE_ACTIONS: dict[str, pb.UpdateConfig.FailureAction.ValueType] = {
    "pause": pb.UpdateConfig.PAUSE, "continue": pb.UpdateConfig.CONTINUE,
    "rollback": pb.UpdateConfig.ROLLBACK}
ORDERS: dict[str, pb.UpdateConfig.Order.ValueType] = {
    "start-first": pb.UpdateConfig.START_FIRST, "stop-first": pb.UpdateConfig.STOP_FIRST}
ENDPOINT_MODES: dict[str, pb.EndpointSpec.Mode.ValueType] = {
    "vip": pb.EndpointSpec.VIP, "dnsrr": pb.EndpointSpec.DNSRR}
MOUNT_TYPES: dict[str, pb.Mount.Type.ValueType] = {
    "volume": pb.Mount.VOLUME, "bind": pb.Mount.BIND, "tmpfs": pb.Mount.TMPFS}
