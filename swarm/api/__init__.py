"""What the controller, the agent and swarmctl share: the generated API
(`swarm.api.v1`), the value formats operators type (`swarm.api.units`), the
cluster PKI (`swarm.api.pki`) and the one place gRPC links get their TLS and
limits (`swarm.api.channels`)."""
