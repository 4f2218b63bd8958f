"""The probe's distribution: built from extension/, it needs jupyter-server only and enables itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_depends_on_jupyter_server_only_and_ships_its_enabling_config(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT / "extension")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("jupyterhub_activity_culler_probe-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires == ["jupyter-server>=2.13"]
    assert any(n.endswith("etc/jupyter/jupyter_server_config.d/activity_culler_probe.json") for n in names)
    assert not [n for n in names if n.startswith("culler/")]  # none of the service comes along


def test_the_user_image_example_installs_this_extension_and_is_hadolint_clean() -> None:
    dockerfile = ROOT / "deploy" / "z2jh" / "probe-user-image.Dockerfile"
    text = dockerfile.read_text()
    assert "COPY --chown=1000:100 extension " in text and (ROOT / "extension" / "pyproject.toml").exists()
    assert "pip install --no-cache-dir /tmp/activity-culler-probe" in text
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    linted = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert linted.returncode == 0, linted.stdout + linted.stderr
