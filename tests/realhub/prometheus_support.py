"""A real Prometheus on loopback for the tests, scraping a tiny exporter the test controls.

``MetricsExporter`` serves ``/metrics`` from a thread (gauges whose values the test sets);
``PrometheusServer`` runs the ``prometheus`` binary with a generated config (1 s scrapes of the
exporter), its TSDB in a temp dir, listening on a free 127.0.0.1 port. Both are always stopped by
their owners (context managers / fixtures).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from realhub_support import start_process, stop_process, wait_for

from devtools.devhub import free_port


def prometheus_binary() -> str:
    """The ``prometheus`` binary, or skip (CI installs Debian's package through ./dev test)."""
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("the prometheus binary is not on PATH (Debian: apt-get install prometheus; ./dev test does it)")
    return found


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsExporter:
    """``/metrics`` on 127.0.0.1 with one gauge per user: ``<metric>{username="..."} <value>``."""

    def __init__(self, metric: str = "home_write_bytes_rate") -> None:
        self.metric = metric
        self.values: dict[str, float] = {}
        self.scrapes = 0
        self._lock = threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-exporter", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def render(self) -> str:
        with self._lock:
            self.scrapes += 1
            lines = [f"# HELP {self.metric} bytes written per second to a user's home", f"# TYPE {self.metric} gauge"]
            lines += [f'{self.metric}{{username="{_label(user)}"}} {value:g}' for user, value in self.values.items()]
        return "\n".join(lines) + "\n"

    def set(self, user: str, value: float) -> None:
        with self._lock:
            self.values[user] = value

    def start(self) -> MetricsExporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrometheusServer:
    """``prometheus`` scraping ``targets`` every second, on a free loopback port, data in ``workdir``."""

    def __init__(self, workdir: Path, targets: list[str], scrape_interval: str = "1s") -> None:
        self.binary = prometheus_binary()
        self.workdir = workdir
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def scrape_config(self) -> dict[str, Any]:
        return {"job_name": "homes", "static_configs": [{"targets": self.targets}]}

    def config(self) -> str:
        interval = self.scrape_interval
        config = {"global": {"scrape_interval": interval, "scrape_timeout": interval}}
        return json.dumps({**config, "scrape_configs": [self.scrape_config()]})  # JSON is YAML

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config())
        command = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.process = start_process(command, self.log_path)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"prometheus not ready in {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def query(self, promql: str) -> float | None:
        """An instant query's single value (max over series), None when it returns no data."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return float(result[1])
        return max((float(series["value"][1]) for series in result), default=None)

    async def wait_value(self, promql: str, expected: float | None, timeout: float = 20.0) -> float:
        """Wait until ``promql`` answers ``expected`` (None: no data); returns the monotonic time it did."""
        last: list[float | None] = []

        async def answered() -> float | None:
            value = await asyncio.to_thread(self.query, promql)
            last[:] = [value]
            return time.monotonic() if value == expected else None

        return await wait_for(
            answered, timeout, f"{promql} to answer {expected}", interval=0.2, detail=lambda: f"it answered {last[0]}"
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServicePrometheus(PrometheusServer):
    """``prometheus`` scraping one target over HTTP with a bearer token (the hub's proxy in front of a
    service), ``metrics_path`` on it, and extra ``labels`` on its series (e.g. ``namespace``)."""

    def __init__(
        self, workdir: Path, target: str, metrics_path: str, token: str, labels: dict[str, str] | None = None
    ) -> None:
        super().__init__(workdir, [target])
        self.metrics_path = metrics_path
        self.token = token
        self.labels = labels or {}

    def scrape_config(self) -> dict[str, Any]:
        return {
            "job_name": "activity-culler",
            "metrics_path": self.metrics_path,
            "authorization": {"type": "Bearer", "credentials": self.token},
            "static_configs": [{"targets": self.targets, "labels": self.labels}],
        }

    def api_get(self, path: str, **params: str) -> dict[str, Any]:
        """``GET /api/v1/<path>`` answered 200 or 400 (bad PromQL): the decoded JSON body."""
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            if error.code in (400, 422):
                return dict(json.loads(error.read()))
            raise


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` (next to ``prometheus``; skip when it is missing) and return its result."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not on PATH (Debian: apt-get install prometheus)")
    return subprocess.run([found, *args], input=stdin, capture_output=True, text=True, timeout=60)
