"""The dispatcher: agents' sessions, heartbeats and task status (as
SwarmKit's manager/dispatcher): service.py (the gRPC service and the leader's
node monitor), sessions.py (one stream per node, batched messages),
assignments.py (what each node is to be sent, from cache changes),
heartbeats.py (liveness in memory, on a clock that does not count the
controller's own stalls), status.py (what goes to etcd)."""

from .heartbeats import HEARTBEAT_MISSES
from .service import Dispatcher, DispatcherSettings

__all__ = ["HEARTBEAT_MISSES", "Dispatcher", "DispatcherSettings"]
