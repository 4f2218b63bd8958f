"""The policy store: last good policy kept, every way of replacing a file noticed, rejections logged once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from culler.adapters.policy_store import PolicyStore
from culler.policy.model import Policy

GOOD = "version: 1\ndefaults:\n  idle: 1h\n"
BETTER = "version: 1\ndefaults:\n  idle: 2h\n"
BAD = "version: 1\ndefaults:\n  idle: soon\n"
WORSE = "version: 2\n"


def rejections(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "culler.policy" and r.getMessage() == "policy rejected"]


def loads(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage() in ("policy loaded", "policy reloaded")]


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    return path


def test_a_valid_file_loads(policy_file: Path) -> None:
    state = PolicyStore(path=policy_file).refresh()
    assert state.policy is not None
    assert state.policy.defaults.idle == 3600
    assert state.error is None
    assert state.hash and state.source == str(policy_file)


def test_an_invalid_edit_keeps_the_last_good_policy(policy_file: Path) -> None:
    store = PolicyStore(path=policy_file)
    good = store.refresh()
    policy_file.write_text(BAD)
    state = store.refresh()
    assert state.policy is good.policy
    assert state.hash == good.hash
    assert state.error is not None and str(policy_file) in state.error and "idle" in state.error


def test_fixing_the_file_brings_the_new_policy(policy_file: Path) -> None:
    store = PolicyStore(path=policy_file)
    good = store.refresh()
    policy_file.write_text(BAD)
    store.refresh()
    policy_file.write_text(BETTER)
    state = store.refresh()
    assert state.error is None
    assert state.policy is not None and state.policy.defaults.idle == 7200
    assert state.hash != good.hash


def test_invalid_at_start_means_no_policy(policy_file: Path) -> None:
    policy_file.write_text(BAD)
    state = PolicyStore(path=policy_file).refresh()
    assert state.policy is None
    assert state.hash is None
    assert state.error is not None and "idle" in state.error


def test_a_missing_file_at_start_means_no_policy(tmp_path: Path) -> None:
    state = PolicyStore(path=tmp_path / "absent.yaml").refresh()
    assert state.policy is None
    assert state.error is not None and "cannot read" in state.error


def test_bytes_that_are_not_utf8_are_rejected_not_raised(policy_file: Path) -> None:
    store = PolicyStore(path=policy_file)
    good = store.refresh()
    policy_file.write_bytes(b"version: 1\ndefaults:\n  idle: \xff\xfe\n")
    state = store.refresh()
    assert state.policy is good.policy
    assert state.error is not None and "UTF-8" in state.error


def test_an_atomic_replace_is_picked_up(policy_file: Path) -> None:
    store = PolicyStore(path=policy_file)
    store.refresh()
    staged = policy_file.with_name(".policy.yaml.tmp")
    staged.write_text(BETTER)
    os.replace(staged, policy_file)
    state = store.refresh()
    assert state.policy is not None and state.policy.defaults.idle == 7200


def _configmap_version(root: Path, name: str, text: str) -> Path:
    version = root / name
    version.mkdir()
    (version / "policy.yaml").write_text(text)
    return version


def _point_data_at(root: Path, version: Path) -> None:
    """What the kubelet does: a new ``..data`` symlink renamed over the old one, atomically."""
    staged = root / "..data_tmp"
    staged.symlink_to(version.name)
    os.replace(staged, root / "..data")


def test_a_configmap_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    root = tmp_path / "configmap"
    root.mkdir()
    first = _configmap_version(root, "..2025_06_01_12_00_00.1", GOOD)
    (root / "..data").symlink_to(first.name)
    (root / "policy.yaml").symlink_to("..data/policy.yaml")
    store = PolicyStore(path=root / "policy.yaml")
    assert store.refresh().policy is not None
    assert store.state.policy is not None and store.state.policy.defaults.idle == 3600

    second = _configmap_version(root, "..2025_06_01_12_05_00.2", BETTER)
    _point_data_at(root, second)
    for child in first.iterdir():
        child.unlink()
    first.rmdir()
    state = store.refresh()
    assert state.error is None
    assert state.policy is not None and state.policy.defaults.idle == 7200

    third = _configmap_version(root, "..2025_06_01_12_10_00.3", BAD)
    _point_data_at(root, third)
    state = store.refresh()
    assert state.policy is not None and state.policy.defaults.idle == 7200
    assert state.error is not None


def test_the_rejection_is_logged_once(policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="culler.policy")
    store = PolicyStore(path=policy_file)
    store.refresh()
    policy_file.write_text(BAD)
    for _ in range(5):
        store.refresh()
    assert len(rejections(caplog)) == 1
    policy_file.write_text(WORSE)  # a different problem is news
    for _ in range(3):
        store.refresh()
    assert len(rejections(caplog)) == 2
    assert "unsupported version" in store.state.error if store.state.error else False


def test_an_unreadable_file_is_logged_once_and_recovers(policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="culler.policy")
    store = PolicyStore(path=policy_file)
    good = store.refresh()
    policy_file.unlink()
    for _ in range(3):
        state = store.refresh()
    assert state.policy is good.policy and state.error is not None
    assert len(rejections(caplog)) == 1
    policy_file.write_text(GOOD)
    state = store.refresh()
    assert state.error is None and state.policy is not None


def test_loads_are_logged_only_on_change(policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="culler.policy")
    store = PolicyStore(path=policy_file)
    store.refresh()
    policy_file.write_text(GOOD)  # same content, new mtime
    store.refresh()
    policy_file.write_text(BETTER)
    store.refresh()
    store.refresh()
    assert loads(caplog) == ["policy loaded", "policy reloaded"]


def test_a_fixed_policy_never_changes() -> None:
    fixed = Policy.model_validate({"version": 1})
    store = PolicyStore(fixed=fixed)
    state = store.refresh()
    assert state.policy is fixed and state.error is None and state.hash
    assert state.source == "command-line flags"


def test_exactly_one_source_is_required(policy_file: Path) -> None:
    with pytest.raises(ValueError):
        PolicyStore()
    with pytest.raises(ValueError):
        PolicyStore(path=policy_file, fixed=Policy.model_validate({"version": 1}))
