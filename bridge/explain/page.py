"""The /status page and the HTML view of an explanation: server-rendered, self-contained.

No JavaScript and no external assets (it works offline, behind any proxy): the search is a
GET form, the catalog table is paginated by the server (`PAGE_SIZE` rows a page), and every
row links to `/status/explain?name=NAMESPACE/SERVICE`. Everything shown is escaped. The page
is for operators: it shows what the bridge knows and does, never a token or a credential
(nothing of the credentials is ever handed to it, see `state.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from bridge.explain.text import render, when

JSON = dict[str, Any]
PAGE_SIZE = 200

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f3f3f3} tr:hover td{background:#fafafa} .ok{color:#17692a} .bad{color:#b3261e}
.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:16em}
form{margin:.6em 0} input[type=search]{width:24em;padding:3px} pre{background:#f6f6f6;padding:.8em;overflow:auto}
.muted{color:#666}
"""


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width'><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>").encode()


def _ok(flag: bool, yes: str = "yes", no: str = "no") -> str:
    return f"<span class=ok>{yes}</span>" if flag else f"<span class=bad>{no}</span>"


def _list(items: Sequence[str], empty: str = "none") -> str:
    if not items:
        return f"<span class=muted>{escape(empty)}</span>"
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _header(status: JSON, sources: Sequence[JSON]) -> str:
    now = status["now"]
    ha = status["ha"]
    waiting = status["waiting_for"]
    ready = (f"<div class=card id=readiness><b>Readiness</b>: {_ok(not waiting, 'ready', 'not ready')}"
             f"<br>waiting for: {_list(waiting)}<br>warnings: {_list(status['warnings'])}</div>")
    role = "writer (leads)" if ha["writer"] else "standby (answers DNS, does not write)"
    election = (f"identity {escape(ha['identity'])}<br>lease holder {escape(ha['lease_holder'] or '-')}"
                if ha["election"] else "no leader election (single writer)")
    clusters = "".join(f"<li>{escape(c['cluster'])}: {_ok(c['alive'], 'alive', 'dead')} "
                       f"for {c['for']}s</li>" for c in status["clusters"])
    leader = (f"<div class=card id=leader><b>Leadership</b>: {escape(role)}<br>{election}"
              f"<br>cluster claim: {escape(ha['claim'] or '-')}"
              + (f"<br>clusters:<ul>{clusters}</ul>" if clusters else "") + "</div>")
    rows = "".join(f"<tr><td>{escape(s['name'])}</td><td>{_ok(s['synced'], 'listed', 'listing')}</td>"
                   f"<td>{s['objects']}</td><td>{escape(when(s['last_event'], now))}</td>"
                   f"<td>{escape(when(s['last_change'], now))}</td></tr>" for s in sources)
    source_table = ("<div class=card id=sources><b>Sources</b><table><tr><th>source</th><th>state</th>"
                    f"<th>objects</th><th>last event</th><th>last change</th></tr>{rows}</table></div>")
    sinks = "".join(f"<li>{escape(s['sink'])}: {_ok(s['in_sync'], 'in sync', 'not in sync')}</li>"
                    for s in status["sinks"])
    counters = "".join(f"<tr><td>{escape(k)}</td><td>{v:g}</td></tr>"
                       for k, v in sorted(status["counters"].items()))
    lag = status["lag"]
    mean = f"{lag['mean_seconds']:.3f}s" if lag["mean_seconds"] is not None else "-"
    sync = (f"<div class=card id=sync><b>Sync</b><ul>{sinks or '<li>no sink (reads only)</li>'}</ul>"
            f"lag: {lag['writes']:g} writes, mean {mean}<table>{counters}</table></div>")
    rejected = "".join(f"<tr><td>{escape(r['sink'])}</td><td>{escape(r['item'])}</td>"
                       f"<td>{escape(r['reason'])}</td><td>{escape(r['message'])}</td></tr>"
                       for r in status["rejected"])
    rejections = ("<h2>Rejected items</h2>" + (
        f"<table id=rejected><tr><th>sink</th><th>item</th><th>reason</th><th>message</th></tr>{rejected}</table>"
        if rejected else "<p class=muted id=rejected>none: every server took what was sent</p>"))
    return (f"<div class=grid>{ready}{leader}{source_table}{sync}</div>{rejections}")


def status_page(status: JSON, sources: Sequence[JSON], rows: Sequence[JSON], total: int,
                matched: int, query: str, page: int) -> bytes:
    """The whole page: `rows` are this page's rows of the `matched` services (of `total`)."""
    now = status["now"]
    pages = max(1, -(-matched // PAGE_SIZE))
    body = [f"<h1>bridge {escape(status['cluster_id'])}: status</h1>",
            "<p class=muted>Operator view: what this replica serves and why. "
            "<a href='/metrics'>/metrics</a> · <a href='/readyz'>/readyz</a></p>",
            _header(status, sources),
            f"<h2>Catalog ({total} services)</h2>",
            "<form method=get action='/status' role=search>"
            f"<input type=search name=q id=search value='{escape(query, quote=True)}' "
            "placeholder='service or namespace'> <button type=submit id=search-button>Search</button>"
            " <span class=muted>(explain any name: "
            "<a href='/status/explain?name='>/status/explain?name=NAME</a>)</span></form>"]
    cells = []
    for row in rows:
        target = f"/status/explain?{urlencode({'name': row['namespace'] + '/' + row['service']})}"
        health = f"{row['healthy']}/{row['total']}"
        cells.append(f"<tr><td><a class=explain href='{escape(target, quote=True)}'>{escape(row['service'])}</a>"
                     f"</td><td>{escape(row['namespace'])}</td><td>{escape(row['type'])}</td>"
                     f"<td>{escape(row['origin'])}</td>"
                     f"<td class={'ok' if row['healthy'] == row['total'] else 'bad'}>{health}</td>"
                     f"<td>{escape(when(row['last_change'], now))}</td></tr>")
    body.append(f"<p id=matched>{matched} matching, page {page} of {pages}</p>"
                "<table id=catalog><tr><th>service</th><th>namespace</th><th>type</th><th>origin</th>"
                f"<th>healthy/total</th><th>last change</th></tr>{''.join(cells)}</table>")
    links = []
    if page > 1:
        links.append(f"<a id=prev href='/status?{escape(urlencode({'q': query, 'page': page - 1}))}'>previous</a>")
    if page < pages:
        links.append(f"<a id=next href='/status?{escape(urlencode({'q': query, 'page': page + 1}))}'>next</a>")
    body.append("<p>" + " · ".join(links) + "</p>")
    return _page(f"bridge status ({status['cluster_id']})", "".join(body))


def explain_page(explanation: JSON, now: float) -> bytes:
    """The explanation as the CLI prints it, plus its JSON, under a search form."""
    name = explanation["query"]
    body = ("<p><a href='/status'>&larr; status</a></p>"
            f"<h1>explain {escape(name)}</h1>"
            "<form method=get action='/status/explain'>"
            f"<input type=search name=name value='{escape(name, quote=True)}'> <button>Explain</button></form>"
            f"<pre id=explanation>{escape(render(explanation, now))}</pre>"
            f"<p class=muted>As JSON: <a href='/explain?{escape(urlencode({'name': name}))}'>/explain</a>"
            f" · from a shell: <code>bridge explain {escape(name)}</code></p>")
    return _page(f"explain {name}", body)
