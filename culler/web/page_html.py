"""The activity page's HTML (pure): the hub's stylesheet and navbar markup, one card per server of the
reader, their past stops, and for admins every server in a table sorted and filtered on the server side.

Times are written in UTC with a relative span, so the page reads right without JavaScript; a small
script (allowed by the page's nonce) rewrites them into the reader's local time."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from culler.core.text import humanize, utc_minutes

DUE_SOON = 86400.0  # a running server that stops within a day is "due soon"

STATES = {  # page state: (words, badge colour class); the filter offers them in this order
    "running": ("running", "culler-state-running"),
    "due-soon": ("due soon", "culler-state-soon"),
    "kept": ("kept", "culler-state-kept"),
    "settling": ("settling", "culler-state-soon"),
    "due": ("due now", "culler-state-due"),
    "exempt": ("exempt", "culler-state-exempt"),
    "pending": ("starting or stopping", "culler-state-exempt"),
}
SORTS = {"user", "server", "state", "rule", "visit", "stop"}

# The hub's orange button (#f37524 under white) is 2.9:1; these keep 4.5:1 and more in both themes.
STYLE = """
.culler-btn{--bs-btn-color:#fff;--bs-btn-bg:#b34700;--bs-btn-border-color:#b34700;--bs-btn-hover-color:#fff;
--bs-btn-hover-bg:#8f3900;--bs-btn-hover-border-color:#8f3900;--bs-btn-active-color:#fff;--bs-btn-active-bg:#7a3000}
.culler-btn-outline{--bs-btn-color:#8f3900;--bs-btn-border-color:#b34700;--bs-btn-hover-color:#fff;
--bs-btn-hover-bg:#b34700;--bs-btn-active-color:#fff;--bs-btn-active-bg:#7a3000}
[data-bs-theme=dark] .culler-btn-outline{--bs-btn-color:#ffb27a}
.culler-state-running{background:#1e6b34;color:#fff}.culler-state-soon{background:#8a4b00;color:#fff}
.culler-state-kept{background:#1f5f8f;color:#fff}.culler-state-due{background:#a4262c;color:#fff}
.culler-state-exempt{background:#5a6169;color:#fff}
.culler-server dt{font-weight:600}
"""

LOCAL_TIMES = """
for (const t of document.querySelectorAll("time.culler-time")) {
  const when = new Date(t.dateTime);
  if (isNaN(when)) continue;
  t.title = t.textContent;
  t.textContent = when.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});
}
"""


@dataclass(frozen=True)
class AdminQuery:
    """``?view=all``'s sort and filters, from the query string (unknown values fall back to defaults)."""

    sort: str = "stop"
    descending: bool = False
    rule: str = ""
    state: str = ""

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> AdminQuery:
        sort = query.get("sort", "stop")
        state = query.get("state", "")
        return cls(
            sort=sort if sort in SORTS else "stop",
            descending=query.get("order") == "desc",
            rule=query.get("rule", "")[:200],
            state=state if state in STATES else "",
        )

    def link(self, **changes: str) -> str:
        values = {"view": "all", "sort": self.sort, "order": "desc" if self.descending else "asc"}
        values |= {"rule": self.rule, "state": self.state} | changes
        return "?" + urlencode({k: v for k, v in values.items() if v}) + "#all"


@dataclass(frozen=True)
class PageContext:
    identity: Mapping[str, Any]
    now: datetime
    hub_base_url: str = "/"  # JUPYTERHUB_BASE_URL: the hub is at <base>hub/, servers at <base>user/...
    prefix: str = "/"  # the service's own prefix
    csrf: str = ""  # the Keep form's token; empty: the page offers no Keep
    nonce: str = ""
    notice: tuple[bool, str] | None = None  # (ok, text) after a keep
    admin: AdminQuery | None = None  # the every-server view
    sees_all: bool = False
    history: Sequence[Mapping[str, Any]] = field(default_factory=tuple)

    @property
    def hub(self) -> str:
        return self.hub_base_url.rstrip("/") + "/hub/"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def parse_time(iso: object) -> datetime | None:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None


def when(iso: object, now: datetime) -> str:
    """``<time>2026-12-02 12:00 UTC</time> (in 3 days 2 hours)``; "unknown" for no time."""
    moment = parse_time(iso)
    if moment is None:
        return "unknown"
    seconds = (moment - now).total_seconds()
    span = "now" if abs(seconds) < 1 else f"in {humanize(seconds)}" if seconds > 0 else f"{humanize(-seconds)} ago"
    return f"<time class='culler-time' datetime='{_e(iso)}'>{_e(utc_minutes(moment))}</time> ({span})"


def page_state(row: Mapping[str, Any]) -> str:
    decision = row.get("decision")
    if decision in ("pending", "exempt", "settling", "due"):
        return str(decision)
    if row.get("kept_until"):
        return "kept"
    until = row.get("seconds_until_stop")
    return "due-soon" if until is not None and until < DUE_SOON else "running"


def state_badge(row: Mapping[str, Any], now: datetime) -> str:
    state = page_state(row)
    words, css = STATES[state]
    if state == "kept":
        kept = parse_time(row.get("kept_until"))
        words = f"kept until {utc_minutes(kept)}" if kept else words
    return f"<span class='badge {css}' data-state='{state}'>{_e(words)}</span>"


def server_url(ctx: PageContext, user: str, server: str) -> str:
    path = f"user/{quote(user, safe='')}/" + (f"{quote(server, safe='')}/" if server else "")
    return ctx.hub_base_url.rstrip("/") + "/" + path


def render_page(ctx: PageContext, rows: Sequence[Mapping[str, Any]]) -> str:
    title = "All servers" if ctx.admin is not None else "Your servers"
    body = _admin_view(ctx, rows) if ctx.admin is not None else _user_view(ctx, rows)
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1.0'>",
            f"<title>{title} · server activity · JupyterHub</title>",
            f"<link rel='stylesheet' href='{_e(ctx.hub)}static/css/style.min.css'>",
            f"<link rel='icon' href='{_e(ctx.hub)}static/favicon.ico' type='image/x-icon'>",
            f"<script src='{_e(ctx.hub)}static/js/darkmode.js'></script>",
            f"<style nonce='{_e(ctx.nonce)}'>{STYLE}</style></head><body>",
            _navbar(ctx),
            f"<main class='container' id='main'><h1>{title}</h1>",
            _notice(ctx),
            body,
            "</main>",
            f"<script nonce='{_e(ctx.nonce)}'>{LOCAL_TIMES}</script></body></html>",
        ]
    )


def _navbar(ctx: PageContext) -> str:
    """The hub navbar's markup (page.html), without its collapse script: the links are always shown."""
    hub, name = _e(ctx.hub), _e(ctx.identity.get("name"))
    links = [("Home", f"{hub}home", False), ("Token", f"{hub}token", False)]
    if ctx.identity.get("admin"):
        links.append(("Admin", f"{hub}admin", False))
    links.append(("Server activity", _e(ctx.prefix), ctx.admin is None))
    if ctx.sees_all:
        links.append(("All servers", _e(ctx.prefix) + "?view=all", ctx.admin is not None))
    items = "".join(
        f"<li class='nav-item'><a class='nav-link{' active' if current else ''}'"
        f"{' aria-current=page' if current else ''} href='{href}'>{text}</a></li>"
        for text, href, current in links
    )
    return (
        "<nav class='navbar navbar-expand-sm bg-body-tertiary mb-4' aria-label='JupyterHub'>"
        "<div class='container-fluid'>"
        f"<span id='jupyterhub-logo' class='navbar-brand'><a href='{hub}home'>"
        f"<img src='{hub}logo' alt='JupyterHub home' class='jpy-logo' title='Home'></a></span>"
        f"<div class='navbar-collapse' id='thenavbar'><ul class='navbar-nav me-auto mb-0'>{items}</ul>"
        "<ul class='nav navbar-nav me-2'><li class='nav-item'>"
        "<button class='btn btn-sm' type='button' id='dark-theme-toggle' aria-label='Toggle dark mode'"
        " title='Toggle dark mode'><i aria-hidden='true' class='fa fa-circle-half-stroke'></i></button></li>"
        f"<li class='nav-item'><span id='login_widget'><span class='me-1'>{name}</span>"
        f"<a id='logout' role='button' class='btn btn-sm btn-outline-contrast' href='{_e(ctx.prefix)}logout'>"
        "<i aria-hidden='true' class='fa fa-sign-out'></i> Logout</a></span></li></ul></div></div></nav>"
    )


def _notice(ctx: PageContext) -> str:
    if ctx.notice is None:
        return ""
    ok, text = ctx.notice
    return f"<div class='alert {'alert-success' if ok else 'alert-danger'}' role='status'>{_e(text)}</div>"


def _user_view(ctx: PageContext, rows: Sequence[Mapping[str, Any]]) -> str:
    parts = [
        "<p class='lead'>To share the lab's machines, a server nobody has opened in a browser for a while is"
        " stopped. Your files stay; you start a new server from the hub when you need one.</p>"
    ]
    own = [r for r in rows if r.get("user") == ctx.identity.get("name")]
    if not own:
        parts.append(f"<p>You have no running servers. <a href='{_e(ctx.hub)}home'>Start one from the hub</a>.</p>")
    parts += [_server_card(ctx, r) for r in own]
    parts.append(_past_stops(ctx))
    return "\n".join(parts)


def _server_card(ctx: PageContext, row: Mapping[str, Any]) -> str:
    label = _e(row.get("label") or row.get("server") or "default server")
    facts = [("Last visit", when(row.get("last_activity"), ctx.now))]
    if row.get("stop_at"):
        facts.append(("Planned stop", when(row.get("stop_at"), ctx.now)))
    rule = " ".join(str(t) for t in (row.get("rule_text"), row.get("keep_text")) if t)
    facts.append(("Rule", _e(rule or row.get("rule"))))
    settle = row.get("settle")
    if isinstance(settle, Mapping):
        facts.append(("Settling", _e(settle.get("state") or "waiting for a quiet home directory")))
    listed = "".join(f"<dt class='col-sm-3'>{k}</dt><dd class='col-sm-9'>{v}</dd>" for k, v in facts)
    return (
        f"<section class='card mb-3 culler-server' data-server='{_e(row.get('server'))}'"
        f" aria-labelledby='server-{_e(row.get('server'))}'><div class='card-body'>"
        f"<h2 class='h4 card-title' id='server-{_e(row.get('server'))}'>{label} {state_badge(row, ctx.now)}</h2>"
        f"<p>{_e(row.get('message'))}</p><dl class='row'>{listed}</dl>"
        f"<div class='d-flex flex-wrap gap-2 align-items-center'>{_actions(ctx, row)}</div></div></section>"
    )


def _actions(ctx: PageContext, row: Mapping[str, Any]) -> str:
    user, server = str(row.get("user")), str(row.get("server") or "")
    parts = [
        f"<a class='btn culler-btn-outline' href='{_e(server_url(ctx, user, server))}'>Open</a>"
        "<span class='text-body-secondary me-3'>Opening it counts as a visit: its clock starts again.</span>"
    ]
    offer = row.get("keep")
    if isinstance(offer, Mapping) and offer.get("until") and ctx.csrf:  # no token: no keeper to post to
        parts.append(
            f"<form method='post' action='{_e(ctx.prefix)}keep' class='m-0'>"
            f"<input type='hidden' name='_csrf' value='{_e(ctx.csrf)}'>"
            f"<input type='hidden' name='user' value='{_e(user)}'>"
            f"<input type='hidden' name='server' value='{_e(server)}'>"
            f"<button type='submit' class='btn culler-btn'>Keep until {when(offer['until'], ctx.now)}</button></form>"
        )
    elif isinstance(offer, Mapping) and offer.get("refused"):
        parts.append(f"<span class='text-body-secondary'>Cannot be kept longer: {_e(offer['refused'])}.</span>")
    return "".join(parts)


def _past_stops(ctx: PageContext, limit: int = 20) -> str:
    """The latest stops with their reasons (the reader's own; every user's in the admin view)."""
    stops = list(ctx.history)[:limit]
    if not stops:
        return ""
    every = ctx.admin is not None
    lines = "".join(
        f"<tr><td>{when(e.get('time'), ctx.now)}</td>"
        + (f"<td>{_e(e.get('user'))}</td>" if every else "")
        + f"<td>{_e(e.get('server') or 'default server')}</td>"
        f"<td>{_e(e.get('reason'))}{' (' + _e(e.get('settle')) + ')' if e.get('settle') else ''}</td></tr>"
        for e in stops
    )
    user = "<th scope='col'>User</th>" if every else ""
    return (
        "<h2 class='h4 mt-4'>Past stops</h2><table class='table'><thead><tr><th scope='col'>Stopped</th>"
        f"{user}<th scope='col'>Server</th><th scope='col'>Why</th></tr></thead><tbody>{lines}</tbody></table>"
    )


ADMIN_COLUMNS = (("user", "User"), ("server", "Server"), ("state", "State"), ("rule", "Rule"),
                 ("visit", "Last visit"), ("stop", "Planned stop"))  # fmt: skip


def admin_rows(rows: Sequence[Mapping[str, Any]], query: AdminQuery) -> list[Mapping[str, Any]]:
    """The rows the every-server table shows, filtered by rule and state and sorted by ``query.sort``;
    unknown times sort last either way."""
    chosen = [
        r
        for r in rows
        if (not query.rule or r.get("rule") == query.rule) and (not query.state or page_state(r) == query.state)
    ]
    keys = {
        "user": lambda r: (r.get("user") or "", r.get("server") or ""),
        "server": lambda r: (r.get("label") or "", r.get("user") or ""),
        "state": lambda r: (list(STATES).index(page_state(r)), r.get("user") or ""),
        "rule": lambda r: (r.get("rule") or "", r.get("user") or ""),
        "visit": lambda r: r.get("last_activity") or "",
        "stop": lambda r: r.get("stop_at") or "",
    }
    key = keys[query.sort]
    known = [r for r in chosen if key(r) != ""]
    unknown = [r for r in chosen if key(r) == ""]
    return sorted(known, key=key, reverse=query.descending) + unknown


def _admin_view(ctx: PageContext, rows: Sequence[Mapping[str, Any]]) -> str:
    assert ctx.admin is not None
    query = ctx.admin
    shown = admin_rows(rows, query)
    return "\n".join(
        [
            _admin_filters(query, sorted({str(r.get("rule")) for r in rows})),
            f"<p id='all' aria-live='polite'>{len(shown)} of {len(rows)} servers.</p>",
            "<table class='table table-striped' id='all-servers'><thead><tr>",
            "".join(_sort_header(query, key, text) for key, text in ADMIN_COLUMNS),
            "</tr></thead><tbody>",
            "".join(_admin_row(ctx, r) for r in shown),
            "</tbody></table>",
            _past_stops(ctx, limit=50),
        ]
    )


def _admin_filters(query: AdminQuery, rules: list[str]) -> str:
    def options(values: list[tuple[str, str]], chosen: str) -> str:
        return "".join(
            f"<option value='{_e(v)}'{' selected' if v == chosen else ''}>{_e(t)}</option>" for v, t in values
        )

    rule_options = options([("", "every rule"), *((r, r) for r in rules)], query.rule)
    state_options = options([("", "every state"), *((k, v[0]) for k, v in STATES.items())], query.state)
    return (
        "<form method='get' class='row g-2 align-items-end mb-3' aria-label='Filter servers'>"
        "<input type='hidden' name='view' value='all'>"
        f"<input type='hidden' name='sort' value='{_e(query.sort)}'>"
        f"<input type='hidden' name='order' value='{'desc' if query.descending else 'asc'}'>"
        "<div class='col-auto'><label class='form-label' for='filter-rule'>Rule</label>"
        f"<select class='form-select' id='filter-rule' name='rule'>{rule_options}</select></div>"
        "<div class='col-auto'><label class='form-label' for='filter-state'>State</label>"
        f"<select class='form-select' id='filter-state' name='state'>{state_options}</select></div>"
        "<div class='col-auto'><button type='submit' class='btn culler-btn'>Filter</button></div></form>"
    )


def _sort_header(query: AdminQuery, key: str, text: str) -> str:
    current = query.sort == key
    order = "desc" if current and not query.descending else "asc"
    aria = f" aria-sort='{'descending' if query.descending else 'ascending'}'" if current else ""
    arrow = (" ▼" if query.descending else " ▲") if current else ""
    link = _e(query.link(sort=key, order=order))
    return f"<th scope='col'{aria}><a href='{link}' data-sort='{key}'>{text}{arrow}</a></th>"


def _admin_row(ctx: PageContext, row: Mapping[str, Any]) -> str:
    cells = (
        _e(row.get("user")),
        _e(row.get("label")),
        state_badge(row, ctx.now),
        f"<span title='{_e(row.get('rule_text'))}'>{_e(row.get('rule'))}</span>",
        when(row.get("last_activity"), ctx.now),
        when(row.get("stop_at"), ctx.now) if row.get("stop_at") else "never",
    )
    return f"<tr data-user='{_e(row.get('user'))}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
