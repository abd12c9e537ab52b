"""The filter pipeline: runs the filters in order and explains failures.

Each node is counted at the first filter it fails, so the explanation of a
pending task adds up to the number of nodes and names the most basic reason
per node ("not available" before "lacks memory").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from swarm.api.v1 import objects_pb2 as pb

from .filters import Filter, default_filters
from .nodeinfo import NodeInfo

NO_NODES = "no nodes in the cluster"


def no_suitable_node(parts: Sequence[str]) -> str:
    return f"no suitable node ({'; '.join(parts)})" if parts else "no suitable node"


class Pipeline:
    def __init__(self, filters: Sequence[Filter] | None = None) -> None:
        self._filters: list[Filter] = list(filters) if filters is not None else default_filters()
        self._active: list[Filter] = []
        self._failed: list[int] = []
        # (index into _active, filter) of the active filters whose answer can
        # change as tasks are placed; empty means a node that passed once
        # passes for the whole group.
        self._per_placement: list[tuple[int, Filter]] = []

    def set_task(self, task: pb.Task) -> None:
        """Prepare every filter for `task` and reset the failure counts."""
        self._active = [f for f in self._filters if f.set_task(task)]
        self._failed = [0] * len(self._active)
        self._per_placement = [(i, f) for i, f in enumerate(self._active) if f.per_placement]

    @property
    def rechecks(self) -> bool:
        """Whether nodes must be re-checked before each further placement."""
        return bool(self._per_placement)

    def check(self, info: NodeInfo) -> bool:
        """Run all active filters; count a failure at the first that refuses."""
        for i, node_filter in enumerate(self._active):
            if not node_filter.check(info):
                self._failed[i] += 1
                return False
        return True

    def passing(self, infos: Iterable[NodeInfo]) -> list[NodeInfo]:
        """The nodes that pass every active filter (the hot loop of a pass)."""
        checks = [(i, f.check) for i, f in enumerate(self._active)]
        failed = self._failed
        passed: list[NodeInfo] = []
        append = passed.append
        for info in infos:
            for i, check in checks:
                if not check(info):
                    failed[i] += 1
                    break
            else:
                append(info)
        return passed

    def recheck(self, info: NodeInfo) -> bool:
        """Re-run only the per-placement filters on a node that passed before.

        The static filters passed already, so the first per-placement filter
        that refuses is also the node's first failing filter overall.
        """
        for i, node_filter in self._per_placement:
            if not node_filter.check(info):
                self._failed[i] += 1
                return False
        return True

    def explain(self) -> str:
        """'no suitable node (2 nodes lack memory; 1 node fails node.labels.zone==a)'."""
        parts = [f.explain(n) for f, n in zip(self._active, self._failed, strict=True) if n]
        return no_suitable_node(parts)
