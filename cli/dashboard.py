"""`swarmctl dashboard`: a live web page of the cluster, served by swarmctl itself.

The page talks to this process only; this process talks to the controller with
the operator's own admin identity (the same channel as every other command),
so the controller needs no web login and no browser ever holds a certificate.
Listen on loopback (the default): whoever reaches the port reads the cluster
as the operator would.

    GET /          the page (cli/dashboard_html.py), rendered here
    GET /sections  its sections alone, re-rendered (the script fetches them after events)
    GET /events    the event stream (Control.Events) as server-sent events, one JSON
                   object per event as `swarmctl events -o json` prints it; the
                   last 10 minutes first
    GET /healthz   "ok"
    POST /api/scale|availability|rollback   the buttons (cli/dashboard_actions.py),
                   unless --read-only

Each browser's /events holds one thread and one Events stream; it
ends when the browser leaves (the next write fails) or the controller ends it
(the browser's EventSource reconnects by itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import typer

from swarm.api.v1 import control_pb2 as cpb

from . import client, render
from . import dashboard_actions as actions
from .dashboard_html import Snapshot, page, sections
from .errors import EXIT_INTERRUPTED, BadFlag, CliError
from .events import event_data
from .options import examples

log = logging.getLogger(__name__)
REPLAY_SECONDS = 600  # the events a fresh page starts with


@dataclass(frozen=True)
class Settings:
    read_only: bool = False
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def snapshot(ctl: client.Controller, settings: Settings = Settings()) -> Snapshot:
    nodes = list(ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes)
    services = list(ctl.call(ctl.stub.ListServices, cpb.ListServicesRequest()).services)
    tasks = list(ctl.call(ctl.stub.ListTasks, cpb.ListTasksRequest()).tasks)
    return Snapshot(nodes=nodes, services=services, tasks=tasks, now=render.now_utc(),
                    controller=ctl.target, actions=not settings.read_only,
                    token=settings.token)


def _handler(ctl: client.Controller, settings: Settings) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "swarmctl-dashboard"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/":
                    self._send(200, "text/html; charset=utf-8",
                               page(snapshot(ctl, settings)).encode())
                elif path == "/sections":
                    self._send(200, "text/html; charset=utf-8",
                               sections(snapshot(ctl, settings)).encode())
                elif path == "/events":
                    self._events()
                elif path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                else:
                    self._send(404, "text/plain", b"not found\n")
            except CliError as error:  # the controller refused or is out of reach
                self._send(502, "text/plain; charset=utf-8", (error.message + "\n").encode())

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if settings.read_only or not path.startswith("/api/"):
                self._answer(404, {"error": "not found"})
                return
            bound: Any = self.server.server_address  # (host, port) for an IP server
            hosts = frozenset(f"{name}:{bound[1]}" for name in ("127.0.0.1", "localhost",
                                                              "[::1]", bound[0]))
            headers = {key: self.headers.get(key, "") for key in ("X-Swarm-Token", "Host")}
            refused = actions.allowed(headers, settings.token, hosts)
            if refused:
                self._answer(403, {"error": refused})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
                if not isinstance(body, dict):
                    raise actions.ActionError("expected a JSON object")
                self._answer(200, {"message": actions.act(ctl, path[len("/api/"):], body)})
            except (ValueError, actions.ActionError) as error:
                self._answer(400, {"error": str(error)})
            except CliError as error:  # refused by the controller, or out of reach
                self._answer(409, {"error": error.message})

        def _answer(self, status: int, data: dict[str, str]) -> None:
            self._send(status, "application/json", json.dumps(data).encode())

        def _events(self) -> None:
            request = cpb.EventsRequest()
            request.since.FromNanoseconds(time.time_ns() - REPLAY_SECONDS * 1_000_000_000)
            call: Any = ctl.stub.Events(request)  # a grpc.Call too: cancel()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for batch in call:
                    data = "".join(f"data: {json.dumps(event_data(e))}\n\n"
                                   for e in batch.events)
                    self.wfile.write(data.encode())
                    self.wfile.flush()
            except (OSError, ValueError):
                pass  # the browser left
            except Exception as error:  # the stream failed: the browser reconnects
                log.debug("events stream ended: %s", error)
            finally:
                call.cancel()

    return Handler


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise BadFlag("--listen", f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(ctl: client.Controller, host: str, port: int,
          settings: Settings | None = None) -> ThreadingHTTPServer:
    """The dashboard's server, bound (not yet serving): serve_forever() it."""
    server = ThreadingHTTPServer((host, port), _handler(ctl, settings or Settings()))
    server.daemon_threads = True  # open event streams do not hold up the exit
    return server


def serve_in_thread(ctl: client.Controller, host: str = "127.0.0.1", port: int = 0,
                    settings: Settings | None = None
                    ) -> tuple[ThreadingHTTPServer, Callable[[], None]]:
    """The server on a background thread (tests); returns it and its stop."""
    server = serve(ctl, host, port, settings)
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return server, stop


def dashboard_command(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(
        "--listen", metavar="HOST:PORT",
        help="Where to serve the page. Anyone who can reach it sees the cluster as you do: "
             "keep it on loopback.")] = "127.0.0.1:8800",
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="No buttons: the page only shows the cluster.")] = False,
) -> None:
    """Serve a live dashboard of the cluster (nodes, services, tasks, events) until Ctrl-C."""
    host, port = parse_listen(listen)
    with client.open_controller(ctx) as ctl:
        ctl.call(ctl.stub.GetCluster, cpb.GetClusterRequest())  # reachable, and we may read
        try:
            server = serve(ctl, host, port, Settings(read_only=read_only))
        except OSError as error:
            raise CliError(f"cannot listen on {listen}: {error.strerror or error}") from None
        if host not in ("127.0.0.1", "::1", "localhost"):
            typer.echo(f"swarmctl: warning: serving on {host}: anyone who reaches it reads the "
                       "cluster with your admin identity", err=True)
        typer.echo(f"dashboard on http://{host}:{server.server_address[1]}/ (Ctrl-C to stop)",
                   err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            raise SystemExit(EXIT_INTERRUPTED) from None
        finally:
            with contextlib.suppress(Exception):
                server.server_close()


EPILOG = examples("swarmctl dashboard", "swarmctl dashboard --listen 127.0.0.1:9000")
