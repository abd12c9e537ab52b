"""sd_notify over a real datagram socket, as systemd listens for it; the JSON log
format; the telemetry that does nothing when metrics are off."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest

from swarm.api import logformat, sdnotify
from swarm.api.telemetry import NO_TELEMETRY, metrics_addr_error, timed


def test_notify_sends_a_datagram_to_the_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": path})
        assert listener.recv(100) == b"READY=1"
    assert not sdnotify.notify("READY=1", {})  # not under systemd: nothing to do
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_abstract_notify_socket() -> None:
    name = f"swarm-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert sdnotify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(100) == b"WATCHDOG=1"


def test_watchdog_interval_is_half_the_timeout_for_this_process() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000",
                                       "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None


def test_json_log_lines_carry_context_fields() -> None:
    record = logging.LogRecord("swarm.agent", logging.WARNING, __file__, 1, "task %s failed",
                               ("t1",), None)
    record.task = "t1"
    line = json.loads(logformat.JsonFormatter().format(record))
    assert line["message"] == "task t1 failed"
    assert line["level"] == "warning"
    assert line["logger"] == "swarm.agent"
    assert line["task"] == "t1"
    assert line["time"].endswith("Z")


def test_metrics_addr_and_null_telemetry() -> None:
    assert metrics_addr_error("127.0.0.1:9323") == ""
    assert metrics_addr_error("0.0.0.0") != ""
    assert metrics_addr_error("host:99999") != ""
    with timed(NO_TELEMETRY, "swarm_reconcile_seconds", "orchestrator"):
        NO_TELEMETRY.inc("swarm_etcd_conflicts_total")


def test_daemon_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from swarm.agent.main import parse_args as agent_args
    from swarm.controller.main import parse_args as controller_args

    config = controller_args(["--insecure", "--metrics-addr", "127.0.0.1:9323",
                              "--log-format", "json"])
    assert config.metrics_addr == "127.0.0.1:9323"
    agent = agent_args(["--controller", "127.0.0.1:2377", "--state-dir", str(tmp_path),
                        "--advertise-addr", "127.0.0.1",
                        "--metrics-addr", "0.0.0.0:9324", "--log-format", "json"])
    assert (agent.metrics_addr, agent.log_format) == ("0.0.0.0:9324", "json")
    for parse, extra in ((controller_args, ["--insecure"]),
                         (agent_args, ["--controller", "x:1", "--state-dir", str(tmp_path),
                                       "--advertise-addr", "127.0.0.1"])):
        with pytest.raises(SystemExit) as caught:
            parse([*extra, "--metrics-addr", "9323"])
        assert caught.value.code == 2
        assert "--metrics-addr: expected HOST:PORT, got '9323'" in capsys.readouterr().err
