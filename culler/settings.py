"""How the service runs (hub URL, token, interval, caps, logging). What it stops lives in the policy file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from culler.core.names import SlugScheme, TemplateError, check_template
from culler.policy.durations import parse_duration

DEFAULT_TIMEOUT = 7 * 86400
DEFAULT_INTERVAL = 300

# Flags that describe a policy (jupyterhub-idle-culler's); with --policy they are rejected.
POLICY_FLAGS = (
    "timeout",
    "max_age",
    "cull_users",
    "cull_admin_users",
    "cull_default_servers",
    "cull_named_servers",
    "remove_named_servers",
)


SECRET_FIELDS = ("api_token", "proxy_api_token", "probe_token", "warn_url", "warn_secret")


def _seconds_or_none(value: object) -> object:
    if value is None or value == "":
        return None
    seconds = parse_duration(value)
    return 0 if seconds is None else seconds  # "never" max age is the incumbent's 0


Seconds = Annotated[float, BeforeValidator(_seconds_or_none)]


def _template(text: str) -> str:
    try:
        check_template(text)
    except TemplateError as error:
        raise ValueError(str(error)) from error
    return text


CheckedTemplate = Annotated[str, AfterValidator(_template)]


def _env(name: str, *extra: str) -> AliasChoices:
    return AliasChoices(f"CULLER_{name.upper()}", *extra)


@dataclass(frozen=True)
class HubView:
    """How to reach the hub API."""

    url: str
    token: str = field(repr=False)  # never in a repr, a log line or an error
    concurrency: int = 10
    request_timeout: float = 60.0
    page_size: int = 0
    max_rate: float = 100.0
    internal_certs: Path | None = None  # None: the hub does not use internal SSL


@dataclass(frozen=True)
class ClockView:
    """How far a source's clock may be from ours."""

    warn_at: float
    max_skew: float


@dataclass(frozen=True)
class ProxyView:
    """Where browser activity comes from with ``--activity-source=proxy`` (None: the hub's last_activity)."""

    url: str
    token: str = field(repr=False)
    request_timeout: float = 60.0


@dataclass(frozen=True)
class ProbesView:
    slug_scheme: SlugScheme
    tree_scan_path: str | None
    tree_scan_budget: float
    tree_scan_hot_files: int
    prometheus_url: str | None
    prometheus_query: str | None
    prometheus_threshold: float
    probe_token: str = field(default="", repr=False)  # the server probe's; "" when not set
    proxy_url: str = "http://127.0.0.1:8001"  # where the server probe finds each server's target
    proxy_token: str = field(default="", repr=False)
    request_timeout: float = 60.0


@dataclass(frozen=True)
class CycleView:
    dry_run: bool
    max_stops: int
    max_stop_fraction: float
    follow_up_timeout: float
    probe_timeout: float
    interval: float
    listing_deadline: float
    recheck_fraction: float


@dataclass(frozen=True)
class NoticesView:
    """The stop-warning webhook (None in dry runs: users are not warned of stops that will not come)."""

    url: str = field(repr=False)  # a webhook URL's path can be its token
    warn_before: float = 86400.0
    secret_header: tuple[str, str] | None = field(default=None, repr=False)
    retries: int = 3
    timeout: float = 10.0
    page_url: str | None = None


class Settings(BaseSettings):
    """Flat ``CULLER_*`` fields (as flags and environment variables name them), with grouped read-only views
    (``hub``, ``clocks``, ``proxy``, ``probes``, ``cycle``, ``notices``) that the wiring passes on."""

    model_config = SettingsConfigDict(env_prefix="CULLER_", extra="forbid", populate_by_name=True)

    url: str = Field(
        "http://127.0.0.1:8081/hub/api",
        validation_alias=_env("url", "JUPYTERHUB_API_URL"),
        description="the hub API base URL",
    )
    api_token: SecretStr | None = Field(None, validation_alias=_env("api_token", "JUPYTERHUB_API_TOKEN"))
    policy: Path | None = Field(None, description="policy file; without it the incumbent's flags form the policy")
    cull_every: Seconds = Field(DEFAULT_INTERVAL, ge=0, description="seconds between cycles (0: the default)")
    concurrency: int = Field(10, ge=0, description="at most this many hub API requests at once (0: unlimited)")
    api_page_size: int = Field(0, ge=0, description="users per page when listing (0: ask for 500, capped by the hub)")
    request_timeout: float = Field(60.0, gt=0, validation_alias=_env("request_timeout", "JUPYTERHUB_REQUEST_TIMEOUT"))
    max_request_rate: float = Field(100.0, gt=0, description="at most this many hub API requests per second")
    listing_deadline: Seconds = Field(
        0, ge=0, description="longest a listing may take (0: one request timeout a page, capped by the interval)"
    )
    recheck_fraction: float = Field(
        0.01,
        ge=0,
        description="re-read due servers before stopping when the listing took this share of the shortest idle limit",
    )
    clock_skew_warning: Seconds = Field(60, ge=0, description="warn when the hub's or proxy's clock is this far off")
    max_clock_skew: Seconds = Field(86400, gt=0, description="beyond this skew, stop nothing: a clock is broken")
    ssl_enabled: bool = False
    internal_certs_location: Path = Path("internal-ssl")

    timeout: Seconds | None = None
    max_age: Seconds | None = None
    cull_users: bool | None = None
    cull_admin_users: bool | None = None
    cull_default_servers: bool | None = None
    cull_named_servers: bool | None = None
    remove_named_servers: bool | None = None

    max_stops_per_cycle: int = Field(100, ge=0, description="mass-stop guard: absolute cap per cycle (0: none)")
    max_stop_fraction: float = Field(0.5, gt=0, le=1, description="mass-stop guard: cap as a share of ready servers")
    dry_run: bool = Field(False, description="decide and report, stop nothing")
    once: bool = Field(False, description="run one cycle and exit; the exit status says whether it worked")
    follow_up_timeout: float = Field(120.0, ge=0, description="how long to follow a stop the hub answered 202 to")
    policy_poll: float = Field(10.0, gt=0, description="seconds between checks of the policy file")
    shutdown_timeout: float = Field(5.0, ge=0, description="how long a running cycle may finish at shutdown")

    activity_source: Literal["hub", "proxy"] = Field(
        "hub", description="hub: the hub's last_activity; proxy: configurable-http-proxy route activity only"
    )
    proxy_api_url: str = Field("http://127.0.0.1:8001", description="configurable-http-proxy's API")
    proxy_api_token: SecretStr | None = Field(None, validation_alias=_env("proxy_api_token", "CONFIGPROXY_AUTH_TOKEN"))

    slug_scheme: SlugScheme = Field(
        "safe", description="how KubeSpawner names things: safe (KubeSpawner 7's default) or escape (KubeSpawner 6)"
    )
    tree_scan_path: CheckedTemplate | None = Field(
        None, description="the tree-scan probe: home mount, e.g. /mnt/homes/{username} (KubeSpawner's names)"
    )
    tree_scan_budget: float = Field(0.05, gt=0, description="tree-scan: seconds of scanning per server per poll")
    tree_scan_hot_files: int = Field(32, ge=0, description="tree-scan: recently changed files re-checked every poll")
    prometheus_url: str | None = Field(None, description="the Prometheus probe: Prometheus base URL")
    prometheus_query: CheckedTemplate | None = Field(
        None, description='PromQL with KubeSpawner\'s names, e.g. pod="jupyter-{user_server}"'
    )
    prometheus_threshold: float = Field(0.0, description="quiet while the query's value is at most this")
    probe_token: SecretStr | None = Field(
        None, description="settle probe server: a hub token holding only custom:activity-culler:probe"
    )
    settle_poll: float = Field(15.0, gt=0, description="seconds between settle polls")
    probe_timeout: float = Field(30.0, gt=0, description="seconds one probe may take to answer")

    service_name: str = Field(
        "activity-culler", validation_alias=_env("service_name", "JUPYTERHUB_SERVICE_NAME"), description="hub service"
    )
    metrics_bind_url: str | None = Field(
        None, description="also serve /metrics without a token here (in-cluster scraping), e.g. http://0.0.0.0:9090"
    )
    per_server_metrics: bool = Field(False, description="export seconds-until-stop per server (a series per server)")

    warn_url: SecretStr | None = Field(None, description="stop-warning webhook URL (unset: no warnings)")
    warn_before: Seconds = Field(86400, ge=0, description="warn this long before a server is due")
    warn_secret_header: str = Field("Authorization", description="header carrying the webhook secret")
    warn_secret: SecretStr | None = Field(None, description="value of that header, e.g. 'Bearer ...'")
    warn_retries: int = Field(3, ge=0)
    warn_timeout: float = Field(10.0, gt=0)
    activity_page_url: str | None = Field(None, description="a link for users, put in warning payloads")

    oauth_client_id: str | None = Field(
        None, validation_alias=_env("oauth_client_id", "JUPYTERHUB_CLIENT_ID"), description="the page's hub login"
    )
    oauth_callback_url: str | None = Field(
        None, validation_alias=_env("oauth_callback_url", "JUPYTERHUB_OAUTH_CALLBACK_URL")
    )
    hub_base_url: str = Field("/", validation_alias=_env("hub_base_url", "JUPYTERHUB_BASE_URL"))
    oauth_authorize_url: str | None = Field(None, description="the hub login page (default: from the base URL)")
    database: Path | None = Field(
        None, description="SQLite file for keeps, the stop history and page sessions (unset: in memory)"
    )
    stop_history: Path | None = Field(
        None, description="an earlier version's JSON-lines stop history, imported into the database once"
    )
    stop_history_limit: int = Field(1000, ge=1, description="stops shown on the page (the newest)")
    stop_history_retention: Seconds = Field(90 * 86400, gt=0, description="stored stops older than this are dropped")
    session_ttl: float = Field(8 * 3600.0, gt=0, description="seconds a page login lasts")
    secure_cookies: bool = Field(False, description="mark the session cookie Secure (behind https)")

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    bind_url: str = Field("http://127.0.0.1:10101", validation_alias=_env("bind_url", "JUPYTERHUB_SERVICE_URL"))
    service_prefix: str = Field("/", validation_alias=_env("service_prefix", "JUPYTERHUB_SERVICE_PREFIX"))

    @property
    def authorize_url(self) -> str:
        """The hub's OAuth authorize page, under the hub's base URL (JUPYTERHUB_BASE_URL, e.g. /jhub/)."""
        if self.oauth_authorize_url:
            return self.oauth_authorize_url
        return "/" + "/".join(p for p in (*self.hub_base_url.split("/"), "hub/api/oauth2/authorize") if p)

    @property
    def interval(self) -> float:
        return self.cull_every or DEFAULT_INTERVAL

    @property
    def hub(self) -> HubView:
        return HubView(
            self.url,
            self.api_token.get_secret_value() if self.api_token else "",
            self.concurrency,
            self.request_timeout,
            self.api_page_size,
            self.max_request_rate,
            self.internal_certs_location if self.ssl_enabled else None,
        )

    @property
    def clocks(self) -> ClockView:
        return ClockView(self.clock_skew_warning, self.max_clock_skew)

    @property
    def proxy(self) -> ProxyView | None:
        if self.activity_source != "proxy":
            return None
        token = self.proxy_api_token.get_secret_value() if self.proxy_api_token else ""
        return ProxyView(self.proxy_api_url, token, self.request_timeout)

    @property
    def probes(self) -> ProbesView:
        return ProbesView(
            self.slug_scheme,
            self.tree_scan_path,
            self.tree_scan_budget,
            self.tree_scan_hot_files,
            self.prometheus_url,
            self.prometheus_query,
            self.prometheus_threshold,
            self.probe_token.get_secret_value() if self.probe_token else "",
            self.proxy_api_url,
            self.proxy_api_token.get_secret_value() if self.proxy_api_token else "",
            self.request_timeout,
        )

    @property
    def cycle(self) -> CycleView:
        return CycleView(
            self.dry_run,
            self.max_stops_per_cycle,
            self.max_stop_fraction,
            self.follow_up_timeout,
            self.probe_timeout,
            self.interval,
            self.listing_deadline,
            self.recheck_fraction,
        )

    @property
    def notices(self) -> NoticesView | None:
        if self.warn_url is None or self.dry_run:
            return None
        secret = self.warn_secret.get_secret_value() if self.warn_secret else None
        return NoticesView(
            self.warn_url.get_secret_value(),
            self.warn_before,
            (self.warn_secret_header, secret) if secret else None,
            self.warn_retries,
            self.warn_timeout,
            self.activity_page_url,
        )

    def configured_probes(self) -> list[str]:
        """The settle probes these settings set up, by the names policies use (sorted)."""
        probes = ["tree-scan"] if self.tree_scan_path else []
        probes += ["server"] if self.probe_token is not None and self.probe_token.get_secret_value() else []
        return sorted(probes + (["prometheus"] if self.prometheus_url and self.prometheus_query else []))

    def policy_flags_given(self) -> list[str]:
        return [name for name in POLICY_FLAGS if getattr(self, name) is not None]

    def secrets(self) -> list[str]:
        secrets = (getattr(self, name) for name in SECRET_FIELDS)
        return [secret.get_secret_value() for secret in secrets if secret is not None]

    @classmethod
    def secret_variables(cls) -> list[str]:
        """The environment variables secrets come from (for redacting logs when the settings do not validate)."""
        names = []
        for name in SECRET_FIELDS:
            alias = cls.model_fields[name].validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [f"CULLER_{name.upper()}"]
            names += [str(choice) for choice in choices]
        return names

    def summary(self) -> dict[str, object]:
        """The effective settings for the start-up log line: secrets redacted."""
        data = self.model_dump(exclude_none=True)
        for name in SECRET_FIELDS:
            if getattr(self, name) is not None:
                data[name] = "[secret]"
        return {key: str(value) for key, value in data.items()}
