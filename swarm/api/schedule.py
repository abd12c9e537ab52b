"""Job schedules (`--schedule`, ServiceSpec.schedule): when a scheduled job's
runs are due. Pure; shared by the CLI (checked before sending), the API's
validation and the orchestrator (controller/orchestrator/jobs.py).

Two forms:

- a 5-field cron expression in UTC ("*/5 * * * *", "0 3 * * 1-5") or one of
  the usual nicknames (@hourly, @daily, @weekly, @monthly, @yearly), parsed by
  croniter (pallets-eco, maintained) rather than by a parser of our own: the
  day-of-month / day-of-week OR rule, names, steps and ranges are easy to get
  subtly wrong. A sixth (seconds) field is refused: croniter would accept it,
  but its position differs between cron dialects;
- `@every DURATION` ("@every 30s", "@every 1h30m"), as robfig/cron (Go) and
  Nomad spell it, for intervals cron cannot express (below a minute, or not
  dividing an hour). Its fire times are the multiples of the duration since
  the Unix epoch, so they depend on nothing but the expression: any controller
  computes the same times, which is what makes a leader failover safe.

`latest_fire(expr, now)` is the schedule time a run at `now` stands for; the
orchestrator records it (JobStatus.last_scheduled) when it starts or skips a
run, and a run is due when the latest fire time is after the recorded one.
Fire times missed while no leader ran collapse into the latest one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from .units import parse_duration

EVERY = "@every"
MIN_EVERY_SECONDS = 1.0
_NICKNAMES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                        "@hourly"})


class BadSchedule(ValueError):
    """The expression does not parse; the message says why (without the field name)."""


@dataclass(frozen=True)
class Schedule:
    text: str
    every: float | None  # seconds, for @every; None for cron

    def latest_fire(self, now: float) -> float:
        """The last fire time at or before `now` (seconds since the epoch)."""
        if self.every is not None:
            return math.floor(now / self.every) * self.every
        # get_prev is strictly before its start: start just past `now` (cron
        # times are whole minutes, so one second past loses nothing).
        after = datetime.fromtimestamp(math.floor(now) + 1, UTC)
        return float(croniter(self.text, after).get_prev(float))

    def next_fire(self, now: float) -> float:
        """The first fire time strictly after `now`."""
        if self.every is not None:
            return (math.floor(now / self.every) + 1) * self.every
        return float(croniter(self.text, datetime.fromtimestamp(now, UTC)).get_next(float))


def parse_schedule(text: str) -> Schedule:
    expr = " ".join(text.split())
    if not expr:
        raise BadSchedule("is empty (expected 5 cron fields, e.g. '*/5 * * * *', or '@every 30s')")
    if expr.split(" ", 1)[0] == EVERY:
        rest = expr[len(EVERY):].strip()
        try:
            seconds = parse_duration(rest) / 1e9
        except ValueError:
            raise BadSchedule(f"{expr!r}: {rest!r} is not a duration (e.g. '@every 30s')") from None
        if seconds < MIN_EVERY_SECONDS:
            raise BadSchedule(f"{expr!r}: the interval must be at least 1s")
        return Schedule(expr, seconds)
    if expr.startswith("@"):
        if expr not in _NICKNAMES:
            raise BadSchedule(f"{expr!r} is not a schedule (expected 5 cron fields, @hourly, "
                              "@daily, @weekly, @monthly, @yearly or '@every DURATION')")
        return Schedule(expr, None)
    fields = expr.split(" ")
    if len(fields) != 5:
        raise BadSchedule(f"{expr!r} has {len(fields)} fields; a cron expression has 5 "
                          "(minute hour day-of-month month day-of-week, UTC); "
                          "use '@every 10s' for seconds")
    if not all(re.fullmatch(r"[0-9A-Za-z*/,\-?LW#]+", field) for field in fields) or \
            not croniter.is_valid(expr):
        raise BadSchedule(f"{expr!r} is not a valid cron expression (minute hour day-of-month "
                          "month day-of-week, e.g. '*/5 * * * *')")
    return Schedule(expr, None)
