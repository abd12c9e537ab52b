"""The pure rules of secrets and configs: names, sizes, targets, modes,
reference resolution (swarm/api/payloads.py), the CLI's flag parsing
(cli/payload_refs.py), the delivery rule (controller/payloads.py), the
agent's file plan (agent/payloads.py) and apply's version planning
(cli/stack_payloads.py)."""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.agent.payloads import plan_files
from swarm.agent.runtime import RejectError
from swarm.api import payloads, pki
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError
from swarm.cli.compose import Stack, StackError, parse_stack
from swarm.cli.errors import BadFlag
from swarm.cli.payload_refs import edit_references, parse_reference
from swarm.cli.stack_payloads import PayloadPlanError, plan_payloads, step_lines, unused
from swarm.controller.payloads import PayloadRefused, open_payloads, refusal


def test_data_limits() -> None:
    payloads.check_data("secret", b"x")
    payloads.check_data("secret", b"x" * payloads.MAX_PAYLOAD_BYTES)
    with pytest.raises(ValidationError, match="the secret is empty"):
        payloads.check_data("secret", b"")
    with pytest.raises(ValidationError, match="512001 bytes, over the limit of 512000"):
        payloads.check_data("config", b"x" * (payloads.MAX_PAYLOAD_BYTES + 1))


@pytest.mark.parametrize("name", ["db_password", "web_db_password.3f9a1c", "A-1", "x" * 64])
def test_good_names(name: str) -> None:
    payloads.check_name("secret", name)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 65, "a b", "-x"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError, match=r"spec\.name"):
        payloads.check_name("secret", name)


def test_targets_default_and_place() -> None:
    assert payloads.normalize_target("secret", "", "pw", "f") == "pw"
    assert payloads.container_path("secret", "pw") == "/run/secrets/pw"
    assert payloads.container_path("secret", "/etc/ssl/key.pem") == "/etc/ssl/key.pem"
    assert payloads.container_path("config", "nginx.conf") == "/nginx.conf"
    for bad in ("../x", "a/../../etc/passwd", "/etc/../..", "dir/", "/"):
        with pytest.raises(ValidationError):
            payloads.normalize_target("secret", bad, "pw", "f")


@given(st.text(alphabet="ab./", min_size=1, max_size=20))
def test_an_accepted_target_never_leaves_its_place(target: str) -> None:
    for kind in ("secret", "config"):
        try:
            checked = payloads.normalize_target(kind, target, "n", "f")
        except ValidationError:
            continue
        path = posixpath.normpath(payloads.container_path(kind, checked))
        assert path.startswith("/")
        assert ".." not in path.split("/")
        if kind == "secret" and not checked.startswith("/"):
            assert path.startswith(payloads.SECRETS_DIR + "/")


@pytest.mark.parametrize(("text", "mode"), [("0400", 0o400), ("400", 0o400), ("0o644", 0o644),
                                            ("0", 0)])
def test_modes(text: str, mode: int) -> None:
    assert payloads.parse_mode(text, "mode") == mode


@pytest.mark.parametrize("text", ["999", "0x1ff", "", "01000", "rw"])
def test_bad_modes(text: str) -> None:
    with pytest.raises(ValidationError, match="mode"):
        payloads.parse_mode(text, "mode")


def test_resolve_references_by_name_or_id_with_defaults() -> None:
    container = pb.ContainerSpec()
    container.secrets.add(secret_name="pw")
    container.secrets.add(secret_id="s2", file=pb.FileTarget(name="other", mode=0o400))
    container.configs.add(config_name="conf")
    payloads.resolve_references(container, {"s1": "pw", "s2": "key"}, {"c1": "conf"})
    assert [(r.secret_id, r.secret_name, r.file.name, r.file.mode) for r in container.secrets] == [
        ("s1", "pw", "pw", 0o444), ("s2", "key", "other", 0o400)]
    assert (container.configs[0].config_id, container.configs[0].file.name) == ("c1", "conf")


def test_resolve_references_refuses_clashes_and_unknowns() -> None:
    container = pb.ContainerSpec()
    container.secrets.add(secret_name="pw")
    container.secrets.add(secret_name="key", file=pb.FileTarget(name="pw"))
    with pytest.raises(ValidationError, match=r"secrets\[1\].file.name: /run/secrets/pw is "
                                              r"already used by secrets\[0\]"):
        payloads.resolve_references(container, {"s1": "pw", "s2": "key"}, {})
    unknown = pb.ContainerSpec()
    unknown.secrets.add(secret_name="pw")
    with pytest.raises(ValidationError, match="secret 'pw' not found"):
        payloads.resolve_references(unknown, {}, {})
    mounted = pb.ContainerSpec(mounts=[pb.Mount(target="/etc/app.conf")])
    mounted.configs.add(config_name="conf", file=pb.FileTarget(name="/etc/app.conf"))
    with pytest.raises(ValidationError, match=r"already used by mounts\[0\]"):
        payloads.resolve_references(mounted, {}, {"c": "conf"})


def test_flag_parsing() -> None:
    ref = parse_reference("secret", "--secret", "source=pw,target=db,uid=33,gid=44,mode=0400")
    assert isinstance(ref, pb.SecretReference)
    assert (ref.secret_name, ref.file.name, ref.file.uid, ref.file.gid, ref.file.mode) == (
        "pw", "db", 33, 44, 0o400)
    short = parse_reference("config", "--config", "conf")
    assert isinstance(short, pb.ConfigReference)
    assert (short.config_name, short.file.name) == ("conf", "")
    for text, fragment in (("source=pw,mode=999", "invalid file mode '999'"),
                           ("source=pw,target=../../x", "'..' component"),
                           ("source=pw,colour=red", "unknown key 'colour'"),
                           ("source=pw,uid=-1", "invalid uid"),
                           ("target=x", "needs a name")):
        with pytest.raises(BadFlag, match=fragment):
            parse_reference("secret", "--secret", text)


def test_update_flags_add_replace_and_remove() -> None:
    container = pb.ContainerSpec()
    container.secrets.add(secret_name="a")
    container.secrets.add(secret_name="b", file=pb.FileTarget(name="bee"))
    edit_references(container, "secret", ["bee"], ["source=a,target=x", "c"])
    assert [(r.secret_name, r.file.name) for r in container.secrets] == [("a", "x"), ("c", "")]


def _task(node: str = "n1", state: int = pb.RUNNING, desired: int = pb.RUNNING) -> pb.Task:
    task = pb.Task(id="t1", node_id=node, desired_state=desired,  # type: ignore[arg-type]
                   status=pb.TaskStatus(state=state))  # type: ignore[arg-type]
    task.spec.container.secrets.add(secret_id="s1", secret_name="pw",
                                    file=pb.FileTarget(name="pw", uid=5, mode=0o400))
    task.spec.container.configs.add(config_id="c1", config_name="conf",
                                    file=pb.FileTarget(name="/etc/c", mode=0o444))
    return task


def test_delivery_rule() -> None:
    assert refusal(_task(), "n1") is None
    assert refusal(_task(state=pb.ASSIGNED), "n1") is None
    assert refusal(None, "n1") == "no such task on this node"
    assert refusal(_task(), "n2") == "no such task on this node"
    assert refusal(_task(state=pb.PENDING), "n1") == "the task is not assigned yet"
    assert refusal(_task(state=pb.COMPLETE), "n1") == "the task has ended or is stopping"
    assert refusal(_task(desired=pb.SHUTDOWN), "n1") == "the task has ended or is stopping"


def test_open_payloads_opens_only_what_the_task_uses() -> None:
    key = pki.DataKey.generate()
    secrets = {"s1": pb.Secret(id="s1", spec=pb.SecretSpec(name="pw"),
                               sealed_data=key.seal(b"one", context="secret/s1")),
               "s9": pb.Secret(id="s9", spec=pb.SecretSpec(name="other"),
                               sealed_data=key.seal(b"nine", context="secret/s9"))}
    configs = {"c1": pb.Config(id="c1", spec=pb.ConfigSpec(name="conf"),
                               sealed_data=key.seal(b"conf", context="config/c1"))}
    response = open_payloads(_task(), secrets, configs, key)
    assert [(p.id, p.data) for p in response.secrets] == [("s1", b"one")]
    assert [(p.id, p.data) for p in response.configs] == [("c1", b"conf")]
    # A blob moved to another record does not open there.
    moved = {"s1": pb.Secret(id="s1", sealed_data=secrets["s9"].sealed_data)}
    with pytest.raises(PayloadRefused) as caught:
        open_payloads(_task(), moved, configs, key)
    assert caught.value.code == grpc.StatusCode.DATA_LOSS
    with pytest.raises(PayloadRefused, match="secret s1 of task t1 no longer exists"):
        open_payloads(_task(), {}, configs, key)


def test_agent_file_plan() -> None:
    response = dpb.TaskPayloadsResponse(
        secrets=[dpb.Payload(id="s1", name="pw", data=b"one")],
        configs=[dpb.Payload(id="c1", name="conf", data=b"conf")])
    files = plan_files(_task(), response)
    assert [(f.path, f.uid, f.mode, f.data) for f in files] == [
        ("/run/secrets/pw", 5, 0o400, b"one"), ("/etc/c", 0, 0o444, b"conf")]
    assert "one" not in repr(files)  # the data stays out of logs
    with pytest.raises(RejectError, match="was not sent"):
        plan_files(_task(), dpb.TaskPayloadsResponse())
    bad = _task()
    bad.spec.container.secrets[0].file.name = "../../etc/shadow"
    with pytest.raises(RejectError, match="invalid target"):
        plan_files(bad, response)


def test_unused_versions_of_the_stack() -> None:
    label = {"com.docker.stack.namespace": "shop"}
    secrets = [pb.Secret(id="old", spec=pb.SecretSpec(name="shop_pw.aaaaaa", labels=label)),
               pb.Secret(id="new", spec=pb.SecretSpec(name="shop_pw.bbbbbb", labels=label)),
               pb.Secret(id="mine", spec=pb.SecretSpec(name="unrelated"))]
    service = pb.Service(spec=pb.ServiceSpec(name="shop_web"))
    service.spec.task.container.secrets.add(secret_id="new")
    assert unused("shop", [service], secrets, []) == [("secret", "shop_pw.aaaaaa")]
    # Declared by the file but used by no service: kept (no create-remove churn).
    assert unused("shop", [service], secrets, [], keep=["shop_pw.aaaaaa"]) == []


# ------------------------------------------------------------ compose and apply planning

COMPOSE = """
name: shop
services:
  web:
    image: busybox
    secrets: [db_password, tls]
    configs:
      - source: conf
        target: /etc/app.conf
        mode: "0440"
secrets:
  db_password:
    file: ./pw.txt
  tls:
    external: true
    name: prod_tls
configs:
  conf:
    file: ./app.conf
"""


def _parse(tmp_path: Path, text: str = COMPOSE) -> Stack:
    return parse_stack(text, filename="f.yaml", base_dir=tmp_path, environ={})


def test_compose_names_versions_by_content(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_bytes(b"hunter2")
    (tmp_path / "app.conf").write_bytes(b"x=1")
    stack = _parse(tmp_path)
    digest = hashlib.sha256(b"hunter2").hexdigest()[:6]
    assert stack.secrets["db_password"].name == f"shop_db_password.{digest}"
    assert stack.secrets["tls"].name == "prod_tls"
    assert stack.secrets["tls"].external
    container = stack.services["web"].spec.task.container
    assert [(r.secret_name, r.file.name) for r in container.secrets] == [
        (f"shop_db_password.{digest}", "db_password"), ("prod_tls", "tls")]
    assert (container.configs[0].file.name, container.configs[0].file.mode) == (
        "/etc/app.conf", 0o440)
    assert "hunter2" not in repr(stack)
    # Planning: the new version is to be created, the external one must exist.
    with pytest.raises(PayloadPlanError, match="external secret 'prod_tls' not found"):
        plan_payloads(stack, [], [])
    steps = plan_payloads(stack, [pb.Secret(id="t", spec=pb.SecretSpec(name="prod_tls"))], [])
    assert [(s.kind, s.name, s.create) for s in steps] == [
        ("secret", f"shop_db_password.{digest}", True), ("config", stack.configs["conf"].name,
                                                          True)]
    assert step_lines(steps, dry_run=True) == [
        f"secret shop_db_password.{digest}: would be created",
        f"config {stack.configs['conf'].name}: would be created"]


@pytest.mark.parametrize(("change", "fragment"), [
    ("file: ./pw.txt", "f.yaml:13:11: secrets.db_password.file: cannot read secret file "
                       '"./missing.txt"'),
    ("mode: \"0440\"", "f.yaml:10:15: services.web.configs[0].mode: invalid mode 999"),
    ("secrets: [db_password, tls]", "f.yaml:6:28: services.web.secrets[1]: secret \"nope\" is "
                                    "not declared in the top-level `secrets:`"),
    ("target: /etc/app.conf", "f.yaml:9:17: services.web.configs[0].target: target "
                              "'../../etc/x' has a '..' component"),
])
def test_compose_bad_input_is_one_line_at_its_key(tmp_path: Path, change: str,
                                                   fragment: str) -> None:
    (tmp_path / "pw.txt").write_bytes(b"hunter2")
    (tmp_path / "app.conf").write_bytes(b"x=1")
    replacement = {"file: ./pw.txt": "file: ./missing.txt", "mode: \"0440\"": "mode: 999",
                   "secrets: [db_password, tls]": "secrets: [db_password, nope]",
                   "target: /etc/app.conf": "target: ../../etc/x"}[change]
    with pytest.raises(StackError) as caught:
        _parse(tmp_path, COMPOSE.replace(change, replacement))
    assert str(caught.value).startswith(fragment), str(caught.value)
