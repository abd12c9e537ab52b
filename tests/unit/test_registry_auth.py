"""Registry credentials and image pinning, the pure parts: docker's config
format (swarm.api.registryauth), what swarmctl resolves and keeps
(cli/pull.py), sealing and who gets the credentials (controller/pullauth.py),
and swarmctl's refusals of bad input before anything is sent."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from swarm.agent.main import parse_args
from swarm.api import pki
from swarm.api.imageref import digest_of, parse_reference, pinned, tagged_form
from swarm.api.registryauth import AuthFileError, Credential, credential_for, parse_auth_file
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli import pull, render
from swarm.cli.main import app
from swarm.controller import pullauth
from swarm.controller.api.registry_auth import problem

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def config(auths: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"auths": auths, **extra}).encode()


def token(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ------------------------------------------------------------------ docker's config


def test_auth_file_entries_are_normalised_by_registry() -> None:
    found = parse_auth_file(config({
        "https://index.docker.io/v1/": {"auth": token("hub:pw1")},
        "127.0.0.1:5000": {"auth": token("alice:s3:cret")},  # a ':' in the password
        "registry.example.com": {"username": "bob", "password": "pw2"},
        "helped.example.com": {},  # a credential helper's: skipped
    }), "config.json")
    assert found == {
        "docker.io": Credential("docker.io", "hub", "pw1"),
        "127.0.0.1:5000": Credential("127.0.0.1:5000", "alice", "s3:cret"),
        "registry.example.com": Credential("registry.example.com", "bob", "pw2"),
    }
    assert "s3:cret" not in repr(found)  # never in a log line or traceback
    assert credential_for("busybox", found) == found["docker.io"]
    assert credential_for("127.0.0.1:5000/app:1@" + D1, found) == found["127.0.0.1:5000"]
    assert credential_for("other.example.com/app", found) is None
    assert found["127.0.0.1:5000"].basic_token() == token("alice:s3:cret")


@pytest.mark.parametrize(("data", "fragment"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (json.dumps({"auths": []}).encode(), "`auths` must be an object"),
    (config({"h:5000": {"auth": "%%%"}}), "auths['h:5000'].auth: not base64"),
    (config({"h:5000": {"auth": token("nocolon")}}), "no ':'"),
    (config({"h:5000": {"auth": token(":pw")}}), "the user name is empty"),
    (config({"h:5000": {"auth": token("u:")}}), "the password is empty"),
    (config({"h:5000": {"email": "x"}}), "has neither `auth`"),
    (config({"h:5000": "x"}), "expected an object"),
    (config({}, credsStore="desktop"), "credential helper"),
])
def test_bad_auth_files_are_one_line_naming_the_problem(data: bytes, fragment: str) -> None:
    with pytest.raises(AuthFileError) as caught:
        parse_auth_file(data, "auth.json")
    message = str(caught.value)
    assert message.startswith("auth.json: ")
    assert "\n" not in message
    assert fragment in message


# ------------------------------------------------------------------ references


def test_pinned_references_keep_the_tag_and_pull_by_digest() -> None:
    image = pinned("127.0.0.1:5000/app:1", D1)
    assert image == f"127.0.0.1:5000/app:1@{D1}"
    assert pinned(image, D2) == f"127.0.0.1:5000/app:1@{D2}"
    assert tagged_form(image) == "127.0.0.1:5000/app:1"
    assert digest_of(image) == D1
    assert digest_of("app:1") is None
    ref = parse_reference(image)
    assert (ref.tag, ref.digest, str(ref)) == (None, D1, f"127.0.0.1:5000/app@{D1}")


# ------------------------------------------------------------------ what to resolve


@pytest.mark.parametrize(("current", "given", "mode", "force", "expected"), [
    # create
    (None, "app:1", "always", False, pull.ImageChoice("app:1", True)),
    (None, "app:1", "changed", False, pull.ImageChoice("app:1", True)),
    (None, "app:1", "never", False, pull.ImageChoice("app:1")),
    (None, f"app:1@{D1}", "always", False, pull.ImageChoice(f"app:1@{D1}")),
    # update without --image: only --force with always looks the tag up again
    (f"app:1@{D1}", None, "always", False, pull.ImageChoice(f"app:1@{D1}")),
    (f"app:1@{D1}", None, "always", True, pull.ImageChoice("app:1", True, f"app:1@{D1}")),
    (f"app:1@{D1}", None, "changed", True, pull.ImageChoice(f"app:1@{D1}")),
    ("app:1", None, "always", True, pull.ImageChoice("app:1", True, "app:1")),
    # update --image (or apply): always resolves; changed keeps the pinned tag
    (f"app:1@{D1}", "app:1", "always", False, pull.ImageChoice("app:1", True, f"app:1@{D1}")),
    (f"docker.io/library/app:1@{D1}", "app:1", "changed", False,
     pull.ImageChoice(f"docker.io/library/app:1@{D1}")),
    (f"app:1@{D1}", "app:2", "changed", False, pull.ImageChoice("app:2", True)),
    (f"app:1@{D1}", "app:2", "always", False, pull.ImageChoice("app:2", True)),
    (f"app:1@{D1}", "app:1", "never", False, pull.ImageChoice("app:1")),
    (f"app:1@{D1}", f"app:1@{D2}", "always", False, pull.ImageChoice(f"app:1@{D2}")),
])
def test_choose_image(current: str | None, given: str | None, mode: str, force: bool,
                      expected: pull.ImageChoice) -> None:
    assert pull.choose_image(current, given, mode=mode, force=force) == expected


@given(st.sampled_from(["always", "changed", "never"]), st.booleans(),
       st.sampled_from(["app:1", f"app:1@{D1}", "other/app:2"]),
       st.one_of(st.none(), st.sampled_from(["app:1", "app:3", f"app:1@{D2}"])))
def test_choices_never_lose_a_pin_they_were_given(mode: str, force: bool, current: str,
                                                  wanted: str | None) -> None:
    choice = pull.choose_image(current, wanted, mode=mode, force=force)
    if wanted is not None and digest_of(wanted):
        assert choice == pull.ImageChoice(wanted)
    if not choice.resolve:  # what goes out as it is: the given image, or the current one
        assert choice.image in (wanted, current)
    if mode == "never":
        assert not choice.resolve


def test_resolving_failures_warn_once_and_keep_the_tag_or_the_pin() -> None:
    lines: list[str] = []

    def down(image: str, credentials: object) -> str:
        raise pull.ResolveError("registry 127.0.0.1:9 unreachable: connection refused")

    options = pull.PullOptions()
    assert pull.resolved(pull.ImageChoice("127.0.0.1:9/app:1", True), options, lines.append,
                         down) == "127.0.0.1:9/app:1"
    assert len(lines) == 1
    assert "cannot resolve its digest (registry 127.0.0.1:9 unreachable" in lines[0]
    assert "using the tag" in lines[0]
    kept = pull.resolved(pull.ImageChoice("app:1", True, f"app:1@{D1}"), options,
                         lines.append, down)
    assert kept == f"app:1@{D1}"
    assert "keeping app:1@" in lines[1]
    assert len(lines) == 2
    assert pull.resolved(pull.ImageChoice("app:1", True), options, lines.append,
                         lambda image, creds: D2) == f"app:1@{D2}"
    assert len(lines) == 2


def test_www_authenticate_challenges() -> None:
    assert pull.parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"') == ("bearer", {
            "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
            "scope": "repository:library/busybox:pull"})
    assert pull.parse_challenge('Basic realm="Registry Realm"') == (
        "basic", {"realm": "Registry Realm"})


# ------------------------------------------------------------------ the controller's side


def test_sealed_credentials_open_only_for_their_service() -> None:
    key = pki.DataKey.generate()
    credential = pb.RegistryCredential(registry="127.0.0.1:5000", username="alice",
                                       password="s3cret")
    auth = pullauth.seal(key, "svc1", credential)
    assert auth.registry == "127.0.0.1:5000"
    assert b"s3cret" not in auth.SerializeToString()
    assert b"alice" not in auth.sealed
    assert pullauth.open_sealed(key, "svc1", auth) == credential
    with pytest.raises(pki.SealedDataError):
        pullauth.open_sealed(key, "svc2", auth)  # moved to another service
    with pytest.raises(pki.SealedDataError):
        pullauth.open_sealed(pki.DataKey.generate(), "svc1", auth)  # another cluster
    service = pb.Service(id="svc1", registry_auth=auth)
    shown = pullauth.redacted(service)
    assert shown.registry_auth.registry == "127.0.0.1:5000"
    assert not shown.registry_auth.sealed
    assert service.registry_auth.sealed  # the stored object is untouched
    assert " Registry auth:  127.0.0.1:5000 (sealed, sent 20" in render.service_details(shown)


def _task(task_id: str, image: str, state: pb.TaskState.ValueType,
          desired: pb.TaskState.ValueType = pb.RUNNING) -> pb.Task:
    task = pb.Task(id=task_id, service_id="svc1", desired_state=desired,
                   status=pb.TaskStatus(state=state))
    task.spec.container.image = image
    return task


def test_only_tasks_about_to_pull_from_that_registry_get_them() -> None:
    key = pki.DataKey.generate()
    credential = pb.RegistryCredential(registry="127.0.0.1:5000", username="alice",
                                       password="s3cret")
    services = {"svc1": pb.Service(id="svc1", registry_auth=pullauth.seal(key, "svc1",
                                                                           credential))}
    source = pullauth.PullCredentials(services, lambda: key)
    image = f"127.0.0.1:5000/app:1@{D1}"
    tasks = [_task("assigned", image, pb.ASSIGNED), _task("preparing", image, pb.PREPARING),
             _task("running", image, pb.RUNNING),
             _task("stopping", image, pb.ASSIGNED, desired=pb.SHUTDOWN),
             _task("elsewhere", "other.example.com/app:1", pb.ASSIGNED),
             pb.Task(id="orphan", service_id="gone", desired_state=pb.RUNNING)]
    given = source.for_tasks(tasks)
    assert [g.task_id for g in given] == ["assigned", "preparing"]
    assert all(g.credential == credential for g in given)
    assert pullauth.for_tasks(None, tasks) == []
    assert pullauth.PullCredentials(services, lambda: None).for_tasks(tasks) == []
    # A blob that does not open is logged and sends nothing.
    services["svc1"] = pb.Service(id="svc1", registry_auth=pullauth.seal(key, "svc9",
                                                                          credential))
    assert source.for_tasks(tasks) == []


@pytest.mark.parametrize(("credential", "fragment"), [
    (pb.RegistryCredential(registry="127.0.0.1:5000", username="u", password="p"), None),
    (pb.RegistryCredential(registry="docker.io", username="u", password="p"),
     "registry_auth.registry: the credentials are for docker.io"),
    (pb.RegistryCredential(registry="127.0.0.1:5000", username="", password="p"),
     "registry_auth: the user name is empty"),
    (pb.RegistryCredential(registry="127.0.0.1:5000", username="u", password=""),
     "registry_auth: the password is empty"),
    (pb.RegistryCredential(registry="https://x/v1/", username="u", password="p"),
     "registry_auth: invalid registry name"),
])
def test_request_credentials_are_checked_against_the_image(
        credential: pb.RegistryCredential, fragment: str | None) -> None:
    spec = pb.ServiceSpec(name="web")
    spec.task.container.image = "127.0.0.1:5000/app:1"
    found = problem(credential, spec)
    assert found == fragment if fragment is None else fragment in str(found)


# ------------------------------------------------------------------ swarmctl's refusals


@pytest.mark.parametrize("command", [
    ["service", "create", "web", "--image", "127.0.0.1:5000/app:1"],
    ["service", "update", "web"],
    ["apply", "-f", "stack.yaml"],
    ["stack", "deploy", "-c", "stack.yaml", "shop"],
])
@pytest.mark.parametrize(("content", "fragment"), [
    (None, "no such file"),
    (b"{oops", "not valid JSON"),
    (config({"127.0.0.1:5000": {"auth": "!!"}}), "not base64"),
])
def test_bad_registry_auth_files_exit_2_before_connecting(
        tmp_path: Path, command: list[str], content: bytes | None, fragment: str) -> None:
    path = tmp_path / "auth.json"
    if content is not None:
        path.write_bytes(content)
    # No controller listens on port 1: exit 2 means nothing was sent.
    result = CliRunner().invoke(app, ["--controller", "127.0.0.1:1", *command,
                                      "--with-registry-auth", "--registry-auth-file",
                                      str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("swarmctl: --registry-auth-file: ")
    assert fragment in lines[0]


def test_registry_auth_is_refused_on_an_insecure_connection(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_bytes(config({"127.0.0.1:5000": {"auth": token("u:p")}}))
    result = CliRunner().invoke(app, ["--controller", "127.0.0.1:1", "--insecure", "service",
                                      "create", "web", "--image", "127.0.0.1:5000/app:1",
                                      "--with-registry-auth", "--registry-auth-file",
                                      str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "swarmctl: --with-registry-auth: refused on an --insecure connection: the credentials "
        "would cross the network in plaintext, and an --insecure controller cannot seal them")


def test_bad_resolve_mode_exits_2() -> None:
    result = CliRunner().invoke(app, ["--controller", "127.0.0.1:1", "service", "create", "web",
                                      "--image", "app:1", "--resolve-image", "sometimes"])
    assert result.exit_code == 2
    assert "--resolve-image: invalid value 'sometimes'" in result.stderr


# ------------------------------------------------------------------ bearer tokens


class _TokenRegistry(http.server.BaseHTTPRequestHandler):
    """A registry that wants a bearer token from its realm (as Docker Hub
    does), on loopback. Its tag `nodigest` is served without the
    Docker-Content-Digest header."""

    port = 0
    body = b'{"schemaVersion": 2}'

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _manifest(self, with_body: bool) -> None:
        if self.headers.get("Authorization") != "Bearer tok-123":
            self.send_response(401)
            self.send_header("WWW-Authenticate",
                             f'Bearer realm="http://127.0.0.1:{self.port}/token",'
                             'service="reg",scope="repository:team/app:pull"')
            self.end_headers()
            return
        self.send_response(200)
        if not self.path.endswith("/nodigest"):
            self.send_header("Docker-Content-Digest", D1)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if with_body:
            self.wfile.write(self.body)

    def do_HEAD(self) -> None:
        self._manifest(False)

    def do_GET(self) -> None:
        if self.path.startswith("/token?"):
            query = urllib.parse.parse_qs(self.path.split("?", 1)[1])
            good = self.headers.get("Authorization") == f"Basic {token('alice:pw')}"
            if not good or query != {"service": ["reg"], "scope": ["repository:team/app:pull"]}:
                self.send_response(401)
                self.end_headers()
                return
            answer = json.dumps({"token": "tok-123"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        self._manifest(True)


def test_bearer_token_flow_and_a_digest_from_the_body() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenRegistry)
    _TokenRegistry.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        addr = f"127.0.0.1:{_TokenRegistry.port}"
        creds = {addr: Credential(addr, "alice", "pw")}
        assert pull.resolve_digest(f"{addr}/team/app:1", creds) == D1
        body_digest = "sha256:" + hashlib.sha256(_TokenRegistry.body).hexdigest()
        assert pull.resolve_digest(f"{addr}/team/app:nodigest", creds) == body_digest
        with pytest.raises(pull.ResolveError, match=r"^authentication required: the token "
                                                    r"service refused anonymous access"):
            pull.resolve_digest(f"{addr}/team/app:1", {})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@given(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters=":"),
               min_size=1, max_size=40),
       st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=80))
def test_any_user_and_password_survive_docker_s_format(user: str, password: str) -> None:
    data = config({"reg.example.com:5000": {"auth": token(f"{user}:{password}")}})
    assert parse_auth_file(data, "f") == {
        "reg.example.com:5000": Credential("reg.example.com:5000", user, password)}


def test_the_agent_reads_its_own_registry_auth_file(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node-auth.json"
    path.write_bytes(config({"127.0.0.1:5000": {"auth": token("node:node-pass-91")}}))
    base = ["--controller", "127.0.0.1:1", "--state-dir", str(tmp_path / "state"),
            "--advertise-addr", "127.0.0.1"]
    parsed = parse_args([*base, "--registry-auth-file", str(path)])
    assert parsed.registry_credentials == {
        "127.0.0.1:5000": Credential("127.0.0.1:5000", "node", "node-pass-91")}
    assert "node-pass-91" not in repr(parsed)
    for content in (None, b"{oops"):
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
        with pytest.raises(SystemExit) as caught:
            parse_args([*base, "--registry-auth-file", str(path)])
        assert caught.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--registry-auth-file" in err
        assert ("No such file" in err) if content is None else ("not valid JSON" in err)
