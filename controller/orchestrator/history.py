"""Task history and reaping: which tasks leave the store.

A task can be deleted only when no agent is left with work the store no
longer accounts for (tasks.is_removable): not live, and terminal, never
assigned, or on a lost node. Then:

- UNWANTED slots (scaled down, ineligible node, removed service): every
  removable task is deleted;
- other slots keep at most `limit` tasks, the live one included, deleting the
  oldest removable ones; tasks never assigned that are no longer live go at
  once. The newest task of a slot without a live task is always kept: it is the
  restart supervisor's evidence (restart.successor).
"""

from __future__ import annotations

from collections.abc import Sequence

from .slots import Context, Role, Slot
from .tasks import age_key, is_live, is_removable, never_assigned


def reap(ctx: Context, slots: Sequence[Slot], limit: int) -> None:
    limit = max(limit, 1)
    for slot in slots:
        tasks = sorted(ctx.tasks(slot), key=age_key)
        if slot.role is Role.UNWANTED:
            for task in tasks:
                if is_removable(task, ctx.nodes):
                    ctx.work.delete(task.id)
            continue
        evidence = None if any(is_live(task) for task in tasks) or not tasks else tasks[-1]
        kept = []
        for task in tasks:
            if task is not evidence and not is_live(task) and never_assigned(task):
                ctx.work.delete(task.id)
            else:
                kept.append(task)
        excess = len(kept) - limit
        for task in kept:
            if excess <= 0:
                break
            if task is not evidence and is_removable(task, ctx.nodes):
                ctx.work.delete(task.id)
                excess -= 1
