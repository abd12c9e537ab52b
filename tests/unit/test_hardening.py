"""Isolation and bounded logs, the pure parts: the default seccomp profile and
its resolution per capability set, architecture and kernel; the security
and log options (flags, compose, controller validation); the config.json
pieces; the log rotation and the reader across rotated files; AppArmor's
decision. The real containers are in tests/agent/test_hardening.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from swarm.agent import apparmor
from swarm.agent.logfile import LogFile, keep_rotated, log_chain, log_files
from swarm.agent.runtime import RejectError, seccomp, spec
from swarm.api import logopts, security, validation
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.main import app
from swarm.cli.service.options import ServiceOptions, ServiceUpdateOptions
from swarm.cli.service.spec import service_spec_from_options, updated_service_spec
from tests.unit.test_compose import parse, web
from tests.unit.test_logs import record

X86 = "SCMP_ARCH_X86_64"
KERNEL = (6, 1)
MiB = 1024 * 1024


def _allowed(config: dict[str, Any]) -> set[str]:
    """Names with an unconditional ALLOW rule."""
    return {name for rule in config["syscalls"] if rule["action"] == seccomp.ALLOW
            and not rule.get("args") for name in rule["names"]}


def _rules(config: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in config["syscalls"] if name in rule["names"]]


# ---------------------------------------------------------------- the default profile


def test_default_profile_is_an_allow_list_without_the_dangerous_calls() -> None:
    config = seccomp.resolve(seccomp.default_profile(), spec.DEFAULT_CAPABILITIES, arch=X86,
                             kernel=KERNEL)
    assert config["defaultAction"] == "SCMP_ACT_ERRNO"
    assert config["defaultErrnoRet"] == seccomp.EPERM
    assert config["architectures"] == [X86]  # no 32-bit or x32 compat calls
    allowed = _allowed(config)
    for name in ("read", "write", "openat", "execve", "futex", "epoll_wait",
                 "socketpair", "arch_prctl", "chroot", "ptrace", "setuid", "io_submit"):
        assert name in allowed, name
    every = {name for rule in config["syscalls"] for name in rule["names"]}
    for name in ("keyctl", "add_key", "request_key", "mount", "umount2", "unshare", "setns",
                 "bpf", "perf_event_open", "kexec_load", "init_module", "reboot",
                 "userfaultfd", "io_uring_setup", "swapon", "pivot_root", "open_by_handle_at",
                 "clock_settime", "acct", "syslog", "iopl"):
        assert name not in allowed, name
        if name != "clone3":
            assert name not in every, name
    # clone only without namespace flags; clone3 answered ENOSYS (libc falls back to clone).
    (clone,) = _rules(config, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = _rules(config, "clone3")
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", seccomp.ENOSYS)
    personalities = sorted(r["args"][0]["value"] for r in _rules(config, "personality"))
    assert personalities == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    (socket,) = _rules(config, "socket")
    assert socket["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    json.dumps(config)


def test_capabilities_open_their_groups() -> None:
    admin = seccomp.resolve(seccomp.default_profile(),
                            (*spec.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"), arch=X86, kernel=KERNEL)
    allowed = _allowed(admin)
    for name in ("mount", "unshare", "setns", "clone", "clone3", "sethostname"):
        assert name in allowed, name
    assert not [r for r in admin["syscalls"] if r["action"] != seccomp.ALLOW and
                "clone3" in r["names"]]
    nothing = seccomp.resolve(seccomp.default_profile(), (), arch=X86, kernel=KERNEL)
    assert "chroot" not in _allowed(nothing)  # CAP_SYS_CHROOT is one of the defaults
    assert "keyctl" not in _allowed(admin)  # no capability opens the keyring


def test_arch_and_kernel_conditions() -> None:
    arm = seccomp.resolve(seccomp.default_profile(), spec.DEFAULT_CAPABILITIES,
                          arch="SCMP_ARCH_AARCH64", kernel=KERNEL)
    assert "arch_prctl" not in _allowed(arm)
    assert "cacheflush" in _allowed(arm)
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64"]
    custom = {"defaultAction": "SCMP_ACT_ALLOW", "archMap": [
        {"architecture": X86, "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}]}
    assert seccomp.resolve(custom, (), arch=X86, kernel=KERNEL)["architectures"] == [
        X86, "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    s390 = seccomp.resolve(seccomp.default_profile(), (), arch="SCMP_ARCH_S390X", kernel=KERNEL)
    assert [r["args"][0]["index"] for r in _rules(s390, "clone")] == [1]
    old = seccomp.resolve(seccomp.default_profile(), (), arch=X86, kernel=(4, 4))
    assert "ptrace" not in _allowed(old)
    assert seccomp.kernel_version("6.18.44-fc-v1272") == (6, 18)
    assert seccomp.native_arch("x86_64") == X86


def test_the_default_profile_passes_its_own_check() -> None:
    security.check_profile(json.dumps(seccomp.default_profile()))


# ---------------------------------------------------------------- config.json


def _plan(security_plan: spec.SecurityPlan | None) -> spec.ContainerPlan:
    return spec.ContainerPlan(
        hostname="h", process=spec.ProcessPlan(("/bin/sh",), (), "/", ""), user=spec.User(0, 0),
        rootfs="/r", read_only=False, mounts=(), files=(), netns_path="/n", cgroups_path="/c",
        resources={}, security=security_plan)


def test_config_gets_seccomp_apparmor_and_no_new_privileges() -> None:
    plan = spec.plan_security(pb.Privileges(), apparmor_profile="swarm-default", arch=X86,
                              kernel=KERNEL)
    config = spec.build_config(_plan(plan))
    assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert config["process"]["apparmorProfile"] == "swarm-default"
    assert config["process"]["noNewPrivileges"] is False  # as Docker, unless asked
    assert "/proc/interrupts" in config["linux"]["maskedPaths"]
    privileges = pb.Privileges(no_new_privileges=True)
    privileges.seccomp.mode = pb.Privileges.Seccomp.UNCONFINED
    privileges.apparmor.mode = pb.Privileges.AppArmor.DISABLED
    config = spec.build_config(_plan(spec.plan_security(
        privileges, apparmor_profile="swarm-default", arch=X86, kernel=KERNEL)))
    assert "seccomp" not in config["linux"]
    assert "apparmorProfile" not in config["process"]
    assert config["process"]["noNewPrivileges"] is True


def test_a_bad_custom_profile_is_rejected_by_the_agent() -> None:
    privileges = pb.Privileges()
    privileges.seccomp.mode = pb.Privileges.Seccomp.CUSTOM
    privileges.seccomp.profile = b"{not json"
    with pytest.raises(RejectError, match="invalid seccomp profile: not valid JSON"):
        spec.plan_security(privileges, apparmor_profile="", arch=X86, kernel=KERNEL)


# ---------------------------------------------------------------- --security-opt


def _apply(*options: str, files: dict[str, bytes] | None = None) -> pb.Privileges:
    privileges = pb.Privileges()

    def read(path: str) -> bytes:
        if files is None or path not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[path]

    for option in options:
        security.apply_security_opt(privileges, option, read)
    return privileges


def test_security_opts() -> None:
    assert _apply("seccomp=unconfined").seccomp.mode == pb.Privileges.Seccomp.UNCONFINED
    assert _apply("seccomp:unconfined", "seccomp=default").seccomp.mode == \
        pb.Privileges.Seccomp.DEFAULT
    assert _apply("no-new-privileges").no_new_privileges
    assert not _apply("no-new-privileges", "no-new-privileges=false").no_new_privileges
    assert _apply("no-new-privileges:true").no_new_privileges
    assert _apply("apparmor=unconfined").apparmor.mode == pb.Privileges.AppArmor.DISABLED
    profile = b'{ "defaultAction": "SCMP_ACT_ALLOW",\n  "syscalls": [] }'
    custom = _apply("seccomp=/p.json", files={"/p.json": profile}).seccomp
    assert custom.mode == pb.Privileges.Seccomp.CUSTOM
    assert json.loads(custom.profile) == {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    assert b" " not in custom.profile  # kept compact


@pytest.mark.parametrize(("option", "files", "fragment"), [
    ("seccomp=/p.json", {"/p.json": b"{nope"}, "seccomp profile /p.json: not valid JSON"),
    ("seccomp=/p.json", {}, "seccomp profile /p.json: cannot read it: No such file"),
    ("seccomp=/p.json", {"/p.json": b"[]"}, "the profile: expected an object"),
    ("seccomp=/p.json", {"/p.json": b'{"syscalls": []}'}, "defaultAction: required"),
    ("seccomp=/p.json", {"/p.json": b'{"defaultAction": "SCMP_ACT_NOTIFY"}'}, "unknown action"),
    ("seccomp=/p.json", {"/p.json": b'{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": '
                                     b'[{"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": '
                                     b'[{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]}'},
     "syscalls[0].args[0].index: at most 5"),
    ("seccomp=", None, "expected seccomp=unconfined"),
    ("selinux=label", None, "unknown security option 'selinux'"),
    ("apparmor=mine", None, "apparmor: expected unconfined or default"),
    ("no-new-privileges=maybe", None, "expected true or false"),
])
def test_bad_security_opts(option: str, files: dict[str, bytes] | None, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as caught:
        _apply(option, files=files)
    assert "\n" not in str(caught.value)


def _check_problem(data: bytes) -> str:
    try:
        security.check_profile(data)
    except security.BadProfile as error:
        return str(error)
    return ""


@given(st.binary(max_size=200))
def test_the_profile_check_never_crashes(data: bytes) -> None:
    assert "\n" not in _check_problem(data)


# ---------------------------------------------------------------- --log-opt


def test_log_opts_and_limits() -> None:
    driver = pb.Driver()
    logopts.apply_log_opt(driver, "max-size=1m")
    logopts.apply_log_opt(driver, "max-file=5")
    assert dict(driver.options) == {"max-size": str(MiB), "max-file": "5"}
    assert logopts.limits(driver) == logopts.LogLimits(max_size=MiB, max_file=5)
    assert logopts.limits(pb.Driver()) == logopts.LogLimits(10 * MiB, 3)
    junk = pb.Driver(options={"max-size": "lots", "max-file": "2"})
    assert logopts.limits(junk) == logopts.LogLimits(10 * MiB, 2)


@pytest.mark.parametrize(("option", "fragment"), [
    ("max-size=big", "max-size: invalid size 'big'"),
    ("max-size=1k", "below the minimum of 64"),
    ("max-file=0", "max-file: expected a number of files from 1 to 100"),
    ("compress=true", "unknown log option 'compress'"),
    ("max-size", "expected KEY=VALUE"),
])
def test_bad_log_opts(option: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        logopts.apply_log_opt(pb.Driver(), option)


# ---------------------------------------------------------------- swarmctl and compose


def test_flags_fill_the_spec(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    spec_ = service_spec_from_options(ServiceOptions(
        name="web", image="busybox", log_opt=["max-size=20m", "max-file=2"],
        security_opt=[f"seccomp={profile}", "no-new-privileges"]))
    privileges = spec_.task.container.privileges
    assert privileges.seccomp.mode == pb.Privileges.Seccomp.CUSTOM
    assert privileges.no_new_privileges
    assert dict(spec_.task.log_driver.options) == {"max-size": str(20 * MiB), "max-file": "2"}
    validation.normalize_service_spec(spec_, {})
    updated = updated_service_spec(spec_, ServiceUpdateOptions(
        security_opt=["seccomp=unconfined"], log_opt=["max-file=4"]))
    assert updated.task.container.privileges.seccomp.mode == pb.Privileges.Seccomp.UNCONFINED
    assert not updated.task.container.privileges.seccomp.profile
    assert updated.task.container.privileges.no_new_privileges  # untouched
    assert dict(updated.task.log_driver.options) == {"max-size": str(20 * MiB), "max-file": "4"}


def test_bad_flags_are_one_line_and_send_nothing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from swarm.cli import client

    def refuse(target: str, *, timeout: float = 0) -> client.Controller:
        raise AssertionError("connected before the input was checked")

    monkeypatch.setattr(client, "connect", refuse)
    bad = tmp_path / "bad.json"
    bad.write_text("{ this is not json")
    for args, fragments in (
            (("--security-opt", f"seccomp={bad}"),
             ("--security-opt", f"seccomp profile {bad}: not valid JSON")),
            (("--log-opt", "max-size=huge"), ("--log-opt", "max-size: invalid size"))):
        result = CliRunner().invoke(app, ["service", "create", "web", "--image", "busybox",
                                          *args])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        for fragment in fragments:
            assert fragment in lines[0]


def test_controller_refuses_what_the_cli_would() -> None:
    spec_ = pb.ServiceSpec(name="web")
    spec_.task.container.image = "busybox"
    spec_.task.container.privileges.seccomp.mode = pb.Privileges.Seccomp.CUSTOM
    spec_.task.container.privileges.seccomp.profile = b"nope"
    with pytest.raises(validation.ValidationError, match=r"seccomp\.profile"):
        validation.normalize_service_spec(spec_, {})
    spec_.task.container.privileges.Clear()
    spec_.task.log_driver.options["max-file"] = "0"
    with pytest.raises(validation.ValidationError, match=r"log_driver\.options"):
        validation.normalize_service_spec(spec_, {})
    spec_.task.log_driver.Clear()
    spec_.task.log_driver.name = "journald"
    with pytest.raises(validation.ValidationError, match="unsupported log driver"):
        validation.normalize_service_spec(spec_, {})


def test_compose_security_opt_and_logging(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"defaultAction": "SCMP_ACT_LOG"}')
    spec_ = web("    security_opt: [\"seccomp=p.json\", no-new-privileges]\n"
                "    logging:\n      driver: json-file\n"
                "      options: {max-size: 5m, max-file: 4}\n", base_dir=tmp_path)
    assert spec_.task.container.privileges.seccomp.mode == pb.Privileges.Seccomp.CUSTOM
    assert spec_.task.container.privileges.no_new_privileges
    assert dict(spec_.task.log_driver.options) == {"max-size": str(5 * MiB), "max-file": "4"}
    stack = parse(BASE_JOURNALD)
    assert [w.path for w in stack.warnings] == ["services.web.logging.driver"]


BASE_JOURNALD = ("name: s\nservices:\n  web:\n    image: busybox\n"
                 "    logging: {driver: journald}\n")


def test_compose_bad_values_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("not json")
    with pytest.raises(Exception, match=r"services\.web\.security_opt\[0\]: seccomp profile "
                                        r"p\.json: not valid JSON"):
        web("    security_opt: [\"seccomp=p.json\"]\n", base_dir=tmp_path)
    with pytest.raises(Exception, match=r"services\.web\.logging\.options\.max-size: "):
        web("    logging: {options: {max-size: tiny}}\n")


# ---------------------------------------------------------------- rotation and reading


def _write(path: Path, *texts: str) -> None:
    path.write_bytes(b"".join(record("stdout", "F", text) for text in texts))


def _conmon_rotates(path: Path, *texts: str) -> None:
    """What conmon does at --log-size-max: a new file renamed over the path."""
    tmp = path.with_name(path.name + ".tmp")
    _write(tmp, *texts)
    os.replace(tmp, path)


def _read_all(logfile: LogFile) -> list[str]:
    lines: list[str] = []
    while (size := logfile.size()) is not None:
        before = logfile.offset
        lines += [line.data.decode() for line in logfile.read(size, 1 << 20)]
        if logfile.live and logfile.offset == before:
            break
    return lines


def test_rotation_keeps_max_file_files(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    _write(path, "a")
    assert not keep_rotated(str(path), 3)  # the first pass only takes hold of it
    assert log_chain(str(path)) == [str(path)]
    for index, text in enumerate(("b", "c", "d"), start=1):
        _conmon_rotates(path, text)
        # Before the agent's pass: the finished file is still there, as PATH.0.
        assert log_chain(str(path))[-2:] == [f"{path}.0", str(path)]
        assert keep_rotated(str(path), 3)
        assert len(log_chain(str(path))) == min(index + 1, 3)
    assert [Path(p).read_bytes().split()[-1].decode() for p in log_chain(str(path))] == \
        ["b", "c", "d"]
    assert sorted(log_files(str(path))) == sorted([str(path), f"{path}.0", f"{path}.1",
                                                   f"{path}.2"])
    _conmon_rotates(path, "e")
    assert keep_rotated(str(path), 1)
    assert log_chain(str(path)) == [str(path)]


def test_the_reader_goes_across_rotated_files_and_follows_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    _write(path, "1", "2")
    keep_rotated(str(path), 3)
    _conmon_rotates(path, "3", "4")
    keep_rotated(str(path), 3)
    whole = LogFile(str(path))
    assert whole.start(None)
    assert _read_all(whole) == ["1", "2", "3", "4"]
    tail = LogFile(str(path))
    assert tail.start(3)  # the last 3: one from the rotated file
    assert _read_all(tail) == ["2", "3", "4"]
    # Following: more lines, then a rotation between two reads.
    with path.open("ab") as file:
        file.write(record("stdout", "F", "5"))
    _conmon_rotates(path, "6")
    assert _read_all(tail) == ["5", "6"]
    keep_rotated(str(path), 3)
    assert _read_all(tail) == []
    tail.close()
    whole.close()


def test_apparmor_is_skipped_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "lsm").write_text("lockdown,capability,landlock,bpf\n")
    reason = apparmor.unavailable_reason(tmp_path, "/sbin/apparmor_parser")
    assert "no AppArmor" in reason
    assert "landlock" in reason
    (tmp_path / "apparmor").mkdir()
    assert "apparmor_parser not found" in apparmor.unavailable_reason(tmp_path, None)
    assert apparmor.unavailable_reason(tmp_path, "/sbin/apparmor_parser") == ""
    text = apparmor.profile_text()
    assert "profile swarm-default" in text
    assert "deny mount," in text
