"""swarm: a multi-host container orchestrator.

The one import package the project installs. Its parts are the repository's
top-level folders, linked in here so that the source tree keeps the layout
the project was designed with while everything imports as `swarm.*`:

    swarm.api         the shared layer: generated gRPC API (`swarm.api.v1`), value
                      formats, naming, PKI, channels, validation (swarm/api/)
    swarm.controller  swarm-controller (controller/)
    swarm.agent       swarm-agent (agent/)
    swarm.cli         swarmctl (cli/)

Layers (enforced by import-linter, see .importlinter): cli → api;
controller → api; agent → api; controller and agent never import each other.
"""

__version__ = "0.2.0"
