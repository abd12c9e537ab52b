"""What the planners need to know about one task, and the working set of a plan.

Vocabulary used throughout the orchestrator:

- *live*: the controller still wants the task (desired_state <= RUNNING);
- *terminal*: the agent reports it has ended (observed state >= COMPLETE);
- *ended on its own*: terminal in any state but SHUTDOWN. The agent reports
  SHUTDOWN when it stopped a task because the controller asked (desired
  SHUTDOWN), and COMPLETE / FAILED / REJECTED / ORPHANED otherwise, so this is
  how the planners tell a failure from a shutdown they ordered, pass after pass.
  A task the orchestrator shut down because it did not become healthy in time
  (`update_failure` set) counts as ended on its own once it is terminal: docker's
  agent would have failed it;
- *up*: RUNNING and healthy, or RUNNING without a health check (the health the
  agent reports: HEALTH_STARTING from RUNNING until the first probe succeeds);
- *node lost*: the task's node is gone or DOWN (its agent cannot report);
- *stopped*: nothing runs it any more, or nothing ever will: terminal, never
  assigned (no agent knows it), or its node is lost or drained.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from swarm.api import healthcheck
from swarm.api.constraints import Constraint, first_unmet, parse_constraints
from swarm.api.units import to_seconds
from swarm.api.v1 import objects_pb2 as pb


def is_live(task: pb.Task) -> bool:
    return task.desired_state <= pb.RUNNING


def is_out_of_date(task: pb.Task, spec_version: int) -> bool:
    """Whether a rolling update replaces the task: made from an older spec, or
    marked by a rebalance to leave its node (orchestrator/rebalance.py)."""
    return task.spec_version < spec_version or bool(task.rebalance)


def is_terminal(task: pb.Task) -> bool:
    return task.status.state >= pb.COMPLETE


def ended_on_its_own(task: pb.Task) -> bool:
    return is_terminal(task) and (task.status.state != pb.SHUTDOWN or bool(task.update_failure))


def is_up(task: pb.Task) -> bool:
    return healthcheck.is_up(task.status)


def never_assigned(task: pb.Task) -> bool:
    return task.status.state < pb.ASSIGNED


def node_lost(task: pb.Task, nodes: Mapping[str, pb.Node]) -> bool:
    if not task.node_id:
        return False
    node = nodes.get(task.node_id)
    return node is None or node.status.state == pb.NodeStatus.DOWN


def node_unusable(task: pb.Task, nodes: Mapping[str, pb.Node]) -> bool:
    """Its node is gone, DOWN or drained: the task must move (replicated services)."""
    if node_lost(task, nodes):
        return True
    node = nodes.get(task.node_id)
    return node is not None and node.spec.availability == pb.NodeSpec.DRAIN


def is_stopped(task: pb.Task, nodes: Mapping[str, pb.Node]) -> bool:
    return is_terminal(task) or never_assigned(task) or node_unusable(task, nodes)


def is_removable(task: pb.Task, nodes: Mapping[str, pb.Node]) -> bool:
    """Whether deleting the task from the store leaves no agent with work it
    cannot account for: not wanted, and ended, never assigned, or on a lost node."""
    return not is_live(task) and (
        is_terminal(task) or never_assigned(task) or node_lost(task, nodes))


def age_key(task: pb.Task) -> tuple[int, int, str]:
    """Oldest first. Attempts grow within a slot; creation time and ID break ties."""
    return task.attempt, task.meta.created_at.ToNanoseconds(), task.id


def end_time(task: pb.Task) -> float:
    """When the task's last reported state began (its failure time, for a
    terminal task); the store's write time when the agent sent no timestamp."""
    if task.status.HasField("timestamp"):
        return to_seconds(task.status.timestamp)
    return to_seconds(task.meta.updated_at)


class ConstraintCache:
    """Parsed placement constraints, by their text. Constraints that do not parse
    (the API refuses them, so only a damaged store has them) match no node."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, ...], list[Constraint] | None] = {}

    def satisfied(self, texts: Sequence[str], node: pb.Node) -> bool:
        key = tuple(texts)
        if not key:
            return True
        if key not in self._parsed:
            try:
                self._parsed[key] = parse_constraints(key)
            except ValueError:
                self._parsed[key] = None
        constraints = self._parsed[key]
        return constraints is not None and first_unmet(constraints, node) is None


class Working:
    """The tasks of one service as the plan changes them: copy on write, so the
    inputs are never modified and each changed task is written once."""

    def __init__(self, tasks: Iterable[pb.Task]) -> None:
        self.tasks: dict[str, pb.Task] = {task.id: task for task in tasks}
        self.updated: set[str] = set()
        self.created: dict[str, pb.Task] = {}
        self.deleted: set[str] = set()

    def get(self, task_id: str) -> pb.Task:
        return self.tasks[task_id]

    def _writable(self, task_id: str) -> pb.Task:
        if task_id in self.created or task_id in self.updated:
            return self.tasks[task_id]
        copy = pb.Task()
        copy.CopyFrom(self.tasks[task_id])
        self.tasks[task_id] = copy
        self.updated.add(task_id)
        return copy

    def shut_down(self, task_id: str) -> None:
        """desired_state SHUTDOWN for a live task (a no-op for one that is not)."""
        if is_live(self.tasks[task_id]):
            self._writable(task_id).desired_state = pb.SHUTDOWN

    def complete(self, task_id: str) -> None:
        """desired_state COMPLETE for a live job task that completed: it is not
        wanted running again, and shows as Complete (docker's word) in `service ps`."""
        if is_live(self.tasks[task_id]):
            self._writable(task_id).desired_state = pb.COMPLETE

    def fail(self, task_id: str, reason: str) -> None:
        """Give up on a live task that did not come up in time: shut it down,
        marked so that it counts as a failure (tasks.ended_on_its_own)."""
        task = self._writable(task_id)
        task.update_failure = reason
        task.desired_state = pb.SHUTDOWN

    def adopt(self, task_id: str, spec_version: int) -> None:
        """A live task already running the current template: up to date."""
        self._writable(task_id).spec_version = spec_version

    def create(self, task: pb.Task) -> None:
        self.tasks[task.id] = task
        self.created[task.id] = task

    def delete(self, task_id: str) -> None:
        if task_id in self.created:  # never written: just forget it
            del self.created[task_id]
            del self.tasks[task_id]
            return
        self.deleted.add(task_id)

    def updates(self) -> list[pb.Task]:
        return [self.tasks[task_id] for task_id in sorted(self.updated - self.deleted)]

    def creates(self) -> list[pb.Task]:
        return list(self.created.values())
