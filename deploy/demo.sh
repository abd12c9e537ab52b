#!/usr/bin/env bash
# The main job on one machine: set up (deploy/setup.sh), start etcd, two
# controllers (one leads) and three nodes, create a service, scale it with
# `swarmctl service scale web=5`, show where its tasks run, then tear down.
#
# Nodes are SIMULATED agents here (real gRPC sessions, no containers) until
# the runc agent lands; see README "Status".
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

work=$(mktemp -d /tmp/swarm-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port); peer_port=$(free_port); c1=$(free_port); c2=$(free_port)

etcd --data-dir "$work/etcd" --log-level warn \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "default=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
pids+=($!)
for port in "$c1" "$c2"; do
  swarm-controller --listen "127.0.0.1:$port" --etcd "127.0.0.1:$etcd_port" \
    --heartbeat-period 1 >"$work/controller-$port.log" 2>&1 &
  pids+=($!)
done
python -m agent.simulated --controller "127.0.0.1:$c1" --controller "127.0.0.1:$c2" \
  --nodes 3 --hostname-prefix node >"$work/agents.log" 2>&1 &
pids+=($!)

export SWARMCTL_CONTROLLER="127.0.0.1:$c2"
for _ in $(seq 100); do
  [ "$(swarmctl node ls -o json 2>/dev/null | python -c 'import json,sys; print(sum(n["status"]["state"]=="READY" for n in json.load(sys.stdin)))' 2>/dev/null)" = 3 ] && break
  sleep 0.2
done
set -x
swarmctl node ls
swarmctl service create web --image busybox:latest --replicas 3 -- httpd -f -p 80
swarmctl service scale web=5
sleep 2
swarmctl service ps web
swarmctl service ls
set +x
