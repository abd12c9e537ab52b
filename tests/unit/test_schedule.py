"""Job schedules (swarm/api/schedule.py): what parses, what is refused and why,
and the fire-time contract the orchestrator relies on (latest <= now < next,
both fire times, nothing in between), and job spec validation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.api.schedule import BadSchedule, parse_schedule
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError, normalize_service_spec

NOW = 1_800_000_000.0

EXPRESSIONS = ["*/5 * * * *", "0 3 * * 1-5", "15,45 */2 1 * *", "0 0 1 1 *", "@hourly",
               "@daily", "30 4 * * sun", "0 12 29 2 *"]


@pytest.mark.parametrize(("text", "problem"), [
    ("", "is empty"),
    ("61 * * * *", "is not a valid cron expression"),
    ("* * * *", "has 4 fields; a cron expression has 5"),
    ("* * * * * *", "has 6 fields"),
    ("a b c d e", "is not a valid cron expression"),
    ("@fortnightly", "is not a schedule"),
    ("@every", "is not a duration"),
    ("@every soon", "is not a duration"),
    ("@every 500ms", "the interval must be at least 1s"),
])
def test_bad_schedules_say_why(text: str, problem: str) -> None:
    with pytest.raises(BadSchedule, match=problem):
        parse_schedule(text)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(EXPRESSIONS), st.floats(0, 400 * 86400))
def test_cron_fire_times_bracket_now(text: str, offset: float) -> None:
    schedule = parse_schedule(text)
    now = NOW + offset
    latest, following = schedule.latest_fire(now), schedule.next_fire(now)
    assert latest <= now < following
    for fire in (latest, following):
        assert croniter.match(text, datetime.fromtimestamp(fire, UTC))
    # Nothing fires in between: the next after `latest` is `following`.
    assert schedule.next_fire(latest) == following


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 7200), st.floats(0, 10 * 86400))
def test_every_fires_at_multiples_of_its_interval(seconds: int, offset: float) -> None:
    schedule = parse_schedule(f"@every {seconds}s")
    now = NOW + offset
    latest, following = schedule.latest_fire(now), schedule.next_fire(now)
    assert latest <= now < following
    assert following - latest == seconds
    assert latest % seconds == 0


def _job(mode: str = "replicated_job") -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="batch")
    spec.task.container.image = "busybox"
    if mode == "replicated_job":
        spec.replicated_job.total_completions = 6
        spec.replicated_job.max_concurrent = 2
    else:
        spec.global_job.SetInParent()
    return spec


def test_a_job_is_normalised_without_rolling_update_settings() -> None:
    normalized = normalize_service_spec(_job(), {})
    assert not normalized.HasField("update")
    assert not normalized.HasField("rollback")
    assert normalize_service_spec(normalized, {}) == normalized
    scheduled = _job("global_job")
    scheduled.schedule = "@every 10s"
    assert normalize_service_spec(scheduled, {}).schedule == "@every 10s"


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("max_concurrent", 0, "spec.mode.replicated_job.max_concurrent: must be at least 1"),
    ("max_concurrent", -1, "spec.mode.replicated_job.max_concurrent: must be at least 1"),
    ("total_completions", -2, "spec.mode.replicated_job.total_completions: must not be "
                              "negative"),
])
def test_bad_job_counts_are_refused_by_field(field: str, value: int, problem: str) -> None:
    spec = _job()
    setattr(spec.replicated_job, field, value)
    with pytest.raises(ValidationError, match=problem):
        normalize_service_spec(spec, {})


def test_update_settings_and_schedules_are_refused_where_they_do_not_belong() -> None:
    spec = _job()
    spec.rollback.parallelism = 1
    with pytest.raises(ValidationError, match=r"spec.rollback: a job has no rolling update"):
        normalize_service_spec(spec, {})
    service = pb.ServiceSpec(name="web")
    service.task.container.image = "busybox"
    service.schedule = "@daily"
    with pytest.raises(ValidationError, match=r"spec.schedule: applies to jobs only"):
        normalize_service_spec(service, {})
    bad = _job()
    bad.schedule = "* * * * * *"
    with pytest.raises(ValidationError, match=r"spec.schedule: .* has 6 fields"):
        normalize_service_spec(bad, {})
