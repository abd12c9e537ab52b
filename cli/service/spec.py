"""The ServiceSpecs `service create` and `service update` send, built by pure
functions from the options (cli/service/options.py) before anything is sent:
a bad value is a one-line error naming the flag (exit 2) without a controller.

create builds a spec from nothing (service_spec_from_options, after
create_target has read its positionals in both forms); update applies its
flags to a copy of the current spec (updated_service_spec). Both apply the
shared flags through task_spec.apply_task_options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from swarm.api import imageref
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import HOST_NETWORK, JOB_MODES

from .. import parsing
from ..errors import BadFlag, BadInput
from ..payload_refs import append_references, edit_references, parse_reference
from ..runopts import apply_create_options, apply_update_options, env_file_entries
from . import generic
from .options import ServiceOptions, ServiceUpdateOptions
from .task_spec import apply_task_options, merge_env

_MODES = {"replicated": "replicated", "global": "global", "replicated-job": "replicated_job",
          "global-job": "global_job"}


@dataclass(frozen=True)
class CreateTarget:
    """What `service create`'s positionals and --name/--image amount to."""

    name: str
    image: str | None
    args: list[str]


def name_from_image(image: str) -> str:
    """The service name docker's form of create gives when --name is absent: the
    image's last path component (`registry:5000/team/web-app:1.2` -> `web-app`),
    with the '.' a repository allows but a service name does not made '-'.
    Readable in `service ls` and predictable for scripts, unlike docker's random
    adjective_noun; a second service of the same image needs --name (the
    controller refuses the duplicate name, nothing is written)."""
    component = imageref.parse_reference(image).repository.rsplit("/", 1)[-1]
    return component.replace(".", "-")[:63].rstrip("-_")


def create_target(positionals: Sequence[str], name: str | None,
                  image: str | None) -> CreateTarget:
    """Read create's positionals in both forms. With --image (today's form) they
    are NAME [CMD...], or only CMD when --name is given too. Without --image
    (docker's form, `service create [--name NAME] IMAGE [CMD...]`) the first one
    is the image, and the name is --name or the image's last path component."""
    rest = list(positionals)
    if image is not None:
        if name is None:
            if not rest:
                raise BadInput("a service name is required: service create NAME --image "
                               "IMAGE, or service create [--name NAME] IMAGE")
            name = rest.pop(0)
        return CreateTarget(name=name, image=image, args=rest)
    if not rest:
        raise BadFlag("--image", "missing: give the image to run, e.g. service create "
                                 "busybox, or --image busybox")
    image = rest.pop(0)
    try:
        derived = name_from_image(image)
    except imageref.InvalidReference as error:
        raise BadInput(f"IMAGE: {error} (service create [--name NAME] IMAGE [CMD...], "
                       "or NAME --image IMAGE)") from None
    return CreateTarget(name=derived if name is None else name, image=image, args=rest)


def host_network(networks: Sequence[pb.NetworkAttachmentConfig],
                 publish: Sequence[str]) -> bool:
    """Whether `--network host` was asked for; refused with another network, an
    alias or --publish (the task binds the node's ports itself), as the controller
    refuses it (validation.check_host_network), but before anything is sent."""
    if all(a.target != HOST_NETWORK for a in networks):
        return False
    if len(networks) > 1:
        raise BadFlag("--network", "host cannot be combined with other networks")
    if networks[0].aliases:
        raise BadFlag("--network", "host takes no alias (the task has the node's names)")
    if publish:
        raise BadFlag("--publish", "cannot be used with --network host: the task binds the "
                                   "node's ports itself")
    return True


def service_spec_from_options(options: ServiceOptions) -> pb.ServiceSpec:
    """The ServiceSpec `service create` sends; raises BadFlag for a bad value."""
    if not options.name.strip():
        raise BadInput("a service name is required")
    spec = pb.ServiceSpec(name=options.name)
    mode = parsing.choice("--mode", options.mode or "replicated", _MODES)
    if mode in ("global", "global_job"):
        if options.replicas is not None:
            raise BadFlag("--replicas", f"cannot be used with --mode {options.mode}")
        if mode == "global_job":
            spec.global_job.SetInParent()
        else:
            getattr(spec, "global").SetInParent()
    elif mode == "replicated_job":
        # Docker's defaults: one completion; as many at once as completions.
        completions = 1 if options.replicas is None else \
            parsing.count("--replicas", options.replicas)
        spec.replicated_job.total_completions = completions
        spec.replicated_job.max_concurrent = max(completions, 1)
    else:
        spec.replicated.replicas = 1
    if options.image is None:
        raise BadFlag("--image", "missing: give the image to run, e.g. --image busybox")
    apply_task_options(spec, options)
    if mode in JOB_MODES and options.restart_condition is None:
        # Docker's default for a job: restart a task that failed, not one that completed.
        spec.task.restart.condition = pb.RestartPolicy.ON_FAILURE
    container = spec.task.container
    container.args[:] = options.args
    container.env[:] = merge_env(env_file_entries(options.env_files), [], options.env,
                                  "--env")
    apply_create_options(container, options, options)
    for item in options.labels:
        key, value = parsing.key_value("--label", item, value_required=False)
        spec.labels[key] = value
    for item in options.container_labels:
        key, value = parsing.key_value("--container-label", item, value_required=False)
        container.labels[key] = value
    placement = spec.task.placement
    for item in options.constraints:
        placement.constraints.append(parsing.constraint("--constraint", item))
    for item in options.placement_prefs:
        placement.preferences.add(spread=parsing.placement_pref("--placement-pref", item))
    for item in options.publish:
        spec.endpoint.ports.append(parsing.port_config("--publish", item))
    attachments = [parsing.network_attachment("--network", item) for item in options.networks]
    if host_network(attachments, options.publish):
        spec.task.host_network = True
    else:
        spec.task.networks.extend(attachments)
    for item in options.mounts:
        container.mounts.append(parsing.mount("--mount", item))
    append_references(container, "secret",
                      [parse_reference("secret", "--secret", item) for item in options.secrets])
    append_references(container, "config",
                      [parse_reference("config", "--config", item) for item in options.configs])
    generic.apply_create(spec, options.generic_resources)
    return spec


def _same_port(port: pb.PortConfig, wanted: pb.PortConfig) -> bool:
    if port.protocol != wanted.protocol:
        return False
    if wanted.published_port:
        return port.published_port == wanted.published_port
    return port.target_port == wanted.target_port


def updated_service_spec(current: pb.ServiceSpec,
                         options: ServiceUpdateOptions) -> pb.ServiceSpec:
    """A copy of `current` with the `service update` flags applied; raises BadFlag."""
    spec = pb.ServiceSpec()
    spec.CopyFrom(current)
    apply_task_options(spec, options)
    container = spec.task.container
    apply_update_options(container, options, options)
    if options.args is not None:
        container.args[:] = parsing.shell_words("--args", options.args)
    env_rm = [parsing.key_only("--env-rm", key) for key in options.env_rm]
    container.env[:] = merge_env(container.env, env_rm, options.env_add, "--env-add")
    for flag, target, remove, add in (
        ("--label", spec.labels, options.label_rm, options.label_add),
        ("--container-label", container.labels, options.container_label_rm,
         options.container_label_add),
    ):
        for key in remove:
            target.pop(parsing.key_only(f"{flag}-rm", key), None)
        for item in add:
            key, value = parsing.key_value(f"{flag}-add", item, value_required=False)
            target[key] = value
    placement = spec.task.placement
    removed = {parsing.constraint("--constraint-rm", item) for item in options.constraint_rm}
    constraints = [c for c in placement.constraints if c.replace(" ", "") not in removed]
    for item in options.constraint_add:
        wanted = parsing.constraint("--constraint-add", item)
        if wanted not in constraints:
            constraints.append(wanted)
    placement.constraints[:] = constraints
    removed = {parsing.placement_pref("--placement-pref-rm", item)
               for item in options.placement_pref_rm}
    spreads = [p.spread for p in placement.preferences if p.spread not in removed]
    for item in options.placement_pref_add:
        spread = parsing.placement_pref("--placement-pref-add", item)
        if spread not in spreads:
            spreads.append(spread)
    del placement.preferences[:]
    for spread in spreads:
        placement.preferences.add(spread=spread)
    ports = list(spec.endpoint.ports)
    for item in options.publish_rm:
        wanted_port = parsing.port_config("--publish-rm", item)
        ports = [p for p in ports if not _same_port(p, wanted_port)]
    for item in options.publish_add:
        new_port = parsing.port_config("--publish-add", item)
        ports = [p for p in ports if not _same_port(p, new_port)] + [new_port]
    if options.publish_rm or options.publish_add:
        del spec.endpoint.ports[:]
        spec.endpoint.ports.extend(ports)
    mounts = list(container.mounts)
    for path in options.mount_rm:
        mounts = [m for m in mounts if m.target not in (path, path.rstrip("/"))]
    for item in options.mount_add:
        new_mount = parsing.mount("--mount-add", item)
        mounts = [m for m in mounts if m.target != new_mount.target] + [new_mount]
    if options.mount_rm or options.mount_add:
        del container.mounts[:]
        container.mounts.extend(mounts)
    edit_references(container, "secret", options.secret_rm, options.secret_add)
    edit_references(container, "config", options.config_rm, options.config_add)
    generic.apply_update(spec, options.generic_resource_add, options.generic_resource_rm)
    if options.force:
        spec.task.force_update += 1
    return spec


def check_update_options(options: ServiceUpdateOptions) -> None:
    """Parse every flag of `service update` before connecting."""
    if options.rollback and options.changes_spec():
        raise BadFlag("--rollback", "cannot be combined with other changes")
    updated_service_spec(pb.ServiceSpec(), options)
