"""One HA local cluster for the chaos suite (3 controllers, 3 etcd members, a
real host, simulated agents), made once per module and removed afterwards --
checking that `dev down` leaves nothing. Runs under the machine-wide lock:

    flock /tmp/swarm-heavy.lock pytest -q -x tests/chaos
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.cli.dev import cluster
from swarm.cli.dev.daemons import alive
from tests.chaos.harness import HACluster, require_root

SUBNET = "192.168.183.0/24"  # no other test uses it
DISK_BYTES = 128 << 20
MIN_FREE = 32 << 20


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HACluster]:
    require_root()
    name = "c" + secrets.token_hex(3)
    # `dev up` writes a swarmctl context: keep it away from the operator's.
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    # The real host's state dir is a small file system the disk test fills.
    made = HACluster(name, SUBNET, controllers=3, etcd_members=3, hosts=1, sim_nodes=10,
                     node_disk_bytes=DISK_BYTES, agent_args=("--disk-min-free", str(MIN_FREE)))
    try:
        made.up()
        yield made
    finally:
        daemons = list(made.state.daemons) if made.state is not None else []
        made.down()
        if saved is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = saved
        # `dev down` removes everything, also after the faults the tests made.
        assert not [d.role for d in daemons if alive(d)]
        run = Path("/run/netns")
        assert not [n for n in (os.listdir(run) if run.is_dir() else [])
                    if n.startswith(cluster.namespace_prefix(name))]
        assert not cluster.state_dir(name).exists()
