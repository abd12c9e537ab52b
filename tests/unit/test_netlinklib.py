"""swarm.host.netlinklib: pyroute2's classes without its package __init__,
and the package still whole for whoever asks it for more. In subprocesses:
which modules a fresh interpreter loads is the point."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_the_agent_loads_only_the_netlink_families_it_uses() -> None:
    loaded = run("import sys, swarm.agent.main; "
                 "print(sorted(m for m in ('pyroute2.ndb', 'pyroute2.ipdb', 'sqlite3', "
                 "'pyroute2.iproute.linux', 'pyroute2.conntrack') if m in sys.modules))")
    assert loaded == "['pyroute2.conntrack', 'pyroute2.iproute.linux']"


def test_the_package_completes_itself_when_asked_for_more() -> None:
    out = run("from swarm.host import netlinklib; import pyroute2; "
              "from pyroute2 import config, IPDB; "  # a submodule, then a name of __init__
              "print(pyroute2.IPRoute is netlinklib.IPRoute, IPDB.__name__, "
              "config.__name__)")
    assert out == "True IPDB pyroute2.config"


def test_an_imported_pyroute2_is_left_as_it_is() -> None:
    out = run("import pyroute2, sys; from swarm.host import netlinklib; "
              "print(netlinklib.bare_package() is pyroute2, 'pyroute2.ndb' in sys.modules)")
    assert out == "True True"
