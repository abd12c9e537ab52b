"""The simulated agent's SWARM_SIM_HEALTH knob (agent/simulated.py), which the
control-plane tests of health-gated updates use."""

from __future__ import annotations

import pytest

from swarm.agent.simulated import SimulatedHealth, simulated_health
from swarm.api.v1 import objects_pb2 as pb


def task(*env: str, check: bool = True) -> pb.Task:
    result = pb.Task(id="t")
    result.spec.container.env.extend(env)
    if check:
        result.spec.container.healthcheck.test[:] = ["CMD", "true"]
    return result


def test_values() -> None:
    assert simulated_health(task(check=False)) is None  # no check: no health at all
    assert simulated_health(task("SWARM_SIM_HEALTH=unhealthy-after:1s", check=False)) is None
    assert simulated_health(task()) == SimulatedHealth(pb.TaskStatus.HEALTHY, 0.0)
    assert simulated_health(task("A=1", "SWARM_SIM_HEALTH=healthy-after:1500ms")) == \
        SimulatedHealth(pb.TaskStatus.HEALTHY, 1.5)
    assert simulated_health(task("SWARM_SIM_HEALTH=unhealthy-after:2s")) == \
        SimulatedHealth(pb.TaskStatus.UNHEALTHY, 2.0)
    assert simulated_health(task("SWARM_SIM_HEALTH=starting")) == \
        SimulatedHealth(pb.TaskStatus.HEALTH_STARTING, 0.0)


@pytest.mark.parametrize("value", ["sick", "healthy-after", "unhealthy-after:soon"])
def test_a_value_it_does_not_know_is_named(value: str) -> None:
    with pytest.raises(ValueError, match=f"SWARM_SIM_HEALTH='{value}'"):
        simulated_health(task(f"SWARM_SIM_HEALTH={value}"))
