#!/usr/bin/env bash
# The main job on one machine (root): set up (deploy/setup.sh), bring up a
# local cluster of 3 simulated hosts -- each a network namespace running a
# real swarm-agent that runs runc containers -- with etcd, a controller and a
# registry holding the demo image; apply the example web stack
# (deploy/examples/web.yaml: services web_web and web_kv, as docker names a
# stack's services), scale it with `swarmctl service scale web_web=5`, show
# where it runs and fetch the page through the published port 8080 from every
# host's address (the routing mesh), printing which task answered.
# The cluster stays up for you to explore; `swarmctl dev down` removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

swarmctl dev down >/dev/null 2>&1 || true   # a previous demo's cluster
swarmctl dev up --nodes 3

set -x
swarmctl node ls
swarmctl apply -f deploy/examples/web.yaml
swarmctl service scale web_web=5
swarmctl service ps web_web
swarmctl dev status
set +x

# The web service publishes port 8080 through the routing mesh: every host
# listens on its own address, hosts without a web task included, and forwards
# each connection to a ready task wherever it runs (over the ingress overlay).
# Fetch the page through the published port from every host: the page names
# the task (and host) that answered.
fetch() {  # GET / from this (the root) namespace: no proxy settings apply
  python - "$1" "$2" <<'PY' 2>/dev/null
import http.client, sys
connection = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=3)
connection.request("GET", "/")
response = connection.getresponse()
if response.status != 200:
    sys.exit(1)
print(response.read().decode().strip())
PY
}
hosts=$(swarmctl node ls -o json | python -c 'import json,sys; print(" ".join(sorted(n["description"]["advertise_addr"] for n in json.load(sys.stdin))))')
unanswered=0
for host in $hosts; do
  for _ in 1 2 3; do
    page=""
    for _ in $(seq 50); do   # the tasks' first health checks make them ready
      page=$(fetch "$host" 8080 || true)
      [ -n "$page" ] && break
      sleep 0.2
    done
    echo "http://$host:8080/ -> ${page:-(no answer)}"
    [ -n "$page" ] || unanswered=$((unanswered + 1))
  done
done
echo
echo "The cluster is up: try 'swarmctl service ls'; remove it with 'swarmctl dev down'."
if [ "$unanswered" -gt 0 ]; then
  echo "demo: $unanswered requests through the published port got no answer" >&2
  exit 1
fi
