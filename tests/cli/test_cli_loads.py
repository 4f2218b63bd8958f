"""Each command loads only what it uses: checking a policy starts no HTTP client, scheduler or metrics code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from culler.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in
      {"aiohttp", "apscheduler", "prometheus_client"} or m.startswith(("culler.engine", "culler.observers",
      "culler.wiring")))}), file=sys.stderr)
"""


def loaded(*argv: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": ""}
    )
    report: dict[str, object] = json.loads(result.stderr.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize(
    "argv",
    [("policy", "schema", "--output", "/dev/null"), ("policy", "check", "policies/default.yaml")],
    ids=["schema", "check"],
)
def test_policy_commands_load_no_runtime(argv: tuple[str, ...]) -> None:
    report = loaded(*argv)
    assert report == {"code": 0, "loaded": []}


def test_the_check_can_see_a_heavy_import() -> None:
    """The probe itself works: the service's default command does load the runtime."""
    report = loaded("--url", "http://127.0.0.1:9/hub/api", "--bogus-flag")  # a usage error, after importing serve
    assert report["code"] == 2
    assert {"aiohttp", "apscheduler"} <= {str(m).split(".")[0] for m in report["loaded"]}  # type: ignore[union-attr]
