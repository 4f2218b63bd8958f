"""The Prometheus settle probe: a PromQL query per server, quiet while its value stays under a threshold.

For homes the service cannot mount (per-user volumes): query a write rate that Prometheus already
collects, e.g. ``sum(rate(container_fs_writes_bytes_total{pod="jupyter-{user_server}"}[2m]))`` or a
node-exporter NFS rate. KubeSpawner's names fill the placeholders (culler.names; quoted for PromQL
strings).
Quiet is vouched from the first of an unbroken series of quiet answers, by this probe's own clock.
"""

from __future__ import annotations

import json
import math
import time

import aiohttp

from culler.core.names import Template
from culler.core.settle import Observation, active, quiet, unknown
from culler.core.snapshot import ServerSnapshot


def _promql_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class PrometheusProbe:
    name = "prometheus"

    def __init__(self, url: str, query: Template | str, threshold: float = 0.0, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/") + "/api/v1/query"
        self.query = query if isinstance(query, Template) else Template(query)
        self.threshold = threshold
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._quiet_since: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None

    def query_for(self, server: ServerSnapshot) -> str:
        return self.query.render(server.user, server.name, quote=_promql_string)

    async def observe(self, server: ServerSnapshot, window: float = 0.0) -> Observation:
        try:
            value = await self._value(self.query_for(server))
        except (
            aiohttp.ClientError,
            TimeoutError,
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            AttributeError,
        ) as error:
            self._quiet_since.pop(server.key, None)
            return unknown(f"query failed: {type(error).__name__}: {str(error)[:200]}", error=True)
        if value is None:
            self._quiet_since.pop(server.key, None)
            return unknown("the query returned no data", error=True)
        if math.isnan(value):  # NaN > threshold is False: it must not read as quiet
            self._quiet_since.pop(server.key, None)
            return unknown("the query returned NaN", error=True)
        if value > self.threshold:
            self._quiet_since.pop(server.key, None)
            return active(f"value {value:g} > {self.threshold:g}")
        since = self._quiet_since.setdefault(server.key, time.monotonic())
        return quiet(time.monotonic() - since, f"value {value:g} <= {self.threshold:g}")

    async def _value(self, query: str) -> float | None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        async with self._session.get(self.url, params={"query": query}) as response:
            raw, status = await response.read(), response.status
        try:
            body = json.loads(raw)
        except ValueError:
            raise ValueError(f"Prometheus answered {status} with a body that is not JSON") from None
        if status != 200 or body.get("status") != "success":
            raise ValueError(f"Prometheus answered {status}: {str(body.get('error'))[:200]}")
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return float(result[1])
        if not result:
            return None
        values = [float(series["value"][1]) for series in result]
        # max() with a NaN depends on the order; any series above the threshold is activity, else
        # any NaN means "cannot tell".
        known = [v for v in values if not math.isnan(v)]
        if len(known) < len(values) and not (known and max(known) > self.threshold):
            return math.nan
        return max(known)

    def forget(self, key: str) -> None:
        self._quiet_since.pop(key, None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
