"""The controller's API edge: the control servicer, and the pure validation and
reference resolution it relies on."""
