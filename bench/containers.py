"""Container start and stop cost: the agent's runtime against raw runc.

    python -m bench.containers --containers 50
    python -m bench.containers --replicas 50     # end to end: scale through the controller

Builds a one-layer busybox rootfs (from Debian's busybox-static), then, in one
run and in this order:

* runtime: N containers (`sleep 3600`) prepared and started through
  RuncRuntime, all at once (as the worker does for N new tasks): overlay
  rootfs, a named network namespace with lo up, config.json, conmon as the
  monitor, `runc start`. Then all N stopped (SIGKILL) and removed.
* raw: N sequential `runc run -d` of equivalent bundles (the same rootfs,
  read-only, `sleep 3600`, a new network namespace each, a cgroup under one
  parent), then N sequential `runc kill KILL` + wait + `runc delete`.

Then the seccomp profile's cost: the runtime phase again, with the default
profile (as every task) and with seccomp=unconfined, in the order default,
unconfined, unconfined, default (so that a drift of the machine's load
cancels out), --seccomp-rounds times (default 3): the medians
`seccomp_default_start_seconds` and `seccomp_unconfined_start_seconds`, and
`seccomp_start_cost_percent`.
With --replicas, the end-to-end scale is timed the same way, a service per
round in one cluster (`seconds_to_running`, the default profile's mean, and
`seconds_to_running_unconfined`).

Prints one JSON line: seconds for each phase, the ratios runtime/raw, and the
p50/p99 of the per-container latency (for the runtime phase the latency of one
container's prepare+start inside the concurrent batch). Needs root, runc and
conmon. Everything made (containers, mounts, netns, cgroups, directories) is
removed at the end, also on failure or Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swarm.agent.runtime import ImageConfig, ImageInput, RuncRuntime, RuncSettings
from swarm.agent.runtime.runc import wait_pid_exit
from swarm.api.v1 import objects_pb2 as pb
from swarm.host import mounts
from swarm.host import netns as netns_module

BUSYBOX = Path("/bin/busybox")
# ABBA: a linear drift of the machine's load weighs on both kinds alike.
SECCOMP_ORDER = ("default", "unconfined", "unconfined", "default")
APPLETS = ("sh", "sleep", "true")


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _figures(prefix: str, total: float, latencies: Sequence[float]) -> dict[str, float]:
    return {f"{prefix}_seconds": round(total, 3),
            f"{prefix}_p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
            f"{prefix}_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1)}


def make_layer(directory: Path) -> Path:
    layer = directory / "layer"
    (layer / "bin").mkdir(parents=True)
    (layer / "etc").mkdir()
    for name in ("proc", "sys", "dev", "tmp"):
        (layer / name).mkdir()
    shutil.copy2(BUSYBOX, layer / "bin" / "busybox")
    for applet in APPLETS:
        (layer / "bin" / applet).symlink_to("busybox")
    (layer / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (layer / "etc" / "group").write_text("root:x:0:\n")
    return layer


def raw_config(rootfs: Path, cgroups_path: str) -> dict[str, Any]:
    """What `runc spec` gives, minus the terminal, plus a new netns and a
    cgroup: the smallest honest container."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0},
            "args": ["sleep", "3600"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "raw",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
        },
    }


class Bench:
    def __init__(self, work: Path, count: int) -> None:
        self.work = work
        self.count = count
        tag = uuid.uuid4().hex[:8]
        self.cgroup_parent = f"bench-{tag}"
        self.raw_parent = f"benchraw-{tag}"
        self.settings = RuncSettings(state_dir=work / "rt", cgroup_parent=self.cgroup_parent)
        self.raw_root = work / "rawroot"
        self.raw_ids: list[str] = []
        self.runtime: RuncRuntime | None = None

    async def _run(self, *args: str) -> tuple[int, bytes]:
        # stderr to a file, not a pipe: `runc run -d` hands its stdio to the
        # container, which would hold a pipe open for its whole life.
        with tempfile.TemporaryFile(dir=self.work) as err:
            process = await asyncio.create_subprocess_exec(
                "runc", "--root", str(self.raw_root), *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=err)
            code = await process.wait()
            err.seek(0)
            return code, err.read()

    async def runtime_phase(self, layer: Path, *, unconfined: bool = False,
                            prefix: str = "runtime") -> dict[str, float]:
        runtime = self.runtime = self.runtime or RuncRuntime(self.settings)
        image = ImageInput(layers=(layer,), config=ImageConfig(cmd=("sleep", "3600")))
        tasks = []
        for _ in range(self.count):
            task = pb.Task(id=uuid.uuid4().hex[:25], service_id="bench")
            if unconfined:
                task.spec.container.privileges.seccomp.mode = pb.Privileges.Seccomp.UNCONFINED
            tasks.append(task)

        async def up(task: pb.Task) -> float:
            started = time.perf_counter()
            await runtime.prepare(task, image)
            await runtime.start(task.id)
            return time.perf_counter() - started

        started = time.perf_counter()
        up_latencies = await asyncio.gather(*(up(t) for t in tasks))
        up_total = time.perf_counter() - started
        states = await runtime.list()
        running = sum(s.status == "running" for s in states.values())
        if running != self.count:
            raise RuntimeError(f"only {running} of {self.count} runtime containers running")

        async def down(task: pb.Task) -> float:
            started = time.perf_counter()
            await runtime.shutdown(task.id, "SIGKILL", 10)
            await runtime.remove(task.id)
            return time.perf_counter() - started

        started = time.perf_counter()
        down_latencies = await asyncio.gather(*(down(t) for t in tasks))
        down_total = time.perf_counter() - started
        return {**_figures(f"{prefix}_start", up_total, up_latencies),
                **_figures(f"{prefix}_stop", down_total, down_latencies)}

    async def raw_phase(self, layer: Path) -> dict[str, float]:
        self.raw_root.mkdir()
        bundles = self.work / "raw"
        ids = [uuid.uuid4().hex[:25] for _ in range(self.count)]
        for task_id in ids:  # bundles written beforehand: the runtime's config is not timed
            bundle = bundles / task_id
            bundle.mkdir(parents=True)
            (bundle / "config.json").write_text(json.dumps(
                raw_config(layer, f"/{self.raw_parent}/{task_id}")))
        up_latencies = []
        started = time.perf_counter()
        for task_id in ids:
            one = time.perf_counter()
            self.raw_ids.append(task_id)
            code, err = await self._run("run", "-d", "-b", str(bundles / task_id), task_id)
            if code != 0:
                raise RuntimeError(f"runc run: {err.decode(errors='replace').strip()}")
            up_latencies.append(time.perf_counter() - one)
        up_total = time.perf_counter() - started

        down_latencies = []
        started = time.perf_counter()
        for task_id in ids:
            one = time.perf_counter()
            pid = int(json.loads((self.raw_root / task_id / "state.json").read_text())
                      ["init_process_pid"])
            await self._run("kill", task_id, "KILL")
            await asyncio.wait_for(wait_pid_exit(pid), 10)
            code, err = await self._run("delete", task_id)
            if code != 0:
                raise RuntimeError(f"runc delete: {err.decode(errors='replace').strip()}")
            self.raw_ids.remove(task_id)
            down_latencies.append(time.perf_counter() - one)
        down_total = time.perf_counter() - started
        return {**_figures("raw_start", up_total, up_latencies),
                **_figures("raw_stop", down_total, down_latencies)}

    async def cleanup(self) -> None:
        runtime = self.runtime or RuncRuntime(self.settings)
        for task_id in await runtime.list():
            with contextlib.suppress(Exception):
                await runtime.remove(task_id)
        if self.raw_root.is_dir():
            for task_id in list(self.raw_ids):
                await self._run("delete", "--force", task_id)
        for point in mounts.mounts_under(self.work):
            with contextlib.suppress(OSError):
                mounts.unmount(Path(point))
        if netns_module.NETNS_DIR.is_dir():
            for name in os.listdir(netns_module.NETNS_DIR):
                if name.startswith(self.settings.netns_name_prefix):
                    with contextlib.suppress(OSError):
                        await netns_module.remove_netns(name)
        await asyncio.to_thread(self._remove_cgroups)

    def _remove_cgroups(self) -> None:
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for parent in (self.cgroup_parent, self.raw_parent):
                directory = hierarchy / parent
                if directory.is_dir() and not hierarchy.is_symlink():
                    for child in sorted((p for p in directory.rglob("*") if p.is_dir()),
                                        key=lambda p: len(p.parts), reverse=True):
                        with contextlib.suppress(OSError):
                            child.rmdir()
                    with contextlib.suppress(OSError):
                        directory.rmdir()


async def run(count: int, order: str, seccomp_rounds: int = 3) -> dict[str, object]:
    # Under /run and short: conmon's attach socket path must fit a sockaddr_un.
    work = Path(tempfile.mkdtemp(prefix="bc-", dir="/run"))
    bench = Bench(work, count)
    try:
        layer = make_layer(work)
        figures: dict[str, float] = {}
        phases = [bench.runtime_phase, bench.raw_phase]
        if order == "raw-first":
            phases.reverse()
        for phase in phases:
            figures.update(await phase(layer))
        rounds: dict[str, list[float]] = {"default": [], "unconfined": []}
        for kind in SECCOMP_ORDER * seccomp_rounds:
            round_figures = await bench.runtime_phase(layer, unconfined=kind == "unconfined",
                                                      prefix="round")
            rounds[kind].append(round_figures["round_start_seconds"])
        for kind, values in rounds.items():
            figures[f"seccomp_{kind}_start_seconds"] = round(statistics.median(values), 3)
        return {
            "bench": "containers",
            "containers": count,
            **figures,
            "start_ratio": round(figures["runtime_start_seconds"]
                                 / figures["raw_start_seconds"], 2),
            "stop_ratio": round(figures["runtime_stop_seconds"]
                                / figures["raw_stop_seconds"], 2),
            "seccomp_start_cost_percent": _cost(figures["seccomp_default_start_seconds"],
                                                figures["seccomp_unconfined_start_seconds"]),
            "order": order,
            "cpus": os.cpu_count(),
            "load_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        try:
            await asyncio.shield(bench.cleanup())
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _cost(confined: float, unconfined: float) -> float:
    """The profile's cost, in per cent of the unconfined time."""
    return round((confined - unconfined) / unconfined * 100, 1) if unconfined else 0.0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kernel_netns() -> int | None:
    """Network namespaces the kernel holds, live or still being destroyed
    (its net_namespace slab objects): the kernel destroys a removed one
    later, in a worker of its own, and a burst of starts pays for the
    destruction of the round before (None if /proc/slabinfo says nothing)."""
    try:
        with open("/proc/slabinfo", encoding="ascii") as slabs:
            for line in slabs:
                if line.startswith("net_namespace "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _timing_figures(log_path: Path, offset: int, scaled_at: float) -> dict[str, Any]:
    """What the agent's --log-task-timing lines (agent/timing.py) written
    since `offset` say of the scale that began at `scaled_at` (time.time()):
    when the assignments arrived (the controller's share), the agent's steps
    (medians over the tasks, ms) and the last task's RUNNING."""
    from swarm.agent import timing

    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    arrivals, finished, steps = [], [], {}
    # Removals of the round before that ran into this one (the controller
    # deletes a removed service's tasks later; the agent removes their
    # containers then).
    removals = [line for line in text.splitlines() if line.endswith(": container removed")]
    for line in text.splitlines():
        parsed = timing.parse_line(line)
        if parsed is None:
            continue
        task_id, task_steps = parsed
        try:  # "2026-12-05 15:40:01,123 DEBUG swarm.agent.timing: task ..."
            logged = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) \
                + int(line[20:23]) / 1000
        except ValueError:
            continue
        total = sum(task_steps.values()) / 1000
        steps[task_id] = task_steps
        arrivals.append(logged - total - scaled_at)
        finished.append(logged - scaled_at)
    if not steps:
        return {}
    return {"timing_tasks": len(steps), "removals_during": len(removals),
            "assigned_first_s": round(min(arrivals), 3), "assigned_last_s": round(max(arrivals), 3),
            "agent_running_last_s": round(max(finished), 3),
            "agent_start_p50_ms": round(sorted(sum(v.values()) for v in steps.values())
                                        [len(steps) // 2], 1),
            "agent_steps_p50_ms": timing.summary(steps)}


def scale_with_and_without_seccomp(replicas: int, timing: bool = False) -> dict[str, Any]:
    """bench.scale's end-to-end figure, for a service with the default
    seccomp profile and then, in the same cluster once the first is scaled
    back to 0, for one with seccomp=unconfined. timing: the agent logs its
    steps (--log-task-timing) and the first round's are reported."""
    import secrets

    from bench import scale
    from swarm.api.v1 import control_pb2 as cpb
    from swarm.api.v1 import control_pb2_grpc as cgrpc
    from swarm.cli.dev import cluster

    name = "b" + secrets.token_hex(3)
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="bench-config-")
    seconds: dict[str, list[float]] = {"default": [], "unconfined": []}
    figures: dict[str, Any] = {}
    try:
        state = cluster.up(name, 1, scale.SUBNET, say=lambda _: None,
                           agent_args=("--log-task-timing",) if timing else ())
        agent = next(d for d in state.daemons if d.role.startswith("agent"))
        controller = next(d for d in state.daemons if d.role.startswith("controller"))
        with cluster.control_channel(state) as channel:
            stub = cgrpc.ControlStub(channel)
            for number, kind in enumerate(SECCOMP_ORDER):
                mode = pb.Privileges.Seccomp.UNCONFINED if kind == "unconfined" \
                    else pb.Privileges.Seccomp.DEFAULT
                spec = pb.ServiceSpec(name=f"web-{kind}-{number}",
                                      replicated=pb.ReplicatedService(replicas=1))
                spec.task.container.image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
                spec.task.container.privileges.seccomp.mode = mode
                service = stub.CreateService(cpb.CreateServiceRequest(spec=spec),
                                             timeout=10).service
                scale._wait_running(stub, service.id, 1, 60)
                log_offset = os.path.getsize(agent.log)
                namespaces = _kernel_netns()
                cpu = _cpu_seconds(agent.pid), _cpu_seconds(controller.pid)
                scaled_at = time.time()
                started = time.perf_counter()
                stub.ScaleService(cpb.ScaleServiceRequest(ref=service.id, replicas=replicas),
                                  timeout=10)
                scale._wait_running(stub, service.id, replicas, 300)
                seconds[kind].append(time.perf_counter() - started)
                if number == 0:
                    # CPU of the agent's and the controller's own processes
                    # (not conmon, runc) from the scale until all RUNNING.
                    figures["agent_cpu_s"] = round(_cpu_seconds(agent.pid) - cpu[0], 2)
                    figures["controller_cpu_s"] = round(_cpu_seconds(controller.pid) - cpu[1], 2)
                    figures["agent_rss_mib"] = scale._rss_mib(agent.pid)
                if timing:
                    time.sleep(0.2)  # the last lines flushed
                    found = _timing_figures(Path(agent.log), log_offset, scaled_at)
                    if number == 0:
                        figures.update(found)
                    # Every round's outline: which of them is slow, and where.
                    figures.setdefault("timing_rounds", []).append(
                        {"kernel_netns_at_scale": namespaces,
                         **{key: found.get(key) for key in
                            ("assigned_last_s", "agent_running_last_s", "removals_during",
                             "agent_steps_p50_ms")}})
                stub.RemoveService(cpb.RemoveRequest(ref=service.id), timeout=10)
                deadline = time.monotonic() + 120
                while scale._running(stub, service.id) and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(2)  # the node quiet again before the next service
        for kind, label in (("default", ""), ("unconfined", "_unconfined")):
            figures[f"seconds_to_running{label}"] = round(
                sum(seconds[kind]) / len(seconds[kind]), 3)
            figures[f"seconds_to_running{label}_rounds"] = [round(v, 3) for v in seconds[kind]]
        return figures
    finally:
        cluster.down(name, say=lambda _: None)


async def run_replicas(count: int, timing: bool = False) -> dict[str, object]:
    end_to_end = await asyncio.to_thread(scale_with_and_without_seccomp, count, timing)
    work = Path(tempfile.mkdtemp(prefix="bc-", dir="/run"))
    bench = Bench(work, count)
    try:
        raw = await bench.raw_phase(make_layer(work))
    finally:
        try:
            await asyncio.shield(bench.cleanup())
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raw_seconds = raw["raw_start_seconds"]
    return {
        "bench": "containers", "replicas": count, **end_to_end,
        "raw_runc_seconds": raw_seconds,
        "ratio": round(end_to_end["seconds_to_running"] / raw_seconds, 2),
        "seccomp_cost_percent": _cost(end_to_end["seconds_to_running"],
                                      end_to_end["seconds_to_running_unconfined"]),
        "cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.containers")
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=0,
                        help="end to end instead: a one-node local cluster, `scale web=N` "
                             "until N RUNNING, beside N raw `runc run -d` (bench/scale.py)")
    parser.add_argument("--order", choices=("runtime-first", "raw-first"),
                        default="runtime-first")
    parser.add_argument("--timing", action="store_true",
                        help="with --replicas: the agent logs each task's start step by step "
                             "(--log-task-timing); report the first round's medians")
    parser.add_argument("--seccomp-rounds", type=int, default=3,
                        help="default/unconfined rounds (ABBA each) for the profile's cost")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.containers needs root (runc, overlayfs, network namespaces)")

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through run()'s cleanup

    signal.signal(signal.SIGTERM, terminate)
    if args.replicas:
        print(json.dumps(asyncio.run(run_replicas(args.replicas, args.timing))))
    else:
        print(json.dumps(asyncio.run(run(args.containers, args.order, args.seccomp_rounds))))


if __name__ == "__main__":
    main()
