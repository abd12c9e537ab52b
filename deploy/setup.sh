#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine (as root): the system packages
# the orchestrator and its tests use, and the project in ./.venv with its dev
# extras (which bring etcd, ruff and mypy). Both README commands start here.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  runc conmon busybox-static docker-registry skopeo   # containers and images
  iproute2 iptables nftables                           # host networking
  iperf3                                               # bench/overlay.py: TCP throughput
  chromium                                             # tests/integration/test_dashboard.py
  python3 python3-venv python3-pip                     # the project's interpreter
)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

# The production etcd (Debian's etcd-server, which deploy/install.sh installs
# on etcd machines), unpacked for tests/install without installing the
# package: that would enable and start an etcd service on this machine.
if [ ! -x .venv/debian-etcd/usr/bin/etcd ]; then
  download="$(mktemp -d)"
  (cd "$download" && { apt-get download -q etcd-server || { apt-get update -q && apt-get download -q etcd-server; }; })
  dpkg-deb -x "$download"/etcd-server_*.deb .venv/debian-etcd
  rm -rf "$download"
fi
