"""controller.orchestrator: pure planners (replicated, global, restart, rolling
update, task history) and the reconciler loop that applies their plans."""

from .plan import OrchestratorSettings, ServicePlan, plan_service

__all__ = ["OrchestratorSettings", "ServicePlan", "plan_service"]
