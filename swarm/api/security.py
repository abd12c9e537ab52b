"""A service's security options (`--security-opt`, compose `security_opt`)
and the check of a seccomp profile, shared by swarmctl (which reads and
checks a profile file before anything is sent) and the agent (which checks
again what it is given before building a container's config).

    seccomp=unconfined | seccomp=default | seccomp=FILE   (also seccomp:VALUE)
    apparmor=unconfined | apparmor=default
    no-new-privileges[=true|false]

A profile is JSON in Docker's format (see agent/runtime/seccomp.py); it is
kept compact in the spec. Each error is one line naming the problem; the
caller prefixes the flag or key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from swarm.api.v1 import objects_pb2 as pb

MAX_PROFILE_BYTES = 256 * 1024  # Docker's default profile is about 20 KiB of JSON

ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG",
})  # SCMP_ACT_NOTIFY needs a seccomp agent listening: not offered
OPERATORS = frozenset({"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ",
                       "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"})
FLAGS = frozenset({"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                   "SECCOMP_FILTER_FLAG_SPEC_ALLOW"})
_SECCOMP_MODES = {"unconfined": pb.Privileges.Seccomp.UNCONFINED,
                  "default": pb.Privileges.Seccomp.DEFAULT,
                  "builtin": pb.Privileges.Seccomp.DEFAULT}
_APPARMOR_MODES = {"unconfined": pb.Privileges.AppArmor.DISABLED,
                   "default": pb.Privileges.AppArmor.DEFAULT}
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class BadProfile(ValueError):
    """Not a seccomp profile we can use."""


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadProfile(f"{where}: expected a list of non-empty strings")
    return value


def _uint(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadProfile(f"{where}: expected a non-negative integer, got {json.dumps(value)}")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadProfile(f"{where}: expected an object")
    return value


def _action(value: Any, where: str) -> str:
    if value not in ACTIONS:
        raise BadProfile(f"{where}: unknown action {json.dumps(value)} (expected one of "
                         f"{', '.join(sorted(ACTIONS))})")
    return str(value)


def _condition(value: Any, where: str) -> None:
    condition = _object(value, where)
    for key, item in condition.items():
        if key in ("caps", "arches"):
            _strings(item, f"{where}.{key}")
        elif key == "minKernel":
            if not isinstance(item, str) or not all(p.isdigit() for p in item.split(".")):
                raise BadProfile(f"{where}.minKernel: expected a version such as \"4.8\"")
        else:
            raise BadProfile(f"{where}: unknown key {json.dumps(key)}")


def check_profile(data: bytes | str) -> dict[str, Any]:
    """The profile, parsed and checked; raises BadProfile (one line)."""
    if len(data) > MAX_PROFILE_BYTES:
        raise BadProfile(f"too large ({len(data)} bytes; at most {MAX_PROFILE_BYTES})")
    try:
        profile = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadProfile(f"not valid JSON: {error}") from None
    top = _object(profile, "the profile")
    if "defaultAction" not in top:
        raise BadProfile("defaultAction: required")
    _action(top["defaultAction"], "defaultAction")
    for key, value in top.items():
        if key == "defaultErrnoRet":
            _uint(value, key)
        elif key == "architectures":
            _strings(value, key)
        elif key == "flags":
            for flag in _strings(value, key):
                if flag not in FLAGS:
                    raise BadProfile(f"flags: unknown flag {json.dumps(flag)}")
        elif key == "archMap":
            if not isinstance(value, list):
                raise BadProfile("archMap: expected a list")
            for index, entry in enumerate(value):
                item = _object(entry, f"archMap[{index}]")
                if not isinstance(item.get("architecture"), str):
                    raise BadProfile(f"archMap[{index}].architecture: required")
                _strings(item.get("subArchitectures", []),
                         f"archMap[{index}].subArchitectures")
        elif key == "syscalls":
            if not isinstance(value, list):
                raise BadProfile("syscalls: expected a list")
            for index, entry in enumerate(value):
                _check_rule(entry, f"syscalls[{index}]")
        elif key in ("defaultAction", "comment"):
            continue
        else:
            raise BadProfile(f"unknown key {json.dumps(key)}")
    return dict(top)


def _check_rule(entry: Any, where: str) -> None:
    rule = _object(entry, where)
    if "names" in rule:
        if not _strings(rule["names"], f"{where}.names"):
            raise BadProfile(f"{where}.names: must not be empty")
    elif not isinstance(rule.get("name"), str) or not rule["name"]:
        raise BadProfile(f"{where}: names: required")
    if "action" not in rule:
        raise BadProfile(f"{where}.action: required")
    _action(rule["action"], f"{where}.action")
    for key, value in rule.items():
        if key == "errnoRet":
            _uint(value, f"{where}.errnoRet")
        elif key == "args":
            if value is None:
                continue
            if not isinstance(value, list) or len(value) > 6:
                raise BadProfile(f"{where}.args: expected a list of at most 6 conditions")
            for number, arg in enumerate(value):
                at = f"{where}.args[{number}]"
                condition = _object(arg, at)
                if _uint(condition.get("index"), f"{at}.index") > 5:
                    raise BadProfile(f"{at}.index: at most 5")
                _uint(condition.get("value"), f"{at}.value")
                if "valueTwo" in condition:
                    _uint(condition["valueTwo"], f"{at}.valueTwo")
                if condition.get("op") not in OPERATORS:
                    raise BadProfile(f"{at}.op: expected one of {', '.join(sorted(OPERATORS))}")
        elif key in ("includes", "excludes"):
            _condition(value, f"{where}.{key}")
        elif key not in ("names", "name", "action", "comment"):
            raise BadProfile(f"{where}: unknown key {json.dumps(key)}")


def compact_profile(profile: Mapping[str, Any]) -> bytes:
    return json.dumps(profile, separators=(",", ":"), sort_keys=True).encode()


def apply_security_opt(privileges: pb.Privileges, text: str,
                       read_file: Callable[[str], bytes]) -> None:
    """One `--security-opt` value applied to `privileges`; raises ValueError
    (one line). `read_file` reads a seccomp profile's path (relative to the
    caller's directory) or raises OSError."""
    stripped = text.strip()
    cut = min((stripped.find(c) for c in "=:" if c in stripped), default=-1)
    key, sep, value = (stripped, "", "") if cut < 0 else (
        stripped[:cut], stripped[cut], stripped[cut + 1:])
    key = key.strip().lower()
    value = value.strip()
    if key == "no-new-privileges":
        if not sep:
            privileges.no_new_privileges = True
            return
        if value.lower() not in _TRUE:
            raise ValueError(f"no-new-privileges: expected true or false, got {value!r}")
        privileges.no_new_privileges = _TRUE[value.lower()]
        return
    if not sep or not value:
        raise ValueError(f"expected seccomp=unconfined|default|FILE, apparmor=unconfined|"
                         f"default or no-new-privileges, got {text!r}")
    if key == "seccomp":
        mode = _SECCOMP_MODES.get(value.lower())
        if mode is not None:
            privileges.seccomp.CopyFrom(pb.Privileges.Seccomp(mode=mode))
            return
        try:
            data = read_file(value)
        except OSError as error:
            raise ValueError(f"seccomp profile {value}: cannot read it: "
                             f"{error.strerror or error}") from None
        try:
            profile = check_profile(data)
        except BadProfile as error:
            raise ValueError(f"seccomp profile {value}: {error}") from None
        privileges.seccomp.CopyFrom(pb.Privileges.Seccomp(
            mode=pb.Privileges.Seccomp.CUSTOM, profile=compact_profile(profile)))
    elif key == "apparmor":
        apparmor = _APPARMOR_MODES.get(value.lower())
        if apparmor is None:
            raise ValueError(f"apparmor: expected unconfined or default, got {value!r} "
                             "(the nodes load one profile of their own)")
        privileges.apparmor.mode = apparmor
    else:
        raise ValueError(f"unknown security option {key!r} (expected seccomp, apparmor or "
                         "no-new-privileges)")
