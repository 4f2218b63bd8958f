"""The one place that builds everything, runs it and closes it: hub and proxy clients, probes, the engine,
its observers, the scheduler, the web endpoints and the signals (``build_service``, ``Service``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.aiohttp import make_aiohttp_handler

from culler.adapters.database import Database, DatabaseError, describe
from culler.adapters.hub import HubClient, RequestObserver, internal_ssl_context
from culler.adapters.hub_auth import HubAuth
from culler.adapters.keep_store import KeepStore
from culler.adapters.policy_store import PolicyStore
from culler.adapters.probes.base import Probe
from culler.adapters.probes.prometheus import PrometheusProbe
from culler.adapters.probes.server import ServerProbe
from culler.adapters.probes.treescan import TreeScanProbe
from culler.adapters.proxy import ProxyActivity
from culler.core.clock import ClockWatch
from culler.core.decide import PluginFn
from culler.core.events import Bus, Event
from culler.core.names import Template
from culler.core.report import CycleReport
from culler.core.text import utcnow
from culler.engine.cycle import Culler, CycleOptions
from culler.engine.health import Health
from culler.engine.keeper import Keeper, describe_keep
from culler.engine.setup_check import SetupCheck
from culler.logs import event
from culler.observers.history import StopHistory, import_json_lines
from culler.observers.latest import LatestDecisions
from culler.observers.metrics import Metrics
from culler.observers.notices import WarningSender
from culler.settings import ClockView, Settings
from culler.web.app import make_app, make_metrics_app, make_unready_app, normalized_prefix
from culler.web.keeps import add_keep_routes
from culler.web.page import OAuthConfig, PageLinks, add_activity_routes, hub_identify
from culler.web.rows import PolicyFacts, rows

log = logging.getLogger("culler.app")


def hub_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The hub's internal-SSL client context, when the hub uses internal SSL."""
    certs = settings.hub.internal_certs
    return internal_ssl_context(certs) if certs is not None else None


def make_hub(settings: Settings, observer: RequestObserver | None = None) -> HubClient:
    hub = settings.hub
    return HubClient(
        hub.url,
        hub.token,
        concurrency=hub.concurrency,
        request_timeout=hub.request_timeout,
        page_size=hub.page_size,
        max_rate=hub.max_rate,
        ssl_context=hub_ssl_context(settings),
        observer=observer,
        clock=clock_watch("hub", settings.clocks),
    )


def clock_watch(source: str, clocks: ClockView) -> ClockWatch:
    return ClockWatch(source, warn_at=clocks.warn_at, max_skew=clocks.max_skew)


def build_probes(settings: Settings) -> dict[str, Probe]:
    """The settle probes the settings configure, by the names policies use."""
    view = settings.probes
    probes: dict[str, Probe] = {}
    if view.tree_scan_path:
        template = Template(view.tree_scan_path, view.slug_scheme)
        probes["tree-scan"] = TreeScanProbe(template, budget=view.tree_scan_budget, hot_size=view.tree_scan_hot_files)
    if view.prometheus_url and view.prometheus_query:
        query = Template(view.prometheus_query, view.slug_scheme)
        probes["prometheus"] = PrometheusProbe(view.prometheus_url, query, view.prometheus_threshold)
    if view.probe_token:
        probes["server"] = ServerProbe(view.proxy_url, view.proxy_token, view.probe_token, view.request_timeout)
    return probes


def make_activity(settings: Settings) -> ProxyActivity | None:
    proxy = settings.proxy
    if proxy is None:
        return None
    # Without a token every cycle fails with a clear error (and stops nothing): exiting instead would
    # take the hub down with its managed service.
    return ProxyActivity(proxy.url, proxy.token, proxy.request_timeout, clock_watch("proxy", settings.clocks))


def make_warnings(settings: Settings, publish: Callable[[Event], None] | None = None) -> WarningSender | None:
    """The stop-warning webhook, if one is set (never in dry runs)."""
    view = settings.notices
    if view is None:
        return None
    return WarningSender(
        view.url,
        view.warn_before,
        view.secret_header,
        retries=view.retries,
        timeout=view.timeout,
        service_url=view.page_url,
        publish=publish,
    )


def cycle_options(settings: Settings) -> CycleOptions:
    return CycleOptions(**asdict(settings.cycle))


async def bind(runner: web.AppRunner, url: str, prefix: str) -> None:
    """Listen; if the port is taken, say so once and keep culling while retrying (exiting would
    make the hub restart the service in a tight loop)."""
    where = urlsplit(url)
    site = web.TCPSite(runner, where.hostname or "127.0.0.1", where.port or 10101)
    failed = False
    while True:
        try:
            await site.start()
        except OSError as error:
            if not failed:
                event(
                    log, logging.ERROR, "cannot listen; retrying every 10s", url=url, error=error.strerror or str(error)
                )
            failed = True
            await asyncio.sleep(10)
            continue
        event(log, logging.INFO, "listening", url=url, prefix=prefix)
        return


async def serve_unready(reason: str, bind_url: str, prefix: str) -> int:
    """Under a hub, a service with bad settings keeps serving, unready, until it is stopped (see
    ``make_unready_app``); it culls nothing."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_unready_app(prefix, reason), handle_signals=False, access_log=None)
    await runner.setup()
    task = asyncio.create_task(bind(runner, bind_url, prefix))
    await stop.wait()
    task.cancel()
    await runner.cleanup()
    return 0


def build_service(
    settings: Settings, store: PolicyStore, plugins: Mapping[str, PluginFn], probes: Mapping[str, Probe]
) -> Service:
    """Every part of the running service, wired once; each HTTP session is closed by ``Service.close``."""
    resources = AsyncExitStack()
    metrics = Metrics(per_server=settings.per_server_metrics)
    metrics.known_probes(probes)
    bus = Bus()
    store.publish = bus.publish
    hub = make_hub(settings, observer=metrics.hub_request)
    resources.push_async_callback(hub.close)
    activity = make_activity(settings)
    if activity is not None:
        resources.push_async_callback(activity.close)
    for probe in probes.values():
        if isinstance(probe, PrometheusProbe | ServerProbe):
            resources.push_async_callback(probe.close)
    database, problem = open_database(settings.database)
    resources.callback(database.close)
    keeps = KeepStore(database, problem)
    culler = Culler(hub, cycle_options(settings), plugins, probes=probes, activity=activity, events=bus, keeps=keeps)
    warnings = make_warnings(settings, bus.publish)
    if warnings is not None:
        resources.push_async_callback(warnings.close)
    latest = LatestDecisions()
    history = StopHistory(database, settings.stop_history_limit, retention=settings.stop_history_retention)
    if settings.stop_history is not None and problem is None:
        _import_history(database, settings.stop_history, history)
    bus.subscribe(metrics, *([warnings] if warnings else []), latest, history)
    metrics.watch(store, culler.ledger, [hub.clock] + ([activity.clock] if activity is not None else []))
    if store.state.policy is not None:
        metrics.known_rules(rule.id for rule in store.state.policy.rules)
    health = Health(settings.interval)
    setup = SetupCheck(hub, health, probes, settings.dry_run)
    parts = Parts(metrics, latest, history, health, setup, keeps, warnings)
    return Service(settings, store, culler, parts, resources)


def open_database(path: Path | None) -> tuple[Database, str | None]:
    """The database at ``path``, or, when it cannot be opened (read, newer schema, corrupt), one in memory
    and the reason: the service runs on, and keeps are "cannot be read" until it is fixed."""
    try:
        database = Database(path)
    except DatabaseError as error:
        log.error("cannot open the database; using one in memory until restarted: %s", error)
        return Database(None), str(error)
    log.info("database: %s", describe(database))
    return database, None


def _import_history(database: Database, path: Path, history: StopHistory) -> None:
    try:
        imported = import_json_lines(database, path)
    except (DatabaseError, OSError) as error:
        log.warning("cannot import the stop history %s: %s", path, error)
        return
    if imported is not None:
        log.info("imported %d stops from %s into the database (once; the file is no longer written)", imported, path)
        history.reload()


@dataclass(frozen=True)
class Parts:
    """What the service serves and reports from, besides the engine."""

    metrics: Metrics | None
    latest: LatestDecisions
    history: StopHistory
    health: Health
    setup: SetupCheck
    keeps: KeepStore
    warnings: WarningSender | None = None


class Service:
    def __init__(
        self, settings: Settings, store: PolicyStore, culler: Culler, parts: Parts, resources: AsyncExitStack
    ) -> None:
        self.settings = settings
        self.store = store
        self.culler = culler
        self.metrics = parts.metrics
        self.latest = parts.latest
        self.history = parts.history
        self.health = parts.health
        self.setup = parts.setup
        self.warnings = parts.warnings
        self.keeps = parts.keeps
        self.database = parts.keeps.database
        self.keeper = Keeper(
            culler.hub, culler.look, parts.keeps, lambda: store.state.policy, culler.events.publish, culler.plugins
        )
        self.resources = resources  # every session the wiring opened, closed once by close()
        self.auth = HubAuth(culler.hub)  # callers' tokens: one path to the hub, one cache
        self._cycle_task: asyncio.Task[None] | None = None
        self._runners: list[web.AppRunner] = []  # extra listeners (the open metrics port)
        self._bind_tasks: list[asyncio.Task[None]] = []
        self._settle_task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        await self.resources.aclose()

    async def cycle(self) -> CycleReport | None:
        """One scheduled cycle: refresh the policy, then cull under it (or under nothing)."""
        self._cycle_task = asyncio.current_task()
        started = utcnow()
        try:
            state = self.store.refresh()
            if state.policy is None:
                self.health.record(started, f"no valid policy: {state.error}")
                return None
            policy = await self.setup.before_cycle(state.policy, state.hash)
            self._check_keeps(started)
            blocker = self.health.blocker()
            if blocker:  # e.g. a scope every cycle needs: nothing is judged, nothing is stopped
                self.health.record(started, blocker)
                return None
            report = await self.culler.run(policy)
        except Exception as error:  # a guarded root task: log by name, report unhealthy, keep serving
            log.exception("cycle crashed")
            self.health.record(started, f"cycle crashed: {type(error).__name__}: {error}")
            return None
        except asyncio.CancelledError:
            if not self.culler.stopping.is_set():
                raise
            # Cancelled by _finish_cycle after shutdown_timeout: expected, not a job failure to log.
            event(log, logging.WARNING, "cycle cancelled at shutdown", after=f"{self.settings.shutdown_timeout:g}s")
            return None
        self.health.record(utcnow(), report.error)
        return report

    def _check_keeps(self, now: datetime) -> None:
        self.keeps.expire(now)
        problem = self.keeps.problem
        message = f"keeps cannot be read ({problem}): servers whose rule allows keeping are not stopped"
        self.health.condition("keeps", message if problem else None)

    def keeps_body(self) -> dict[str, object]:
        return {"keeps": [describe_keep(kept) for kept in self.keeps.all()], "problem": self.keeps.problem}

    async def refresh_policy(self) -> None:
        try:
            self.store.refresh()
        except Exception:
            log.exception("policy refresh crashed")

    def health_status(self) -> tuple[bool, dict[str, object]]:
        state = self.store.state
        ok, body = self.health.status(utcnow(), state.error, state.policy is not None)
        return ok, {**body, "policy_hash": state.hash, "dry_run": self.settings.dry_run}

    async def run_once(self) -> int:
        report = await self.cycle()
        await self.culler.follow_ups_done()
        await self._drain_warnings()
        return 0 if report is not None and report.ok else 1

    async def _drain_warnings(self) -> None:
        """Deliver the last notices (the final "stopped" ones come from the follow-ups), bounded."""
        if self.warnings is not None:
            await self.warnings.drain(self.settings.shutdown_timeout)

    async def serve(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.refresh_policy()  # so that health speaks of the policy from the first request
        runner = await self._start_web()
        scheduler = self._start_scheduler()
        await stop.wait()
        event(log, logging.INFO, "shutting down")
        # Pause, not shut down, first: APScheduler's asyncio executor cancels running jobs at shutdown,
        # which would cut the in-flight stops short instead of letting them finish.
        scheduler.pause()
        await self._finish_cycle()
        scheduler.shutdown(wait=False)
        for task in self._bind_tasks:
            task.cancel()
        for extra in self._runners:
            await extra.cleanup()
        await runner.cleanup()
        await self.close()
        event(log, logging.INFO, "stopped")
        return 0

    def _rows(self, user: str | None = None) -> list[dict[str, object]]:
        """Every server's rows, or one user's (a user's page judges only their own keep offers)."""
        decisions = self.latest.decisions
        if user is not None:
            decisions = [d for d in decisions if d.server.user == user]
        facts = PolicyFacts(self.store.state.policy, self.keeps, self.culler.plugins)
        return rows(decisions, utcnow(), self.culler.settler.describe_by_key(), self.history, facts)

    def _oauth(self) -> OAuthConfig | None:
        """The page's login through the hub: only for a service registered with a url (it has a client id)."""
        s = self.settings
        if not s.oauth_client_id or s.api_token is None:
            return None
        return OAuthConfig(
            client_id=s.oauth_client_id,
            client_secret=s.api_token.get_secret_value(),
            redirect_uri=s.oauth_callback_url or f"{s.service_prefix.rstrip('/')}/oauth_callback",
            token_url=self.culler.hub.api_url + "oauth2/token",
            authorize_url=s.authorize_url,
            session_ttl=s.session_ttl,
            secure_cookies=s.secure_cookies,
            ssl_context=hub_ssl_context(s),
        )

    async def settle_poll(self) -> None:
        """A guarded root task: a probe or stop surprise is logged, never raised into the scheduler."""
        self._settle_task = asyncio.current_task()
        try:
            await self.culler.settler.poll()
        except Exception:
            log.exception("settle poll crashed")

    async def _start_web(self) -> web.AppRunner:
        handler = make_aiohttp_handler(self.metrics.registry) if self.metrics is not None else None
        oauth = self._oauth()
        app = make_app(
            self.settings.service_prefix,
            self.health_status,
            self.culler.settler.describe,
            self.auth.scopes,
            handler,
            self.settings.service_name,
            index_page=oauth is None,
        )
        identify = hub_identify(self.auth)
        links = PageLinks(self.settings.hub_base_url, self.keeper.keep)
        add_activity_routes(
            app, self.settings.service_prefix, self._rows, self.history, identify, oauth, self.database, links
        )
        add_keep_routes(app, normalized_prefix(self.settings.service_prefix), self.keeper.keep, self.keeps_body)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        self._bind_tasks.append(asyncio.create_task(self._bind(runner, self.settings.bind_url)))
        if handler is not None and self.settings.metrics_bind_url:
            open_runner = web.AppRunner(make_metrics_app(handler), handle_signals=False, access_log=None)
            await open_runner.setup()
            self._runners.append(open_runner)
            self._bind_tasks.append(asyncio.create_task(self._bind(open_runner, self.settings.metrics_bind_url)))
        return runner

    async def _bind(self, runner: web.AppRunner, url: str) -> None:
        await bind(runner, url, self.settings.service_prefix)

    def _start_scheduler(self) -> AsyncIOScheduler:
        interval = self.settings.interval
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            self.cycle,
            IntervalTrigger(seconds=interval, jitter=min(30.0, interval * 0.05)),
            id="cycle",
            next_run_time=utcnow(),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(interval)),
        )
        if self.store.path is not None:
            scheduler.add_job(self.refresh_policy, IntervalTrigger(seconds=self.settings.policy_poll), id="policy")
        scheduler.add_job(
            self.settle_poll,
            IntervalTrigger(seconds=self.settings.settle_poll),
            id="settle",
            max_instances=1,
            coalesce=True,
        )
        scheduler.start()
        return scheduler

    async def _finish_cycle(self) -> None:
        """Let a running cycle finish its in-flight stops (bounded); no new stop starts."""
        self.culler.stopping.set()  # also ends stop follow-ups at their next poll
        running = {t for t in (self._cycle_task, self._settle_task) if t is not None and not t.done()}
        if running:
            _, late = await asyncio.wait(running, timeout=self.settings.shutdown_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.culler.follow_ups_done()
        await self._drain_warnings()
