"""What swarmctl does about a service's image before it sends the spec:
registry credentials (`--with-registry-auth`) and one image everywhere
(`--resolve-image`), for `service create/update`, `apply` and `stack deploy`.

Credentials come from `--registry-auth-file FILE`, else docker's own
`$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`), in docker's
format (swarm.api.registryauth). With `--with-registry-auth` those for the
image's registry go with the request (over mutual TLS; refused here, before
anything is sent, on an --insecure connection) and the controller keeps them
sealed. They are also what the tag is resolved with.

Resolving, as docker's CLI does with the operator's credentials: a HEAD of
`/v2/<name>/manifests/<tag>` (registry HTTP API v2) accepting image indexes
and manifests (OCI and docker), whose `Docker-Content-Digest` is the digest
(a GET and the body's sha256 when a registry does not send it); a 401 is
answered with basic auth, or with a bearer token from the realm its
`WWW-Authenticate` names. The spec then says `image:tag@sha256:…`, so every
node pulls the same bytes (agents pull by the digest) and a rolling update
or a scale-up months later runs what was deployed. `always` (the default, as
docker's): resolve at create, at update when `--image` is given or with
`--force`, at every apply; `changed`: only when the image differs from what
the service has (its pinned digest is kept otherwise); `never`. A registry
that cannot be reached (or refuses) is one warning line, and the tag is kept
-- or, where the service already runs that tag pinned, the pinned image.

HTTPS first; plain HTTP only for registries on loopback or private
addresses (and `localhost`), or named in SWARMCTL_INSECURE_REGISTRIES
(comma-separated), which is where agents run `--registry-insecure` ones.
Only the registry (and the token realm it names) is ever contacted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from swarm.api.imageref import (
    InvalidReference,
    digest_of,
    normalize_reference,
    parse_reference,
    pinned,
    registry_address,
    tagged_form,
)
from swarm.api.registryauth import AuthFileError, Credential, credential_for, parse_auth_file
from swarm.api.v1 import objects_pb2 as pb

from . import client, parsing
from .errors import BadFlag

RESOLVE_MODES = {"always": "always", "changed": "changed", "never": "never"}
INSECURE_REGISTRIES_ENV = "SWARMCTL_INSECURE_REGISTRIES"
DOCKER_HUB_API = "registry-1.docker.io"
RESOLVE_TIMEOUT = 10.0
ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")

WithRegistryAuthOpt = Annotated[bool, typer.Option(
    "--with-registry-auth",
    help="Send my credentials for the image's registry (from --registry-auth-file, else "
         "~/.docker/config.json) with the service: kept sealed by the controller, given only "
         "to nodes that pull it.")]
RegistryAuthFileOpt = Annotated[Path | None, typer.Option(
    "--registry-auth-file", metavar="FILE", dir_okay=False,
    help="Registry credentials in docker's config.json format (default: "
         "~/.docker/config.json); also used to resolve tags.")]
RESOLVE_ENV = "SWARMCTL_RESOLVE_IMAGE"
ResolveImageOpt = Annotated[str, typer.Option(
    "--resolve-image", metavar="always|changed|never", envvar=RESOLVE_ENV,
    help="Pin the image's tag to its digest, so every node runs the same image: always "
         "(default), changed (only a changed image), never.")]


class ResolveError(Exception):
    """The tag could not be resolved; one line saying why."""


@dataclass(frozen=True)
class PullOptions:
    """The three flags, parsed. credentials: every registry's from the file
    (for resolving, and the image's one to send)."""

    with_registry_auth: bool = False
    resolve: str = "always"
    credentials: Mapping[str, Credential] = field(default_factory=dict, repr=False)
    source: str = ""  # the file they came from


# ---------------------------------------------------------------- the flags


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def connection_insecure(ctx: typer.Context) -> bool:
    return client.settings_of(ctx).insecure or \
        os.environ.get(client.INSECURE_ENV, "") not in ("", "0")


def pull_options(with_registry_auth: bool, auth_file: Path | None, resolve: str, *,
                 insecure: bool) -> PullOptions:
    """Parse the flags and read the credentials, before anything is sent.
    Raises BadFlag (exit 2): a --registry-auth-file missing or unusable, a
    bad mode, --with-registry-auth on an --insecure connection."""
    mode = parsing.choice("--resolve-image", resolve, RESOLVE_MODES)
    if with_registry_auth and insecure:
        raise BadFlag("--with-registry-auth", "refused on an --insecure connection: the "
                      "credentials would cross the network in plaintext, and an --insecure "
                      "controller cannot seal them")
    path, flag = (auth_file, "--registry-auth-file") if auth_file is not None else (
        docker_config_path(), "--with-registry-auth")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if auth_file is not None:
            raise BadFlag(flag, f"{path}: no such file") from None
        return PullOptions(with_registry_auth, mode, {}, str(path))
    except OSError as error:
        if auth_file is None and not with_registry_auth:
            return PullOptions(False, mode, {}, str(path))
        raise BadFlag(flag, f"{path}: {error.strerror or error}") from None
    try:
        credentials = parse_auth_file(data, str(path))
    except AuthFileError as error:
        if auth_file is None and not with_registry_auth:
            return PullOptions(False, mode, {}, str(path))  # only for resolving: do without
        raise BadFlag(flag, str(error)) from None
    return PullOptions(with_registry_auth, mode, credentials, str(path))


def credential_to_send(image: str, options: PullOptions, warn: Callable[[str], None]
                       ) -> pb.RegistryCredential | None:
    """The request's registry_auth for a service of `image` (None without
    --with-registry-auth; a warning when the file has none for its registry)."""
    if not options.with_registry_auth:
        return None
    found = credential_for(image, options.credentials)
    if found is None:
        try:
            registry = parse_reference(image).registry
        except InvalidReference:
            return None  # the controller names the bad reference
        warn(f"warning: --with-registry-auth: {options.source} has no credentials for "
             f"{registry}; none sent")
        return None
    return pb.RegistryCredential(registry=found.registry, username=found.username,
                                 password=found.password)


# ---------------------------------------------------------------- what to resolve (pure)


def same_image(a: str, b: str) -> bool:
    """Whether two references name the same image (normalised: `busybox` is
    docker.io/library/busybox:latest)."""
    try:
        return normalize_reference(a) == normalize_reference(b)
    except InvalidReference:
        return a == b


@dataclass(frozen=True)
class ImageChoice:
    image: str  # what the spec gets, unless `resolve`
    resolve: bool = False  # resolve `image`'s tag to its digest first
    fallback: str = ""  # what the spec gets if resolving fails (default: image)


def choose_image(current: str | None, given: str | None, *, mode: str,
                 force: bool = False) -> ImageChoice:
    """What a create (current None), update (given: --image, or None) or
    apply (given: the file's image) sends.

    An image given with a digest is taken as it is; `never` never resolves;
    `changed` keeps the current pinned image when the given one is its tag;
    `always` resolves the given image, or with force the current one's tag.
    When resolving fails, a service already running that tag pinned keeps
    its pinned image; otherwise the tag goes as it is."""
    if given is None:
        if current is None:
            raise ValueError("neither a current nor a given image")
        if mode == "always" and force:
            return ImageChoice(tagged_form(current), True, fallback=current)
        return ImageChoice(current)
    if mode == "never" or digest_of(given) is not None:
        return ImageChoice(given)
    runs_tag = current is not None and digest_of(current) is not None and \
        same_image(tagged_form(current), given)
    if mode == "changed" and runs_tag:
        assert current is not None
        return ImageChoice(current)
    return ImageChoice(given, True, fallback=current if runs_tag and current else "")


# ---------------------------------------------------------------- the registry (I/O)


def _plain_http_allowed(registry: str) -> bool:
    if registry.rsplit(":", 1)[0] == "localhost":
        return True
    listed = {r.strip() for r in os.environ.get(INSECURE_REGISTRIES_ENV, "").split(",")}
    if registry in listed:
        return True
    address = registry_address(registry)
    return address is not None and (address.is_loopback or address.is_private)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth",service="reg",scope="repository:a:pull"`
    -> ("bearer", {"realm": ..., ...}) (pure)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {key.lower(): value for key, value in
              re.findall(r'([A-Za-z]+)\s*=\s*"([^"]*)"', rest)}
    return scheme.lower(), params


def _opener(registry: str) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = []
    address = registry_address(registry)
    if (address is not None and address.is_loopback) or registry.startswith("localhost"):
        handlers.append(urllib.request.ProxyHandler({}))  # never through a proxy
    return urllib.request.build_opener(*handlers)


def _request(opener: urllib.request.OpenerDirector, url: str, method: str,
             authorization: str | None, timeout: float) -> tuple[int, Mapping[str, str], bytes]:
    """(status, headers with lower-case names, body of a GET)."""
    request = urllib.request.Request(url, method=method, headers={"Accept": ACCEPT})
    if authorization is not None:
        # Not carried along if the registry redirects (to a CDN, say).
        request.add_unredirected_header("Authorization", authorization)
    try:
        with opener.open(request, timeout=timeout) as response:
            body: bytes = response.read(4 * 1024 * 1024) if method == "GET" else b""
            return response.status, {k.lower(): v for k, v in response.headers.items()}, body
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, b""


def _token(opener: urllib.request.OpenerDirector, params: Mapping[str, str],
           credential: Credential | None, timeout: float) -> str:
    realm = params.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        raise ResolveError(f"the registry asks for a token from an unusable realm {realm!r}")
    query = {k: v for k, v in params.items() if k in ("service", "scope")}
    url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
    authorization = None if credential is None else f"Basic {credential.basic_token()}"
    status, _, body = _request(opener, url, "GET", authorization, timeout)
    if status == 401:
        raise ResolveError("authentication required: the token service refused "
                           + ("the credentials" if credential else "anonymous access"))
    if status != 200:
        raise ResolveError(f"the token service answered HTTP {status}")
    try:
        answer = json.loads(body)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise ResolveError("the token service sent no token")
    return token


def _digest_at(base: str, path: str, opener: urllib.request.OpenerDirector,
               credential: Credential | None, timeout: float) -> str:
    url = f"{base}/v2/{path}"
    authorization: str | None = None
    for _ in range(2):
        status, headers, _ = _request(opener, url, "HEAD", authorization, timeout)
        if status == 401 and authorization is None:
            scheme, params = parse_challenge(headers.get("www-authenticate", ""))
            if scheme == "bearer":
                authorization = f"Bearer {_token(opener, params, credential, timeout)}"
            elif scheme == "basic" and credential is not None:
                authorization = f"Basic {credential.basic_token()}"
            else:
                raise ResolveError("authentication required (no credentials for it: "
                                   "--registry-auth-file or ~/.docker/config.json)")
            continue
        if status == 401:
            raise ResolveError("access denied: the registry refused the credentials")
        if status == 404:
            raise ResolveError("manifest unknown: no such image or tag in the registry")
        if status != 200:
            raise ResolveError(f"the registry answered HTTP {status}")
        digest = headers.get("docker-content-digest", "")
        if _DIGEST_RE.fullmatch(digest):
            return digest
        status, _, body = _request(opener, url, "GET", authorization, timeout)
        if status != 200 or not body:
            raise ResolveError(f"the registry sent no digest (HTTP {status})")
        return f"sha256:{hashlib.sha256(body).hexdigest()}"
    raise ResolveError("access denied")


def resolve_digest(image: str, credentials: Mapping[str, Credential], *,
                   timeout: float = RESOLVE_TIMEOUT) -> str:
    """The digest the registry serves for the image's tag (of the image
    index, when it is one: each node picks its platform from it, as with the
    tag). Raises ResolveError (one line)."""
    try:
        ref = parse_reference(image)
    except InvalidReference as error:
        raise ResolveError(str(error)) from None
    if ref.digest is not None:
        return ref.digest
    credential = credentials.get(ref.registry)
    host = DOCKER_HUB_API if ref.registry == "docker.io" else ref.registry
    path = f"{ref.repository}/manifests/{ref.tag}"
    opener = _opener(ref.registry)
    schemes = ["https", "http"] if _plain_http_allowed(ref.registry) else ["https"]
    failure = ""
    for scheme in schemes:
        try:
            return _digest_at(f"{scheme}://{host}", path, opener, credential, timeout)
        except (urllib.error.URLError, OSError, ssl.SSLError) as error:
            reason = getattr(error, "reason", error)
            failure = f"registry {ref.registry} unreachable: {reason}"
    raise ResolveError(failure)


def resolved(choice: ImageChoice, options: PullOptions, warn: Callable[[str], None],
             resolve: Callable[[str, Mapping[str, Credential]], str] = resolve_digest) -> str:
    """The image the spec gets: choice.image pinned to its digest when asked
    for; on failure one warning line, and the fallback (or the tag)."""
    if not choice.resolve:
        return choice.image
    try:
        return pinned(choice.image, resolve(choice.image, options.credentials))
    except ResolveError as error:
        kept = choice.fallback or choice.image
        what = (f"keeping {kept}, which the service runs" if choice.fallback
                else "using the tag as it is: nodes pulling it later may run another image")
        warn(f"warning: image {choice.image}: cannot resolve its digest ({error}); {what}")
        return kept


# ---------------------------------------------------------------- the commands' one call


def for_create(spec: pb.ServiceSpec, options: PullOptions, warn: Callable[[str], None]
               ) -> pb.RegistryCredential | None:
    """Pin the new service's image (as --resolve-image says) in `spec`; the
    credentials to send with it."""
    container = spec.task.container
    container.image = resolved(choose_image(None, container.image, mode=options.resolve),
                               options, warn)
    return credential_to_send(container.image, options, warn)


def for_update(current: pb.ServiceSpec, spec: pb.ServiceSpec, given: str | None, *,
               force: bool, options: PullOptions, warn: Callable[[str], None]
               ) -> pb.RegistryCredential | None:
    """Pin the image of `spec` (current with the flags applied; `given`: the
    --image flag) as --resolve-image says; the credentials to send with it."""
    container = spec.task.container
    choice = choose_image(current.task.container.image, given, mode=options.resolve,
                          force=force)
    container.image = resolved(choice, options, warn)
    return credential_to_send(container.image, options, warn)


def for_stack(specs: Iterable[pb.ServiceSpec], current: Mapping[str, pb.Service],
              options: PullOptions, warn: Callable[[str], None]) -> None:
    """Pin the image of each of a stack's service specs (in place) as
    --resolve-image says, against the services the controller has (by
    name), before the stack is planned: a moved tag then shows as an image
    change, an unmoved one as nothing."""
    for spec in specs:
        service = current.get(spec.name)
        container = spec.task.container
        choice = choose_image(service.spec.task.container.image if service else None,
                              container.image, mode=options.resolve)
        container.image = resolved(choice, options, warn)
