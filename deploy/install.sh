#!/usr/bin/env bash
# Production install of swarm on one machine, as root: the package in a
# virtual environment of its own with the pinned runtime dependencies
# (deploy/requirements.lock), the systemd units, and the Debian packages the
# machine's role needs. Nothing dev-only: no test tools, no etcd from PyPI, no
# registry, no iperf3, no editable install.
#
#   deploy/install.sh [--role agent|controller|etcd|all] [--wheel FILE]
#                     [--prefix /opt/swarm] [--etc /etc] [--no-apt]
#
# --role     which Debian packages to install (default all): agent = runc,
#            conmon, skopeo, iproute2, iptables, nftables; etcd = etcd-server
#            (Debian's own etcd.service is disabled: swarm-etcd.service runs it);
#            controller = nothing beyond Python.
# --wheel    the release wheel; default: build one from this checkout.
# --prefix   where the virtual environment goes (swarmctl, swarm-controller and
#            swarm-agent end up in PREFIX/bin).
# --etc      where systemd/system/*.service and swarm/ go (a staging root for
#            tests or images; systemd is reloaded only when it is /etc).
# --no-apt   install no Debian packages (they are there already).
# Safe to re-run: an upgrade replaces the package and the units, keeps
# /etc/swarm/*.env and every state directory.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
role=all wheel="" prefix=/opt/swarm etc=/etc apt=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --role) role="${2:?--role: expected agent, controller, etcd or all}"; shift 2 ;;
    --wheel) wheel="${2:?--wheel: expected a file}"; shift 2 ;;
    --prefix) prefix="${2:?--prefix: expected a directory}"; shift 2 ;;
    --etc) etc="${2:?--etc: expected a directory}"; shift 2 ;;
    --no-apt) apt=0; shift ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
agent_packages=(runc conmon skopeo iproute2 iptables nftables)
case "$role" in
  agent) packages=("${agent_packages[@]}") ;;
  controller) packages=() ;;
  etcd) packages=(etcd-server) ;;
  all) packages=("${agent_packages[@]}" etcd-server) ;;
  *) echo "install.sh: --role $role: expected agent, controller, etcd or all" >&2; exit 2 ;;
esac
if [ -n "$wheel" ] && [ ! -f "$wheel" ]; then
  echo "install.sh: --wheel $wheel: no such file" >&2; exit 2
fi
case "$prefix" in /*) ;; *) echo "install.sh: --prefix $prefix: expected an absolute path" >&2; exit 2 ;; esac
prefix="${prefix%/}"
# The prefix is replaced whole: refuse anything but an earlier install or a new directory.
if [ -e "$prefix" ] && [ ! -f "$prefix/pyvenv.cfg" ] && [ -n "$(ls -A "$prefix" 2>/dev/null)" ]; then
  echo "install.sh: --prefix $prefix: exists and is not an earlier install (no pyvenv.cfg); refusing to replace it" >&2
  exit 2
fi

if [ "$apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends python3 python3-venv "${packages[@]}"
  if [[ " ${packages[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd.service 2>/dev/null || true   # swarm-etcd.service runs etcd
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -z "$wheel" ]; then
  python3 -m venv "$work/build"
  "$work/build/bin/pip" wheel -q --no-deps --wheel-dir "$work" "$repo"
  wheel="$(ls "$work"/swarm_orchestrator-*.whl)"
fi

# A new environment each time (an upgrade never mixes two versions' files).
# Virtual environments name their interpreter by path, so it is made in place;
# if this fails half-way, run it again.
rm -rf "$prefix"
python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --disable-pip-version-check \
  --constraint "$repo/deploy/requirements.lock" "$wheel"

install -d -m 0755 "$etc/systemd/system"
install -d -m 0700 "$etc/swarm"
for unit in "$repo"/deploy/systemd/*.service; do
  sed "s|/opt/swarm/|$prefix/|g" "$unit" > "$etc/systemd/system/$(basename "$unit")"
done
if [ "$etc" = /etc ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed $("$prefix/bin/swarmctl" --version) in $prefix; units in $etc/systemd/system"
echo "next: deploy/PRODUCTION.md (etcd, controllers, joining agents)"
