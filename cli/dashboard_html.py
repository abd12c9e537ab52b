"""The dashboard's HTML (`swarmctl dashboard`): pure functions from the cluster's
objects to markup, so the page is rendered on the server and tested without a
browser. Every value is escaped.

The page: a summary (nodes ready, services converged, tasks running, tasks
pending), the services (running/desired with a bar, image, ports, update state
and its message), the nodes (status, availability, role, address, resources
reserved of total, last heartbeat), the tasks that are meant to run or failed
lately (the scheduler's reason for each pending one), and the live event
stream. A small script (SCRIPT) follows the events (/events, server-sent) and
re-renders the sections (/sections) after each burst, so a change made
anywhere shows within a fraction of a second, without a reload. Unless
read-only, services have scale (-1, +1) and rollback buttons and nodes a
drain/activate one (cli/dashboard_actions.py).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from swarm.api import units
from swarm.api.healthcheck import is_up
from swarm.api.naming import slot_name
from swarm.api.v1 import objects_pb2 as pb

from . import render


@dataclass(frozen=True)
class Snapshot:
    nodes: Sequence[pb.Node]
    services: Sequence[pb.Service]
    tasks: Sequence[pb.Task]
    now: datetime
    controller: str = ""
    actions: bool = False  # buttons (scale, drain, rollback); off: --read-only
    token: str = ""  # what the buttons' requests must carry (cli/dashboard_actions.py)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


_PILLS = {"running": "ok", "ready": "ok", "active": "ok", "completed": "ok", "complete": "ok",
          "pending": "wait", "assigned": "wait", "accepted": "wait", "preparing": "wait",
          "starting": "wait", "new": "wait", "pause": "warn", "drain": "warn",
          "updating": "wait", "rollback_started": "warn", "paused": "bad",
          "rollback_paused": "bad", "rollback_completed": "warn",
          "failed": "bad", "rejected": "bad", "down": "bad", "disconnected": "bad",
          "orphaned": "bad", "shutdown": "off", "unknown": "off"}


def pill(word: str) -> str:
    key = word.lower().replace(" ", "_")
    return f'<span class="pill {_PILLS.get(key, "off")}">{esc(word.replace("_", " "))}</span>'


def _running(service: pb.Service, tasks: Sequence[pb.Task]) -> tuple[int, int]:
    text = render.replicas(service, tasks).split(" ")[0]  # a job's "(3/6 completed)" aside
    running, _, desired = text.partition("/")
    return int(running), int(desired)


def summary(snapshot: Snapshot) -> str:
    nodes_ready = sum(1 for n in snapshot.nodes if n.status.state == pb.NodeStatus.READY)
    converged = 0
    for service in snapshot.services:
        running, desired = _running(service, snapshot.tasks)
        converged += running >= desired
    live = [t for t in snapshot.tasks if t.desired_state <= pb.RUNNING]
    running_tasks = sum(1 for t in live if t.status.state == pb.RUNNING)
    pending = sum(1 for t in live if t.status.state < pb.ASSIGNED)
    cards = [("Nodes ready", f"{nodes_ready}/{len(snapshot.nodes)}",
              "ok" if nodes_ready == len(snapshot.nodes) else "warn"),
             ("Services converged", f"{converged}/{len(snapshot.services)}",
              "ok" if converged == len(snapshot.services) else "wait"),
             ("Tasks running", str(running_tasks), "ok"),
             ("Tasks pending", str(pending), "warn" if pending else "ok")]
    return '<div class="cards">' + "".join(
        f'<div class="card {tone}"><div class="value">{esc(value)}</div>'
        f'<div class="label">{esc(label)}</div></div>' for label, value, tone in cards) + "</div>"


def _update(service: pb.Service) -> str:
    status = service.update_status
    if status.state == pb.UpdateStatus.UNKNOWN:
        return ""
    state = pb.UpdateStatus.State.Name(status.state).lower()
    message = f'<div class="muted">{esc(status.message)}</div>' if status.message else ""
    return pill(state) + message


def services_table(snapshot: Snapshot) -> str:
    rows = []
    for service in sorted(snapshot.services, key=lambda s: s.spec.name):
        running, desired = _running(service, snapshot.tasks)
        share = 100 if desired == 0 else min(100, round(100 * running / desired))
        tone = "ok" if running >= desired else "wait"
        ports = ", ".join(render.port(p) for p in service.endpoint.ports
                          or service.spec.endpoint.ports)
        rows.append(
            f'<tr data-service="{esc(service.spec.name)}">'
            f'<td class="name">{esc(service.spec.name)}</td>'
            f"<td>{esc(render.service_mode(service.spec))}</td>"
            f'<td class="replicas" data-replicas="{running}/{desired}">'
            f'<div class="bar"><div class="fill {tone}" style="width:{share}%"></div></div>'
            f"<span>{running}/{desired}</span></td>"
            f'<td class="mono">{esc(render.image_name(service.spec.task.container.image))}</td>'
            f"<td>{esc(ports) or '-'}</td><td>{_update(service) or '-'}</td>"
            + (f"<td>{_service_buttons(service)}</td>" if snapshot.actions else "") + "</tr>")
    columns = 7 if snapshot.actions else 6
    body = "".join(rows) or f'<tr><td colspan="{columns}" class="empty">no services</td></tr>'
    return ('<table id="services"><thead><tr><th>Service</th><th>Mode</th><th>Replicas</th>'
            "<th>Image</th><th>Ports</th><th>Update</th>"
            + ("<th></th>" if snapshot.actions else "") + "</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def button(label: str, title: str, **data: object) -> str:
    attributes = "".join(f' data-{key}="{esc(value)}"' for key, value in data.items())
    return f'<button type="button" title="{esc(title)}"{attributes}>{esc(label)}</button>'


def _service_buttons(service: pb.Service) -> str:
    buttons = []
    if service.spec.WhichOneof("mode") != "global":
        replicas = service.spec.replicated.replicas
        if replicas > 0:
            buttons.append(button("\u2212", f"scale to {replicas - 1}", action="scale",
                                  service=service.id, replicas=replicas - 1))
        buttons.append(button("+", f"scale to {replicas + 1}", action="scale",
                              service=service.id, replicas=replicas + 1))
    if service.HasField("previous_spec"):
        buttons.append(button("Rollback", "go back to the previous spec", action="rollback",
                              service=service.id))
    return '<span class="actions">' + "".join(buttons) + "</span>"


def _node_buttons(node: pb.Node) -> str:
    if node.spec.availability == pb.NodeSpec.ACTIVE:
        return button("Drain", "move its tasks away", action="availability", node=node.id,
                      availability="drain")
    return button("Activate", "place tasks on it again", action="availability", node=node.id,
                  availability="active")


def _resources(node: pb.Node, tasks: Sequence[pb.Task]) -> str:
    cpus = memory = 0
    for task in tasks:
        if task.node_id == node.id and task.status.state <= pb.RUNNING:
            reserved = task.spec.resources.reservations
            cpus += reserved.nano_cpus
            memory += reserved.memory_bytes
    total = node.description.resources
    return (f"{esc(units.format_cpus(cpus))} / {esc(units.format_cpus(total.nano_cpus))} CPU"
            f'<div class="muted">{esc(units.format_memory(memory))} / '
            f"{esc(units.format_memory(total.memory_bytes))}</div>")


def nodes_table(snapshot: Snapshot) -> str:
    rows = []
    for node in sorted(snapshot.nodes, key=lambda n: n.description.hostname):
        state = pb.NodeStatus.State.Name(node.status.state).lower()
        conditions = "".join(pill(c) for c in node.status.conditions)
        heartbeat = render.ago(node.status.last_heartbeat, snapshot.now) \
            if render.has_time(node.status.last_heartbeat) else "-"
        rows.append(
            f'<tr data-node="{esc(node.description.hostname)}">'
            f'<td class="name">{esc(node.description.hostname)}</td>'
            f"<td>{pill(state)}{conditions}</td>"
            f"<td>{pill(pb.NodeSpec.Availability.Name(node.spec.availability).lower())}</td>"
            f"<td>{esc(pb.NodeSpec.Role.Name(node.spec.role).lower())}</td>"
            f'<td class="mono">{esc(render.node_address(node))}</td>'
            f"<td>{_resources(node, snapshot.tasks)}</td><td>{esc(heartbeat)}</td>"
            + (f"<td>{_node_buttons(node)}</td>" if snapshot.actions else "") + "</tr>")
    columns = 8 if snapshot.actions else 7
    body = "".join(rows) or f'<tr><td colspan="{columns}" class="empty">no nodes</td></tr>'
    return ('<table id="nodes"><thead><tr><th>Node</th><th>Status</th><th>Availability</th>'
            "<th>Role</th><th>Address</th><th>Reserved / total</th><th>Heartbeat</th>"
            + ("<th></th>" if snapshot.actions else "") + "</tr>"
            f"</thead><tbody>{body}</tbody></table>")


MAX_TASKS = 200


def tasks_table(snapshot: Snapshot, hostnames: Mapping[str, str]) -> str:
    """Tasks meant to run, then the failed ones still kept; pending reasons shown."""
    wanted = [t for t in snapshot.tasks if t.desired_state <= pb.RUNNING
              or t.status.state in (pb.FAILED, pb.REJECTED)]
    wanted.sort(key=lambda t: (t.status.state == pb.RUNNING, t.service_name, t.slot,
                               t.node_id))
    rows = []
    for task in wanted[:MAX_TASKS]:
        state = pb.TaskState.Name(task.status.state).lower()
        health = render.task_health(task)
        detail = render.task_error(task)
        reason = f'<span class="reason">{esc(detail)}</span>' if detail else ""
        up = "" if task.status.state != pb.RUNNING or is_up(task.status) else pill("starting")
        rows.append(
            f'<tr data-task="{esc(task.id)}">'
            f'<td class="name">{esc(slot_name(task))}</td>'
            f"<td>{pill(state)}{pill(health) if health else ''}{up if not health else ''}</td>"
            f'<td class="nowrap">{esc(hostnames.get(task.node_id, task.node_id[:12]) or "-")}</td>'
            f'<td class="nowrap">{esc(render.ago(task.status.timestamp, snapshot.now) or "-")}</td>'
            f"<td>{reason or '-'}</td></tr>")
    more = len(wanted) - MAX_TASKS
    if more > 0:
        rows.append(f'<tr><td colspan="5" class="empty">and {more} more</td></tr>')
    body = "".join(rows) or '<tr><td colspan="5" class="empty">no tasks</td></tr>'
    return ('<table id="tasks"><thead><tr><th>Task</th><th>State</th><th>Node</th>'
            "<th>Since</th><th>Error or why pending</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def sections(snapshot: Snapshot) -> str:
    """Everything that /sections re-renders."""
    hostnames = {n.id: n.description.hostname for n in snapshot.nodes}
    return (summary(snapshot)
            + f'<section><h2>Services</h2>{services_table(snapshot)}</section>'
            + f'<section><h2>Nodes</h2>{nodes_table(snapshot)}</section>'
            + f'<section><h2>Tasks</h2>{tasks_table(snapshot, hostnames)}</section>')


STYLE = """
:root { --bg:#f5f7fa; --panel:#fff; --ink:#1f2933; --muted:#6b7785; --line:#e4e8ee;
  --ok:#1f9d55; --wait:#d69e2e; --warn:#dd6b20; --bad:#e53e3e; --off:#a0aec0; --accent:#2b6cb0; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  background:var(--bg); color:var(--ink); }
header { display:flex; align-items:center; gap:16px; padding:14px 24px; background:#1a202c;
  color:#fff; }
header h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.2px; }
header .where { color:#a0aec0; font-family:ui-monospace,monospace; font-size:12px; }
header .live { margin-left:auto; font-size:12px; color:#a0aec0; }
header .live::before { content:""; display:inline-block; width:8px; height:8px;
  border-radius:50%; background:var(--off); margin-right:6px; vertical-align:middle; }
header .live.on::before { background:#48bb78; box-shadow:0 0 0 3px rgba(72,187,120,.25); }
main { display:grid; grid-template-columns:minmax(0,1fr) 360px; gap:20px; padding:20px 24px; }
.cards { display:grid; grid-template-columns:repeat(4,1fr); gap:12px; margin-bottom:18px; }
.card { background:var(--panel); border:1px solid var(--line); border-radius:10px;
  padding:14px 16px; border-top:3px solid var(--off); }
.card.ok { border-top-color:var(--ok); } .card.wait { border-top-color:var(--wait); }
.card.warn { border-top-color:var(--warn); }
.card .value { font-size:26px; font-weight:650; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.5px; }
section { background:var(--panel); border:1px solid var(--line); border-radius:10px;
  margin-bottom:18px; overflow:hidden; }
section h2, aside h2 { font-size:13px; margin:0; padding:10px 14px; text-transform:uppercase;
  letter-spacing:.6px; color:var(--muted); border-bottom:1px solid var(--line); }
table { width:100%; border-collapse:collapse; }
th { text-align:left; font-size:12px; color:var(--muted); font-weight:600; padding:8px 14px;
  background:#fafbfc; border-bottom:1px solid var(--line); }
td { padding:8px 14px; border-bottom:1px solid var(--line); vertical-align:top; }
tr:last-child td { border-bottom:none; }
td.name, td.nowrap { white-space:nowrap; } td.name { font-weight:600; }
.mono { font-family:ui-monospace,monospace; font-size:12.5px; }
.muted { color:var(--muted); font-size:12px; } .empty { color:var(--muted); text-align:center; }
.pill { display:inline-block; padding:1px 8px; margin-right:4px; border-radius:999px;
  font-size:12px; font-weight:600; background:#edf2f7; color:#4a5568; }
.pill.ok { background:#e6f6ec; color:var(--ok); } .pill.wait { background:#fdf5e1; color:#b7791f; }
.pill.warn { background:#feebdc; color:var(--warn); } .pill.bad { background:#fde8e8; color:var(--bad); }
.bar { display:inline-block; width:80px; height:8px; background:#edf2f7; border-radius:4px;
  margin-right:8px; vertical-align:middle; overflow:hidden; }
.fill { height:100%; } .fill.ok { background:var(--ok); } .fill.wait { background:var(--wait); }
.reason { color:#975a16; }
aside { background:var(--panel); border:1px solid var(--line); border-radius:10px;
  align-self:start; position:sticky; top:20px; max-height:calc(100vh - 40px); display:flex;
  flex-direction:column; }
#events { list-style:none; margin:0; padding:0; overflow:auto; font-size:12.5px; }
#events li { padding:7px 14px; border-bottom:1px solid var(--line); }
#events li.fresh { animation: flash 1.2s ease-out; }
@keyframes flash { from { background:#ebf8ff; } to { background:transparent; } }
#events .t { color:var(--muted); font-family:ui-monospace,monospace; font-size:11.5px; }
#events .kind { font-weight:600; color:var(--accent); }
#events .attrs { color:var(--muted); word-break:break-word; }
.actions { white-space:nowrap; }
button { font:inherit; font-size:12px; padding:2px 9px; margin-right:4px; border-radius:6px;
  border:1px solid #cbd5e0; background:#fff; color:var(--ink); cursor:pointer; }
button:hover { border-color:var(--accent); color:var(--accent); }
button:disabled { opacity:.5; cursor:wait; }
#toast { position:fixed; bottom:20px; left:24px; padding:10px 14px; border-radius:8px;
  background:#1a202c; color:#fff; font-size:13px; opacity:0; transition:opacity .2s; }
#toast.show { opacity:.95; } #toast.bad { background:var(--bad); }
"""

SCRIPT = """
(function () {
  const list = document.getElementById('events');
  const live = document.getElementById('live');
  let timer = null;
  function refresh() {
    if (timer) return;
    timer = setTimeout(async function () {
      timer = null;
      try {
        const r = await fetch('sections', {cache: 'no-store'});
        if (r.ok) document.getElementById('sections').innerHTML = await r.text();
      } catch (e) { /* the next event or tick tries again */ }
    }, 120);
  }
  function text(tag, cls, value) {
    const el = document.createElement(tag); el.className = cls; el.textContent = value; return el;
  }
  function show(ev) {
    const li = document.createElement('li');
    li.className = 'fresh';
    const when = new Date(ev.timeNano / 1e6).toLocaleTimeString();
    li.appendChild(text('span', 't', when + ' '));
    li.appendChild(text('span', 'kind', ev.type + ' ' + ev.action + ' '));
    li.appendChild(text('span', 'name', ev.name || ev.id.slice(0, 12)));
    const attrs = Object.entries(ev.attributes || {})
      .filter(([k]) => k.endsWith('.new') || k === 'error' || k === 'replicas' || k === 'state')
      .map(([k, v]) => k.replace('.new', '') + '=' + v).join(', ');
    if (attrs) li.appendChild(text('div', 'attrs', attrs));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 200) list.removeChild(list.lastChild);
  }
  const source = new EventSource('events');
  source.onopen = function () { live.classList.add('on'); live.textContent = 'live'; };
  source.onerror = function () { live.classList.remove('on'); live.textContent = 'reconnecting'; };
  source.onmessage = function (m) { show(JSON.parse(m.data)); refresh(); };
  setInterval(refresh, 5000);  // ages and heartbeats move without events too
  const token = (document.querySelector('meta[name=swarm-token]') || {}).content;
  const toast = document.getElementById('toast');
  function say(message, bad) {
    toast.textContent = message; toast.className = 'show' + (bad ? ' bad' : '');
    clearTimeout(say.timer); say.timer = setTimeout(function () { toast.className = ''; }, 4000);
  }
  document.getElementById('sections').addEventListener('click', async function (e) {
    const b = e.target.closest('button[data-action]');
    if (!b || !token) return;
    const body = Object.assign({}, b.dataset);
    delete body.action;
    if (body.replicas !== undefined) body.replicas = Number(body.replicas);
    b.disabled = true;
    try {
      const r = await fetch('api/' + b.dataset.action, {method: 'POST',
        headers: {'Content-Type': 'application/json', 'X-Swarm-Token': token},
        body: JSON.stringify(body)});
      const answer = await r.json();
      say(answer.message || answer.error, !r.ok);
    } catch (err) { say(String(err), true); }
    b.disabled = false;
    refresh();
  });
})();
"""


def page(snapshot: Snapshot) -> str:
    token = f'<meta name="swarm-token" content="{esc(snapshot.token)}">' \
        if snapshot.actions else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"{token}"
            f"<title>swarm dashboard</title><style>{STYLE}</style></head><body>"
            f'<header><h1>swarm</h1><span class="where">{esc(snapshot.controller)}</span>'
            '<span id="live" class="live">connecting</span></header>'
            f'<main><div id="sections">{sections(snapshot)}</div>'
            '<aside><h2>Events</h2><ul id="events"></ul></aside></main><div id="toast"></div>'
            f"<script>{SCRIPT}</script></body></html>")
