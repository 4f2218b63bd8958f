"""The package as users get it: a wheel built from the tree, installed into a fresh virtualenv; the
Dockerfile lint-clean. (CI has no Docker engine, so the image itself is not built here.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out, REPO)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("jupyterhub_activity_culler-*.whl")
    return path


def test_the_wheel_holds_the_package_and_its_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "jupyterhub-activity-culler = culler.cli:main" in archive.read(entry_points).decode()
    assert "culler/cli/__init__.py" in names and "culler/adapters/probes/treescan.py" in names
    for room in ("policy", "core", "adapters", "engine", "observers", "web"):
        assert f"culler/{room}/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "devtools/"))]


def test_a_fresh_virtualenv_runs_the_installed_cli(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    installed = run(bin_dir / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]
    helped = run(bin_dir / "jupyterhub-activity-culler", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--cull-every" in helped.stdout
    checked = run(bin_dir / "jupyterhub-activity-culler", "policy", "check", REPO / "policies" / "default.yaml")
    assert checked.returncode == 0 and checked.stdout.startswith("ok:"), checked.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    rejected = run(bin_dir / "jupyterhub-activity-culler", "policy", "check", bad)
    assert rejected.returncode == 1 and "unsupported version" in rejected.stderr


def test_the_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    linted = run(hadolint, REPO / "Dockerfile")
    assert linted.returncode == 0, linted.stdout + linted.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "USER ${UID}" in text and "policies/default.yaml" in text
