"""`python -m bench.chaos`: how long a leader's death holds up pending work,
and what it costs. One JSON line.

An HA local cluster of its own (`swarmctl dev up --controllers 3
--etcd-members 3` machinery, one real host, simulated agents that know only
the first controller and learn the others), a service on the simulated
nodes, and `web` (the demo image's httpd, 2 real containers on the real
host, port 8080 published through the routing mesh); then, KILLS times: the
service is scaled up by STEP and the leader is SIGKILLed at once; the clock
runs from the SIGKILL until the new leader has converged the scale (every
slot RUNNING, none twice). The killed controller is started again before
the next round. During each kill a bounded client load (bench.load) sends
`GET /` on a new connection every 50 ms to port 8080 of the real host's
address, from this (the root) namespace as deploy/demo.sh fetches: from
1 s before the SIGKILL until the new leader has converged.

    failover_s       median and max of those times (goal: max <= 5 with the
                     default 5 s lease)
    election_s       median and max from the SIGKILL until another leads
    lost_tasks       tasks RUNNING before a kill that were not RUNNING after
    duplicate_slots  slots with more than one RUNNING task after convergence
    failed_requests  of `requests` through the routing mesh during the kills
                     (goal 0: a leader's death must not touch the data path),
                     with `failure_reasons`; `web_restarted` counts web's
                     containers whose pid changed

Run it under the machine-wide lock: flock /tmp/swarm-heavy.lock python -m bench.chaos
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import tempfile
import time

from bench.load import Load, Tally
from swarm.api.v1 import objects_pb2 as pb
from tests.chaos.harness import HACluster, slot_tasks

SUBNET = "192.168.201.0/24"
PORT = 8080
LEAD = 1.0  # seconds of load before each SIGKILL


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2)}


def run(kills: int, start: int, step: int, sim_nodes: int) -> dict[str, object]:
    # The cluster writes a swarmctl context: keep it away from the operator's.
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="bench-config-")
    ha = HACluster("x" + secrets.token_hex(3), SUBNET, controllers=3, etcd_members=3, hosts=1,
                   sim_nodes=sim_nodes)
    failover: list[float] = []
    election: list[float] = []
    lost = duplicates = 0
    mesh = Tally()
    web_restarted = 0
    try:
        ha.up()
        replicas = start
        ha.create("chaos", replicas)
        targets = ha.create_web("web", 2, PORT)
        ha.converge("chaos", replicas, 60)
        web = ha.container_pids("web")
        for _ in range(kills):
            before = {t.id for t in ha.tasks("chaos")
                      if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING}
            leader = ha.wait_leader()
            role = ha.role_at(leader)
            load = Load(targets, interval=0.05, max_seconds=150, max_requests=3000).start()
            try:
                time.sleep(LEAD)
                replicas += step
                ha.scale("chaos", replicas)
                ha.signal(role, signal.SIGKILL)
                killed = time.monotonic()
                ha.wait_leader(other_than=leader, timeout=30)
                election.append(time.monotonic() - killed)
                ha.converge("chaos", replicas, 120)
                failover.append(time.monotonic() - killed)
            finally:
                mesh.merge(load.stop())
            tasks = ha.tasks("chaos")
            running = {t.id for t in tasks
                       if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING}
            lost += len(before - running)
            duplicates += sum(len(ts) > 1 for ts in slot_tasks(tasks).values())
            ha.restart(role)
            ha.wait(lambda: len(ha.controller_list()) == 3, 30, "3 controllers registered")
        after = ha.container_pids("web")
        web_restarted = sum(after.get(task) != pid for task, pid in web.items())
    finally:
        ha.down()
    return {"bench": "chaos", "kills": kills, "failover_s": _summary(failover),
            "election_s": _summary(election), "lost_tasks": lost,
            "duplicate_slots": duplicates, "failed_requests": mesh.failures,
            "requests": mesh.requests, "failure_reasons": dict(mesh.reasons),
            "web_restarted": web_restarted, "final_replicas": start + kills * step,
            "lease_ttl_s": 5, "heartbeat_s": 2}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--start", type=int, default=20, help="replicas before the first kill")
    parser.add_argument("--step", type=int, default=10, help="replicas added with each kill")
    parser.add_argument("--sim-nodes", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(run(args.kills, args.start, args.step, args.sim_nodes)))


if __name__ == "__main__":
    main()
