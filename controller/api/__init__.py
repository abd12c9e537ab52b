"""The controller's API edge: the control servicer. The validation and reference
resolution it relies on are shared with swarmctl (swarm.api.validation,
swarm.api.refs)."""
