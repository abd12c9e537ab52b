"""The pure decisions behind etcd hygiene (issue 11 item 4): how etcd's
errors are classified and answered, how transactions are packed by count and
bytes, the spec size limit, the per-service back-off, and the compose
loader's refusal of alias bombs."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import MAX_SERVICE_SPEC_BYTES, ValidationError, normalize_service_spec
from swarm.cli.compose import StackError, parse_stack
from swarm.cli.main import app
from swarm.controller.allocator.reconciler import batches
from swarm.controller.main import parse_args
from swarm.controller.orchestrator.reconciler import BACKOFF_MAX, backoff_delay
from swarm.controller.store import StoreFull, StoreRejected, StoreUnavailable, store_status
from swarm.controller.store.etcd import store_error
from swarm.controller.store.store import pack_groups


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


# What etcd 3.5.1 answers, as seen on this machine.
@pytest.mark.parametrize(("code", "details", "kind"), [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", StoreFull),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", StoreRejected),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request",
     StoreRejected),
    (grpc.StatusCode.RESOURCE_EXHAUSTED,
     "grpc: received message larger than max (2097170 vs. 2097152)", StoreRejected),
    (grpc.StatusCode.UNAVAILABLE, "connection refused", StoreUnavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", StoreUnavailable),
    (grpc.StatusCode.UNKNOWN, "etcdserver: leader changed", StoreUnavailable),
])
def test_etcd_errors_become_store_errors(code: grpc.StatusCode, details: str,
                                         kind: type[Exception]) -> None:
    error = store_error(_RpcError(code, details))
    assert type(error) is kind
    assert details in str(error)


def test_nospace_is_resource_exhausted_with_what_to_do() -> None:
    full = store_error(_RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 "etcdserver: mvcc: database space exceeded"))
    assert isinstance(full, StoreUnavailable)  # every loop keeps what it has and retries
    code, message = store_status(full, "create service")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.startswith("cannot create service: etcd is out of space")
    for step in ("etcdctl compact", "etcdctl defrag", "etcdctl alarm disarm"):
        assert step in message
    assert "\n" not in message
    code, _ = store_status(StoreUnavailable("etcd unavailable: UNAVAILABLE"), "scale")
    assert code == grpc.StatusCode.UNAVAILABLE
    code, _ = store_status(StoreRejected("etcd refused the request"), "scale")
    assert code == grpc.StatusCode.INVALID_ARGUMENT


groups = st.lists(st.tuples(st.integers(1, 20), st.integers(0, 3000)), max_size=60)


@given(groups, st.integers(20, 128), st.integers(1000, 8000))
def test_packing_keeps_order_and_limits(sizes: list[tuple[int, int]], max_ops: int,
                                        max_bytes: int) -> None:
    chunks = pack_groups(sizes, max_ops, max_bytes)
    assert [i for chunk in chunks for i in chunk] == list(range(len(sizes)))
    for chunk in chunks:
        assert sum(sizes[i][0] for i in chunk) <= max_ops
        # Over the byte budget only when one group alone is (etcd then decides).
        assert len(chunk) == 1 or sum(sizes[i][1] for i in chunk) <= max_bytes
    # Greedy: no chunk could have taken the next chunk's first group.
    for chunk, following in itertools.pairwise(chunks):
        first = sizes[following[0]]
        assert sum(sizes[i][0] for i in chunk) + first[0] > max_ops or \
            sum(sizes[i][1] for i in chunk) + first[1] > max_bytes


def test_the_issue_case_is_packed_by_bytes() -> None:
    # 200 task creates of about 20 KiB each: 128 of them would be 2.5 MiB, over
    # etcd's 1.5 MiB request limit; by bytes they go about 50 at a time.
    chunks = pack_groups([(1, 20 * 1024 + 200)] * 200, 127, 1024 * 1024)
    assert max(len(chunk) for chunk in chunks) <= 51
    assert sum(len(chunk) for chunk in chunks) == 200


def test_allocator_batches_are_bounded_by_bytes_too() -> None:
    task = pb.Task(id="t")
    task.spec.container.env.append("BIG=" + "x" * 30_000)
    chunks = batches([task] * 100, 127, 512 * 1024)
    assert all(sum(t.ByteSize() for t in chunk) <= 512 * 1024 for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) == 100
    assert len(chunks) > 100 * 3 // 127  # the operations alone would allow fewer


def _spec(env_bytes: int) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="big", replicated=pb.ReplicatedService(replicas=200))
    spec.task.container.image = "busybox"
    spec.task.container.env.append("BIG=" + "x" * env_bytes)
    return spec


def test_a_spec_over_the_size_limit_is_refused_naming_size_and_limit() -> None:
    normalize_service_spec(_spec(20 * 1024), {})  # the issue's 20 KiB variable fits
    with pytest.raises(ValidationError) as caught:
        normalize_service_spec(_spec(MAX_SERVICE_SPEC_BYTES), {})
    message = str(caught.value)
    size = _spec(MAX_SERVICE_SPEC_BYTES).ByteSize()
    assert message.startswith(f"spec: the service spec is {size} bytes")
    assert f"over the limit of {MAX_SERVICE_SPEC_BYTES} bytes (32 KiB)" in message
    assert "\n" not in message


def test_backoff_doubles_to_its_limit() -> None:
    assert [backoff_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(7) == BACKOFF_MAX
    assert backoff_delay(10_000) == BACKOFF_MAX


def _alias_bomb(levels: int, width: int = 10) -> str:
    lines = ["name: s", f"x-a0: &a0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels + 1):
        lines.append(f"x-a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    lines += [f"x-all: *a{levels}", "services:", "  web:", "    image: busybox",
              "    command: *a0"]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(StackError) as caught:
        parse_stack(_alias_bomb(7), filename="bomb.yaml")  # 10^7 values
    elapsed = time.monotonic() - started
    assert elapsed < 0.5, elapsed
    assert str(caught.value) == (
        "bomb.yaml:6:7: this value expands to 111111 values through aliases (*name) of "
        "aliases, over the limit of 50000: refused as an alias bomb")


def test_ordinary_aliases_still_load() -> None:
    stack = parse_stack(_alias_bomb(3), filename="ok.yaml")  # 1,111 values: fine
    assert list(stack.services["web"].spec.task.container.args) == ["lol"] * 10


def test_swarmctl_refuses_a_bomb_with_exit_2_before_connecting(tmp_path: Path) -> None:
    file = tmp_path / "bomb.yaml"
    file.write_text(_alias_bomb(7))
    started = time.monotonic()
    result = CliRunner().invoke(app, ["--controller", "127.0.0.1:1", "apply", "--dry-run",
                                      "-f", str(file)])
    assert time.monotonic() - started < 1.0
    assert result.exit_code == 2
    assert result.stderr == (f"swarmctl: {file}:6:7: this value expands to 111111 values "
                             "through aliases (*name) of aliases, over the limit of 50000: "
                             "refused as an alias bomb\n")


def test_the_compaction_interval_is_a_controller_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--insecure"]).compaction.interval == 300.0  # kube-apiserver's 5 min
    assert parse_args(["--insecure", "--etcd-compaction-interval", "0"]).compaction.interval == 0
    with pytest.raises(SystemExit) as caught:
        parse_args(["--insecure", "--etcd-compaction-interval", "-1"])
    assert caught.value.code == 2
    assert "--etcd-compaction-interval: must be 0 (off) or positive" in capsys.readouterr().err
    assert parse_args(["--insecure", "--max-read-staleness", "30"]).max_read_staleness == 30


def test_allocator_batches_count_a_networks_update_once_per_transaction() -> None:
    task = pb.Task(id="t")
    task.spec.networks.add(target="net")
    chunks = batches([task] * 1000, 127)
    # Each task is its update and one claim; the network's update once per
    # transaction, and one kept for the ingress network.
    assert all(3 * len(chunk) + 2 <= 127 for chunk in chunks)
    assert max(len(chunk) for chunk in chunks) == 41
    assert sum(len(chunk) for chunk in chunks) == 1000
    other = pb.Task(id="u")
    other.spec.networks.add(target="other")
    mixed = batches([task, other] * 100, 127)
    assert all(sum(2 + len(t.spec.networks) for t in chunk) + 1 +
               len({a.target for t in chunk for a in t.spec.networks}) <= 127 for chunk in mixed)
