"""The pure decision modules must not reach HTTP, the scheduler, metrics or the event loop."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "culler"
PURE = [
    "policy",
    "decide",
    "snapshot",
    "durations",
    "guard",
    "explain",
    "timeutil",
    "settle",
    "clock",
    "listing",
    "options",
    "profiles",
    "views",
    "lifecycle",
    "events",
    "report",
]
FORBIDDEN = {"aiohttp", "apscheduler", "prometheus_client", "asyncio"}


def imports_of(module: str) -> set[str]:
    """Top-level names of every module ``culler.<module>`` imports (relative imports resolved)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.add("culler." + (node.module or ""))
            else:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def closure(module: str) -> tuple[set[str], dict[str, str]]:
    """Every module reachable from ``culler.<module>`` through culler.* imports, and who imported each."""
    seen, via, todo = set(), {}, [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in imports_of(current):
            via.setdefault(name, current)
            if name.startswith("culler.") and (PACKAGE / f"{name.split('.')[1]}.py").exists():
                todo.append(name.split(".")[1])
    return seen, via


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports(module):
    seen, via = closure(module)
    reached = {name for m in seen for name in imports_of(m)}
    bad = sorted(name for name in reached if name.split(".")[0] in FORBIDDEN)
    assert not bad, [f"{name} (imported by culler.{via[name]})" for name in bad]
    assert seen <= set(PURE), f"culler.{module} reaches non-pure modules {sorted(seen - set(PURE))}"


def test_checker_sees_forbidden_imports():
    seen, _ = closure("cycle")  # the cycle is the impure layer: the checker must notice
    assert {"asyncio", "aiohttp"} <= {name.split(".")[0] for m in seen for name in imports_of(m)}


def test_import_linter_contract(tmp_path):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "forbidden")
    assert {m.split(".")[-1] for m in contract["source_modules"]} >= {"policy", "decide", "snapshot", "guard"}
    assert set(contract["forbidden_modules"]) >= FORBIDDEN
    # The project's contract forbids external packages, which import-linter checks only with
    # include_external_packages; run it with that set (and every pure module as a source).
    contract = contract | {"source_modules": [f"culler.{m}" for m in PURE]}
    lines = [
        "[tool.importlinter]",
        'root_package = "culler"',
        "include_external_packages = true",
        "",
        "[[tool.importlinter.contracts]]",
    ]
    lines += [f"{key} = {_toml(value)}" for key, value in contract.items()]
    path = tmp_path / "importlinter.toml"
    path.write_text("\n".join(lines) + "\n")
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), str(path), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace('"', '\\"') + '"'
