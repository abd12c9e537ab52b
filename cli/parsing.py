"""Pure parsers for the values typed on swarmctl's command line.

Every parser takes the flag it serves, so that a bad value is reported as one
line naming it ("--limit-memory: invalid size 'lots': ..."), and raises
BadFlag (exit status 2) before anything is sent to a controller.
"""

from __future__ import annotations

import csv
import ipaddress
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import TypeVar

from swarm.api import units
from swarm.api.v1 import objects_pb2 as pb

from .choices import MOUNT_TYPES, PROTOCOLS, PROXY_PROTOCOLS, PUBLISH_MODES
from .errors import BadFlag, BadInput

T = TypeVar("T")

_COUNT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
_CONSTRAINT_RE = re.compile(r"^\s*([^=!\s]+)\s*(==|!=)\s*(\S.*?)\s*$")
_SCALE_RE = re.compile(r"^([^=\s]+)=(.*)$")
# The controller's rule for a volume name (controller/api/validation.py), checked here too
# so that a bad one is refused before anything is sent; tests/unit/test_cli.py keeps the
# two in step.
VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_TRUE = {"", "1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def count(flag: str, text: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """A whole number within bounds ('3' -> 3)."""
    if not _COUNT_RE.match(text):
        raise BadFlag(flag, f"invalid number {text!r}: expected a whole number")
    value = int(text)
    if value < minimum:
        raise BadFlag(flag, f"invalid number {text!r}: must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise BadFlag(flag, f"invalid number {text!r}: must be at most {maximum}")
    return value


def ratio(flag: str, text: str) -> float:
    """A fraction between 0 and 1 ('0.2')."""
    try:
        value = float(text)
    except ValueError:
        raise BadFlag(flag, f"invalid ratio {text!r}: expected a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise BadFlag(flag, f"invalid ratio {text!r}: expected a number between 0 and 1")
    return value


def memory(flag: str, text: str) -> int:
    """A docker-style size in bytes ('512M', '1g')."""
    try:
        return units.parse_memory(text)
    except ValueError as error:
        raise BadFlag(flag, str(error)) from None


def cpus(flag: str, text: str) -> int:
    """A CPU count in nano CPUs ('0.5' -> 500000000)."""
    try:
        return units.parse_cpus(text)
    except ValueError as error:
        raise BadFlag(flag, str(error)) from None


def duration(flag: str, text: str) -> int:
    """A Go-style duration in nanoseconds ('1m30s')."""
    try:
        return units.parse_duration(text)
    except ValueError as error:
        raise BadFlag(flag, str(error)) from None


def choice(flag: str, text: str, options: Mapping[str, T]) -> T:
    """One of a fixed set of words, case-insensitively."""
    try:
        return options[text.strip().lower()]
    except KeyError:
        allowed = ", ".join(options)
        raise BadFlag(flag, f"invalid value {text!r}: expected one of {allowed}") from None


def key_value(flag: str, text: str, *, value_required: bool = True) -> tuple[str, str]:
    """'KEY=VALUE' -> (KEY, VALUE); a bare 'KEY' is (KEY, '') when allowed."""
    key, sep, value = text.partition("=")
    if not key.strip() or key != key.strip():
        raise BadFlag(flag, f"invalid {text!r}: expected KEY=VALUE with a non-empty key")
    if not sep and value_required:
        raise BadFlag(flag, f"invalid {text!r}: expected KEY=VALUE")
    return key, value


def key_only(flag: str, text: str) -> str:
    """A key to remove (labels, environment variables)."""
    if not text.strip() or "=" in text:
        raise BadFlag(flag, f"invalid key {text!r}: expected a name such as FOO")
    return text.strip()


def constraint(flag: str, text: str) -> str:
    """A placement constraint 'node.labels.zone==east', normalised to no spaces."""
    match = _CONSTRAINT_RE.match(text)
    if not match:
        raise BadFlag(flag, f"invalid constraint {text!r}: expected KEY==VALUE or KEY!=VALUE, "
                      "e.g. node.role==manager")
    return f"{match.group(1)}{match.group(2)}{match.group(3)}"


def placement_pref(flag: str, text: str) -> str:
    """'spread=node.labels.zone' -> the label path to spread over."""
    strategy, sep, target = text.partition("=")
    if not sep or strategy.strip() != "spread" or not target.strip():
        raise BadFlag(flag, f"invalid placement preference {text!r}: "
                      "expected spread=node.labels.KEY")
    return target.strip()


def shell_words(flag: str, text: str) -> list[str]:
    """A command line as a shell would split it."""
    try:
        return shlex.split(text)
    except ValueError as error:
        raise BadFlag(flag, f"invalid command {text!r}: {error}") from None


def _csv_fields(flag: str, text: str) -> list[tuple[str, str | None]]:
    """'a=1,b,c=3' -> [('a', '1'), ('b', None), ('c', '3')], honouring quotes."""
    try:
        fields = next(csv.reader([text], skipinitialspace=True))
    except (csv.Error, StopIteration) as error:
        raise BadFlag(flag, f"invalid {text!r}: {error}") from None
    pairs: list[tuple[str, str | None]] = []
    for field in fields:
        key, sep, value = field.partition("=")
        pairs.append((key.strip().lower(), value.strip() if sep else None))
    return pairs


def _port_number(flag: str, text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadFlag(flag, f"invalid {what} port {text!r}: expected a number from 1 to 65535")
    return int(text)


def port_config(flag: str, text: str) -> pb.PortConfig:
    """'8080:80', '8080:80/udp', '80' or 'published=8080,target=80,protocol=tcp,mode=host'
    (also proxy-protocol=v2: ingress TCP ports, see PortConfig.proxy_protocol)."""
    port = pb.PortConfig()
    if "=" in text:
        for key, value in _csv_fields(flag, text):
            if value is None or not value:
                raise BadFlag(flag, f"invalid {text!r}: {key!r} needs a value")
            if key == "target":
                port.target_port = _port_number(flag, value, "target")
            elif key == "published":
                port.published_port = _port_number(flag, value, "published")
            elif key == "protocol":
                port.protocol = choice(flag, value, PROTOCOLS)
            elif key == "mode":
                port.publish_mode = choice(flag, value, PUBLISH_MODES)
            elif key == "name":
                port.name = value
            elif key == "proxy-protocol":
                port.proxy_protocol = choice(flag, value, PROXY_PROTOCOLS)
            else:
                raise BadFlag(flag, f"invalid {text!r}: unknown key {key!r} "
                              "(expected published, target, protocol, mode, proxy-protocol)")
        if not port.target_port:
            raise BadFlag(flag, f"invalid {text!r}: target=PORT is required")
        return port
    ports, _, protocol = text.strip().partition("/")
    if protocol:
        port.protocol = choice(flag, protocol, PROTOCOLS)
    published, sep, target = ports.rpartition(":")
    if sep and not published:
        raise BadFlag(flag, f"invalid {text!r}: expected [PUBLISHED:]TARGET[/PROTOCOL], "
                      "e.g. 8080:80")
    if ":" in published:
        raise BadFlag(flag, f"invalid {text!r}: expected [PUBLISHED:]TARGET[/PROTOCOL], "
                      "e.g. 8080:80 (a host IP cannot be given)")
    port.target_port = _port_number(flag, target, "target")
    if published:
        port.published_port = _port_number(flag, published, "published")
    return port


def _truthy(flag: str, key: str, value: str | None) -> bool:
    if value is None or value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise BadFlag(flag, f"invalid value {value!r} for {key!r}: expected true or false")


def mount(flag: str, text: str) -> pb.Mount:
    """'type=volume,source=data,target=/data[,readonly]' (also bind and tmpfs)."""
    result = pb.Mount(type=pb.Mount.VOLUME)
    for key, value in _csv_fields(flag, text):
        if key in ("readonly", "ro"):
            result.read_only = _truthy(flag, key, value)
            continue
        if not value:
            raise BadFlag(flag, f"invalid {text!r}: {key!r} needs a value")
        if key == "type":
            result.type = choice(flag, value, MOUNT_TYPES)
        elif key in ("source", "src"):
            result.source = value
        elif key in ("target", "destination", "dst"):
            result.target = value
        elif key == "tmpfs-size":
            result.tmpfs_size_bytes = memory(flag, value)
        else:
            raise BadFlag(flag, f"invalid {text!r}: unknown key {key!r} "
                          "(expected type, source, target, readonly, tmpfs-size)")
    if not result.target:
        raise BadFlag(flag, f"invalid {text!r}: target=PATH is required")
    if not result.target.startswith("/"):
        raise BadFlag(flag, f"invalid {text!r}: the target {result.target!r} must be an "
                      "absolute path")
    if (result.type == pb.Mount.VOLUME and result.source
            and not VOLUME_NAME_RE.fullmatch(result.source)):
        # No source at all is fine: an anonymous volume, made and removed with each
        # container, as `docker service create --mount type=volume,target=/x` does.
        raise BadFlag(flag, f"invalid {text!r}: a volume name is letters, digits, '_', '.' "
                      "or '-', starting with a letter or digit; leave source out for an "
                      "anonymous volume")
    if result.type == pb.Mount.BIND and not result.source.startswith("/"):
        raise BadFlag(flag, f"invalid {text!r}: a bind mount needs an absolute source=PATH")
    if result.type == pb.Mount.TMPFS and result.source:
        raise BadFlag(flag, f"invalid {text!r}: a tmpfs mount takes no source")
    if result.type != pb.Mount.TMPFS and result.tmpfs_size_bytes:
        raise BadFlag(flag, f"invalid {text!r}: tmpfs-size applies to type=tmpfs only")
    return result


def network_attachment(flag: str, text: str) -> pb.NetworkAttachmentConfig:
    """'NET' or 'name=NET,alias=web,alias=www'."""
    if "=" not in text:
        if not text.strip():
            raise BadFlag(flag, "expected a network name or ID")
        return pb.NetworkAttachmentConfig(target=text.strip())
    attachment = pb.NetworkAttachmentConfig()
    for key, value in _csv_fields(flag, text):
        if not value:
            raise BadFlag(flag, f"invalid {text!r}: {key!r} needs a value")
        if key in ("name", "target"):
            attachment.target = value
        elif key == "alias":
            attachment.aliases.append(value)
        else:
            raise BadFlag(flag, f"invalid {text!r}: unknown key {key!r} (expected name, alias)")
    if not attachment.target:
        raise BadFlag(flag, f"invalid {text!r}: name=NETWORK is required")
    return attachment


def cidr(flag: str, text: str) -> str:
    """An IPv4 or IPv6 subnet in CIDR form, with no host bits set."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=True))
    except ValueError as error:
        raise BadFlag(flag, f"invalid subnet {text!r}: {error}") from None


def ip_address(flag: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError as error:
        raise BadFlag(flag, f"invalid address {text!r}: {error}") from None


def scale_argument(text: str) -> tuple[str, int]:
    """'web=3' -> ('web', 3), as `service scale` takes them."""
    match = _SCALE_RE.match(text)
    if not match:
        raise BadInput(f"invalid scale argument {text!r}: expected SERVICE=REPLICAS, e.g. web=3")
    name, replicas = match.groups()
    if not _COUNT_RE.match(replicas) or int(replicas) < 0:
        raise BadInput(f"invalid scale argument {text!r}: replicas must be a whole number "
                       "of 0 or more")
    return name, int(replicas)


def parse_filters(flag: str, values: Sequence[str], allowed: Sequence[str]) -> dict[str, list[str]]:
    """['name=web', 'label=tier=front'] -> {'name': ['web'], 'label': ['tier=front']}."""
    found: dict[str, list[str]] = {}
    for text in values:
        key, sep, value = text.partition("=")
        key = key.strip().lower()
        if not sep or key not in allowed or not value.strip():
            raise BadFlag(flag, f"invalid filter {text!r}: expected KEY=VALUE with KEY one of "
                          f"{', '.join(allowed)}")
        found.setdefault(key, []).append(value.strip())
    return found
