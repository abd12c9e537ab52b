"""The control API servicer: what swarmctl calls, on every controller.

One servicer composed of a module per resource (as SwarmKit's controlapi/):
services.py, nodes.py, networks.py, tasks.py, cluster.py, controllers.py,
logs.py, secrets.py, configs.py, sharing base.Handlers (the store, fresh reads, the one write path).
Refusals are exceptions, answered by errors.ErrorInterceptor. A new resource
is a new module whose mixin joins the bases below.
"""

from __future__ import annotations

from swarm.api.v1 import control_pb2_grpc as cgrpc

from .base import MAX_STALENESS
from .cluster import Cluster
from .configs import Configs
from .controllers import Controllers
from .events import Events
from .logs import Logs
from .networks import Networks
from .nodes import Nodes
from .secrets import Secrets
from .services import Services
from .tasks import Tasks

__all__ = ["MAX_STALENESS", "ControlServicer"]


class ControlServicer(Services, Nodes, Networks, Tasks, Cluster, Controllers, Logs,
                      Secrets, Configs, Events, cgrpc.ControlServicer):
    """Install with errors.ErrorInterceptor on the server (controller/server.py)."""
