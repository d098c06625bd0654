"""An explanation (`model.explain`'s JSON) as text for a terminal: what `bridge explain` prints."""

from __future__ import annotations

import time
from typing import Any

JSON = dict[str, Any]


def when(at: float | None, now: float | None = None) -> str:
    """A wall-clock time as UTC, with how long ago; "never" for none."""
    if not at:
        return "never"
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return f"{stamp} ({max(0.0, now - at):.0f}s ago)"


def _instance_line(entry: JSON) -> str:
    ports = ", ".join(entry.get("ports") or []) or "no ports"
    health = "healthy" if entry.get("healthy") else "unhealthy"
    return f"{entry.get('address') or '-'} [{ports}] {health}: {entry['origin'].get('describe', '')}"


def render(explanation: JSON, now: float | None = None) -> str:
    out: list[str] = []
    say = out.append
    service = explanation.get("service")
    title = f"{service['namespace']}/{service['name']}" if service else explanation["query"]
    say(f"{title}  (read as {explanation.get('reading') or 'nothing known'})")
    if not explanation.get("ready"):
        say("  the catalog is not ready yet: DNS answers SERVFAIL for the names it does not hold yet")
    for note in explanation.get("notes") or []:
        say(f"  note: {note}")
    if explanation.get("candidates"):
        say("  candidates: " + ", ".join(explanation["candidates"]))
    if explanation.get("type"):
        extra = ""
        if explanation.get("cluster_ips"):
            extra = " cluster IP " + ", ".join(explanation["cluster_ips"])
        if explanation.get("external_name"):
            extra = " -> " + explanation["external_name"]
        say(f"  type {explanation['type']}{extra}")
    dns = explanation.get("dns")
    if dns:
        say("")
        say(f"DNS answers now for {dns['name']}:")
        if dns.get("not_ours"):
            say("  not in our zones: forwarded upstream (or refused)")
        for qtype, response in dns["responses"].items():
            records = response["records"]
            if not records:
                say(f"  {qtype}: {response['rcode']}, no records")
            for line in records:
                say(f"  {line.expandtabs(1)}")
    say("")
    shown = explanation.get("instances") or []
    say(f"Instances ({len(shown)}):")
    for entry in shown:
        answered = entry.get("answered")
        mark = "answered" if answered is True else "left out" if answered is False else answered
        say(f"  {_instance_line(entry)}  [{mark}]")
        say(f"      rule: {entry['rule']}")
    left_out = explanation.get("left_out") or []
    say(f"Left out ({len(left_out)}):")
    for entry in left_out:
        say(f"  {_instance_line(entry)}")
        say(f"      reason: {entry['reason']}")
    for line in explanation.get("why_not") or []:
        say(f"  why not: {line}")
    for line in explanation.get("collisions") or []:
        say(f"  collision: {line}")
    regs = explanation.get("registrations")
    if regs is not None:
        say("")
        say(f"Consul registrations owned by this bridge ({len(regs['items'])}): {regs['state']}")
        for item in regs["items"]:
            say(f"  {item['service_id']} {item['name']} {item['address']}:{item['port']} "
                f"check {item['check']}: {item['state']}")
        for line in regs["refused"] + regs["kubernetes_refused"]:
            say(f"  refused: {line}")
    times = explanation.get("last_change") or {}
    say("")
    say("Last change:")
    if service:
        say(f"  this service: {when(times.get('service'), now)}")
    for at in times.get("sources") or []:
        say(f"  source {at['source']}: changed {when(at['last_change'], now)}, "
            f"heard from {when(at['last_event'], now)}")
    return "\n".join(out) + "\n"
