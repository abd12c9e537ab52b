"""What the controller, the agent and swarmctl share: the generated API
(`swarmapi.v1`) and the value formats operators type (`swarmapi.units`)."""
