"""Service handlers: create, read, update (and roll back), scale, remove, rebalance.

A service is written together with its endpoint (VIPs, published ports),
which the allocator's pure planner works out (allocator/endpoint.py); a
rebalance is planned by the orchestrator (orchestrator/rebalance.py). Every
write is one read-modify-write (base.Handlers._write): a race lost to a
status write or to another allocation is planned again on the server.
An update given the version it read is refused (ABORTED) only when the
service's spec changed since; status changes in between do not count.
A create or update commits only if the secrets and configs it references
are still stored (secrets.reference_guards: a removal racing it fails one
of the two).
"""

from __future__ import annotations

import asyncio
import logging
import time

from swarm.api.refs import resolve_ref
from swarm.api.schedule import parse_schedule
from swarm.api.units import timestamp
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import is_job, normalize_service_spec, validate_replicas

from ..allocator.claims import release_ports, release_vips
from ..allocator.endpoint import endpoint_ops, plan_endpoint, replicas_needed
from ..ids import new_id
from ..orchestrator import rebalance
from ..store import Create, Delete, Planned, ReleaseName, ReserveName, Update
from .base import Handlers, copy, select, service_name
from .errors import AlreadyExists, ChangedConcurrently, Context, FailedPrecondition, InvalidArgument, NotFound
from .registry_auth import redacted, sealed_credentials
from .secrets import reference_guards, references_moved, resolve_payload_references

log = logging.getLogger(__name__)


def template_changed(old: pb.ServiceSpec, new: pb.ServiceSpec) -> bool:
    return old.task.SerializeToString(deterministic=True) != \
        new.task.SerializeToString(deterministic=True) or \
        old.endpoint.SerializeToString(deterministic=True) != \
        new.endpoint.SerializeToString(deterministic=True)


def new_job_status(spec: pb.ServiceSpec, now: float) -> pb.JobStatus:
    """A new job's status: its first run starts now, or, on a schedule, at the
    first fire time after its creation (the fire time at or before now counts as
    seen, as a CronJob created between two fire times waits for the next)."""
    if spec.schedule:
        status = pb.JobStatus(iteration=0, state=pb.JobStatus.WAITING,
                              message="waiting for the schedule")
        status.last_scheduled.CopyFrom(timestamp(parse_schedule(spec.schedule).latest_fire(now)))
        return status
    return pb.JobStatus(iteration=1, state=pb.JobStatus.RUNNING,
                        last_execution=timestamp(now))


def next_iteration(service: pb.Service, now: float) -> None:
    """Start the job again (Swarm's JobIteration): tasks of earlier iterations
    no longer count, and are stopped if still running."""
    status = service.job_status
    status.iteration += 1
    status.state = pb.JobStatus.RUNNING
    status.message = ""
    status.last_execution.CopyFrom(timestamp(now))
    status.ClearField("finished_at")


def updated_service(current: pb.Service, spec: pb.ServiceSpec, *, rollback: bool) -> pb.Service:
    """`current` with the new spec; a changed task template or endpoint starts
    an update (or a rollback) the orchestrator carries out. A job has no rolling
    update: every update re-runs it (a new iteration), as in Swarm."""
    service = copy(current)
    if is_job(spec):
        if template_changed(current.spec, spec):
            service.previous_spec.CopyFrom(current.spec)
            service.spec_version += 1
        next_iteration(service, time.time())
    elif template_changed(current.spec, spec):
        service.previous_spec.CopyFrom(current.spec)
        service.spec_version += 1
        service.update_status.Clear()
        service.update_status.state = (pb.UpdateStatus.ROLLBACK_STARTED if rollback
                                       else pb.UpdateStatus.UPDATING)
        service.update_status.started_at.GetCurrentTime()
        service.update_status.message = "rollback in progress" if rollback else "update in progress"
    service.spec.CopyFrom(spec)
    return service


class Services(Handlers):
    async def CreateService(self, request: cpb.CreateServiceRequest,
                            context: Context) -> cpb.ServiceResponse:
        cache = self._store.cache
        normalized = normalize_service_spec(request.spec, cache.networks)
        service_id = new_id()
        exists = f"spec.name: service {normalized.name!r} already exists"
        credentials = sealed_credentials(self._payload_key, request, service_id, normalized)

        def step() -> Planned[pb.Service]:
            # Resolved on every attempt: a secret or config removed meanwhile
            # no longer resolves.
            spec = resolve_payload_references(normalized, cache)
            if any(s.spec.name == spec.name for s in cache.services.values()):
                raise AlreadyExists(exists)
            service = pb.Service(id=service_id, spec=spec, spec_version=1)
            if is_job(spec):
                service.job_status.CopyFrom(new_job_status(spec, time.time()))
            if credentials is not None:
                service.registry_auth.CopyFrom(credentials)
            plan = plan_endpoint(service_id, spec, pb.Endpoint(), cache.networks,
                                 self._addresses, cache.services.values(), replicas_needed(spec))
            guards = reference_guards(spec, cache)

            def retry() -> bool:
                # A race on a network, on a referenced secret or config, or perhaps
                # on a port (the checks tell, once seen); otherwise the name was
                # taken (its key is not cached).
                if plan.networks_moved(cache.networks) or plan.ports.claimed or \
                        references_moved(guards, cache):
                    return True
                raise AlreadyExists(exists)

            return Planned([Create(service), ReserveName("services", spec.name, service_id),
                            *endpoint_ops(self._store.keys, service, plan), *guards], service,
                           retry)

        service = await self._write("create service", step,
                                    gave_up="its networks kept changing concurrently; try again")
        log.info("created service %s (%s)", service.spec.name, service.id)
        return cpb.ServiceResponse(service=redacted(service))

    async def GetService(self, request: cpb.GetRequest, context: Context) -> cpb.ServiceResponse:
        self._fresh()
        service = resolve_ref(request.ref, self._store.cache.services, service_name, "service")
        return cpb.ServiceResponse(service=redacted(service))

    async def ListServices(self, request: cpb.ListServicesRequest,
                           context: Context) -> cpb.ListServicesResponse:
        self._fresh()
        filters = request.filters
        services = select(self._store.cache.services.values(), filters, lambda s: s.id,
                          service_name, lambda s: s.spec.labels, filters.labels)
        services.sort(key=lambda s: s.spec.name)
        return cpb.ListServicesResponse(services=[redacted(s) for s in services])

    async def UpdateService(self, request: cpb.UpdateServiceRequest,
                            context: Context) -> cpb.ServiceResponse:
        cache = self._store.cache

        async def step() -> Planned[pb.Service]:
            current = cache.services.get(request.service_id)
            if current is None:
                raise NotFound(f"service {request.service_id!r} not found")
            if not await self._spec_unchanged_since(current, request.version):
                raise ChangedConcurrently(
                    f"service {current.spec.name!r} changed since it was read "
                    f"(version {request.version}, now {current.meta.version}); read it again")
            if request.rollback and not current.HasField("previous_spec"):
                raise FailedPrecondition(
                    f"service {current.spec.name!r} has no previous spec to roll back to")
            spec = resolve_payload_references(normalize_service_spec(
                current.previous_spec if request.rollback else request.spec, cache.networks),
                cache)
            if spec.name != current.spec.name:
                raise InvalidArgument(f"spec.name: a service cannot be renamed "
                                      f"({current.spec.name!r} to {spec.name!r})")
            if spec.WhichOneof("mode") != current.spec.WhichOneof("mode"):
                raise InvalidArgument(
                    f"spec.mode: a service cannot change mode "
                    f"({current.spec.WhichOneof('mode')} to {spec.WhichOneof('mode')})")
            service = updated_service(current, spec, rollback=request.rollback)
            credentials = sealed_credentials(self._payload_key, request, current.id, spec)
            if credentials is not None:
                service.registry_auth.CopyFrom(credentials)
            plan = plan_endpoint(service.id, spec, current.endpoint, cache.networks,
                                 self._addresses, cache.services.values(), 0)
            return Planned([Update(service), *endpoint_ops(self._store.keys, service, plan),
                            *reference_guards(spec, cache)], service)

        name = cache.services[request.service_id].spec.name \
            if request.service_id in cache.services else request.service_id
        service = await self._write(f"update service {name!r}", step,
                                    gave_up=f"service {name!r} kept changing concurrently; "
                                            "try again")
        return cpb.ServiceResponse(service=redacted(service))

    async def ScaleService(self, request: cpb.ScaleServiceRequest,
                           context: Context) -> cpb.ServiceResponse:
        validate_replicas(request.replicas)

        def step() -> Planned[pb.Service]:
            current = resolve_ref(request.ref, self._store.cache.services, service_name,
                                  "service")
            mode = current.spec.WhichOneof("mode")
            if mode not in ("replicated", "replicated_job"):
                raise FailedPrecondition(f"service {current.spec.name!r} is "
                                         f"{mode.replace('_', '-') if mode else 'global'}: scale "
                                         "applies to replicated services and jobs only")
            service = copy(current)
            if mode == "replicated_job":
                # Docker: scaling a job changes its completions and re-runs it.
                service.spec.replicated_job.total_completions = request.replicas
                next_iteration(service, time.time())
            else:
                service.spec.replicated.replicas = request.replicas
            return Planned([Update(service)], service)

        service = await self._write("scale", step, gave_up="service kept changing; try again")
        return cpb.ServiceResponse(service=redacted(service))

    async def RemoveService(self, request: cpb.RemoveRequest,
                            context: Context) -> cpb.RemoveResponse:
        services = self._store.cache.services
        found = resolve_ref(request.ref, services, service_name, "service")
        keys = self._store.keys

        def step() -> Planned[pb.Service]:
            service = services.get(found.id)
            if service is None:
                raise NotFound(f"service {request.ref!r} not found")
            # Its VIPs and ports go with it; its tasks' addresses go with each task record.
            return Planned([Delete("services", service.id, service.meta.version),
                            ReleaseName("services", service.spec.name),
                            *release_vips(keys, service), *release_ports(keys, service)], service)

        service = await self._write(f"remove service {found.spec.name!r}", step)
        log.info("removed service %s (%s)", service.spec.name, service.id)
        return cpb.RemoveResponse(id=service.id)

    async def RebalanceService(self, request: cpb.RebalanceServiceRequest,
                               context: Context) -> cpb.RebalanceServiceResponse:
        """Plan (orchestrator/rebalance.py), then start the rebalance in one
        transaction; the orchestrator's update machinery carries it out. A task
        that changed meanwhile (a status report) means planning again."""
        cache = self._store.cache
        Result = tuple[cpb.RebalanceServiceResponse, pb.Service | None]

        async def step() -> Planned[Result]:
            service = resolve_ref(request.ref, cache.services, service_name, "service")
            tasks = list(cache.tasks_by_service.get(service.id, {}).values())
            why_not = rebalance.refusal(service, tasks)
            if why_not is not None:
                raise FailedPrecondition(why_not)
            # Planned in a thread over a snapshot (the cache's objects are replaced,
            # never changed in place): a plan over 100,000 tasks takes about a
            # second, which the event loop (leases, heartbeats) must not wait for.
            plan = await asyncio.to_thread(rebalance.plan_rebalance, service, tasks,
                                           dict(cache.nodes), list(cache.tasks.values()))
            response = cpb.RebalanceServiceResponse(service=redacted(service))
            response.moves.extend(
                cpb.RebalanceMove(slot=move.slot, task_id=move.task_id,
                                  from_node=move.from_node, to_node=move.to_node,
                                  reason=move.reason)
                for move in plan.moves)
            if not plan.moves:
                response.message = f"already balanced: {plan.summary()}"
                return Planned([], (response, None))
            if request.dry_run:
                response.message = f"dry run: {plan.summary()}"
                return Planned([], (response, None))
            updated, marked = rebalance.start(service, tasks, plan, time.time())
            return Planned([Update(updated), *(Update(task) for task in marked)],
                           (response, updated))

        name = resolve_ref(request.ref, cache.services, service_name, "service").spec.name
        response, updated = await self._write(
            f"rebalance service {name!r}", step,
            gave_up="the service's tasks kept changing; try again")
        if updated is not None:
            log.info("rebalancing service %s: %d slots move", updated.spec.name,
                     len(response.moves))
            response.service.CopyFrom(updated)
        return response
