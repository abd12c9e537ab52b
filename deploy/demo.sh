#!/usr/bin/env bash
# The main job on one machine (root): set up (deploy/setup.sh), bring up a
# local cluster of 3 simulated hosts -- each a network namespace running a
# real swarm-agent that runs runc containers -- with etcd, a controller and a
# registry holding the demo image; create `web`, scale it with
# `swarmctl service scale web=5`, show where it runs and fetch each task's page.
# The cluster stays up for you to explore; `swarmctl dev down` removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

swarmctl dev down >/dev/null 2>&1 || true   # a previous demo's cluster
swarmctl dev up --nodes 3
registry=$(python -c 'from cli.dev import cluster; print(cluster.status("dev").registry)')

set -x
swarmctl node ls
swarmctl service create web --image "$registry/demo:latest" --replicas 3 \
  --env 'TASK_NAME={{.Task.Name}}' --env 'NODE_NAME={{.Node.Hostname}}'
swarmctl service scale web=5
swarmctl service ps web
swarmctl dev status
set +x

# Each task is a container in its own network namespace on its host; until
# overlay networks and published ports land (issue 4) its page is fetched
# from inside that namespace.
for netns in $(ip netns list | awk '/^swarm-/ {print $1}'); do
  printf '%s: ' "$netns"
  nsenter --net="/run/netns/$netns" busybox wget -qO- http://127.0.0.1:80/ || echo "(no answer)"
done
echo
echo "The cluster is up: try 'swarmctl service ls'; remove it with 'swarmctl dev down'."
