"""What the controller, the agent and swarmctl share: the generated API
(`swarmapi.v1`), the value formats operators type (`swarmapi.units`), the
cluster PKI (`swarmapi.pki`) and the one place gRPC links get their TLS and
limits (`swarmapi.channels`)."""
