"""The rooms of the package and the import-linter contracts that keep their layering (pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "culler"
ROOMS = {"policy", "core", "adapters", "engine", "observers", "web", "cli"}
# decide.py: the names policy plugins import, kept at their documented path
TOP = {"__init__.py", "__main__.py", "wiring.py", "settings.py", "logs.py", "decide.py"}
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contracts() -> list[dict[str, object]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint(config: Path) -> subprocess.CompletedProcess[str]:
    command = [str(LINT_IMPORTS), "--config", str(config), "--no-cache"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_module_lives_in_a_room_or_is_one_of_the_few_at_the_top() -> None:
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert top == TOP, f"new top-level modules belong in a room: {sorted(top - TOP)}"
    assert rooms == ROOMS


def test_the_contracts_name_every_room_in_order() -> None:
    [layers] = [c for c in contracts() if c["type"] == "layers"]
    assert layers["layers"] == [
        "culler.cli",
        "culler.wiring",
        "culler.web | culler.observers",
        "culler.engine",
        "culler.adapters",
        "culler.core",
        "culler.policy",
    ]
    forbidden = {
        tuple(c["source_modules"]): set(c["forbidden_modules"]) for c in contracts() if c["type"] == "forbidden"
    }
    assert forbidden[("culler.observers",)] == {"culler.engine"}
    assert forbidden[("culler.policy", "culler.core")] >= {"aiohttp", "apscheduler", "prometheus_client", "asyncio"}
    assert forbidden[("culler",)] == {"devtools"}


def test_the_code_keeps_every_contract() -> None:
    result = lint(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(contracts())} kept, 0 broken" in result.stdout


def test_the_checker_sees_a_broken_layer(tmp_path: Path) -> None:
    """A contract the code breaks on purpose (the engine uses asyncio; the cycle imports the settler)."""
    config = tmp_path / "broken.toml"
    config.write_text(
        "[tool.importlinter]\n"
        'root_packages = ["culler"]\n'
        "include_external_packages = true\n\n"
        "[[tool.importlinter.contracts]]\n"
        'name = "engine without asyncio"\n'
        'type = "forbidden"\n'
        'source_modules = ["culler.engine"]\n'
        'forbidden_modules = ["asyncio"]\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "settler above the cycle"\n'
        'type = "layers"\n'
        'layers = ["culler.engine.settler", "culler.engine.cycle"]\n'
    )
    result = lint(config)
    assert result.returncode != 0
    assert "0 kept, 2 broken" in result.stdout, result.stdout
