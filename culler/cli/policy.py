"""``policy check FILE...`` and ``policy schema``: no hub, no HTTP client, no scheduler, no metrics."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from culler.adapters.plugins import installed_plugins
from culler.cli.flags import PROG
from culler.core.names import Template
from culler.core.profiles import Profile, ProfileListError, find_profile_list, judge, read_profiles, table
from culler.policy.durations import format_duration
from culler.policy.model import (
    PolicyError,
    load_policy,
    policy_hash,
    policy_schema,
    shadowed_rules,
    trusting_servers,
    typed_option_values,
    unconfigured_probes,
)
from culler.settings import Settings


def policy_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} policy")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate policy files; non-zero exit on any error")
    check.add_argument("files", nargs="+", type=Path)
    check.add_argument(
        "--profile-list",
        type=Path,
        metavar="FILE",
        help="a Zero to JupyterHub values file (singleuser.profileList) or a KubeSpawner profile_list "
        "(YAML or JSON): print which rule decides each profile x choice, and warn about rules that miss",
    )
    schema = sub.add_parser("schema", help="print the policy file's JSON Schema")
    schema.add_argument("--output", "-o", type=Path)
    args = parser.parse_args(argv)
    if args.command == "schema":
        text = json.dumps(policy_schema(), indent=2) + "\n"
        if args.output:
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    return check_policies(args.files, args.profile_list)


TEMPLATE_SETTINGS = ("tree_scan_path", "prometheus_query")


def _environment_check() -> tuple[list[str] | None, list[str], list[str]]:
    """What this environment's CULLER_* settings say for a policy check: the probes they configure (None:
    the settings don't validate), errors in probe templates a service would refuse, and warnings."""
    try:
        settings = Settings()
    except ValidationError as error:
        problems = [
            f"CULLER_{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
            if e["loc"] and e["loc"][0] in TEMPLATE_SETTINGS
        ]
        return None, problems, []
    warnings = []
    if settings.tree_scan_path:
        root = Template(settings.tree_scan_path, settings.slug_scheme).root()
        if not os.path.isdir(root):
            warnings.append(
                f"CULLER_TREE_SCAN_PATH: the root {root} does not exist here (where the homes are mounted?)"
            )
    return settings.configured_probes(), [], warnings


def check_policies(files: Sequence[Path], profile_list: Path | None = None) -> int:
    plugins = sorted(installed_plugins())
    configured, problems, setup_warnings = _environment_check()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    for warning in setup_warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        profiles = load_profiles(profile_list) if profile_list else None
    except ProfileListError as error:
        print(f"error: {profile_list}: {error}", file=sys.stderr)
        return 1
    failed = bool(problems)
    for path in files:
        try:
            policy = load_policy(path, plugins)
        except PolicyError as error:
            failed = True
            for line in error.errors:
                print(f"error: {line}", file=sys.stderr)
            continue
        warnings = shadowed_rules(policy) + unconfigured_probes(policy, configured) + typed_option_values(policy)
        warnings += trusting_servers(policy)
        if profiles is not None:
            report = judge(policy, profiles)
            print(f"{path} with the profile list {profile_list} ('*': the default):")
            print("\n".join("  " + line for line in table(report)))
            warnings += report.warnings
        for warning in warnings:
            print(f"warning: {path}: {warning}", file=sys.stderr)
        idle = format_duration(policy.defaults.idle)
        print(f"ok: {path}: {len(policy.rules)} rule(s), default idle {idle}, hash {policy_hash(path.read_bytes())}")
    return 1 if failed else 0


def load_profiles(path: Path) -> list[Profile]:
    """A profile list file, normalized with KubeSpawner's own slugify when it is installed."""
    try:
        raw = yaml.safe_load(path.read_text())  # JSON is YAML
    except (OSError, yaml.YAMLError) as error:
        raise ProfileListError(f"cannot read: {' '.join(str(error).split())}") from error
    found, _ = find_profile_list(raw)
    try:
        from slugify import slugify  # python-slugify, which KubeSpawner uses for missing slugs
    except ImportError:
        return read_profiles(found)
    return read_profiles(found, slugify)
