"""policy check --profile-list: a lab's profile list read as KubeSpawner reads it, each choice's rule, warnings.

KubeSpawner itself (PyPI jupyterhub-kubespawner) is the reference: a real ``KubeSpawner`` with a dummy
kubeconfig (nothing is contacted) initializes the profile list, renders its form, turns form data into
``user_options`` and validates them, and our table must agree with what our rules decide for those.
"""

from __future__ import annotations

import copy
import html.parser
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from culler.core.decide import evaluate
from culler.core.profiles import (
    FREE_FORM,
    MAX_COMBINATIONS,
    ProfileListError,
    combinations,
    find_profile_list,
    judge,
    read_profiles,
    simple_slug,
    table,
    user_options,
)
from culler.core.snapshot import ServerSnapshot
from culler.policy.model import load_policy, parse_policy
from culler.policy.options import UNLISTED_SUFFIX

kubespawner = pytest.importorskip("kubespawner")
slugify = pytest.importorskip("slugify").slugify

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "deploy" / "z2jh" / "gpu-lab-profiles.yaml"
POLICY = ROOT / "policies" / "examples" / "gpu-lab.yaml"
TYPED = "NVIDIA-L40S"  # what a user types under "Other..." (the example's validation regex allows it)
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def lab_profiles() -> list[dict[str, Any]]:
    return yaml.safe_load(PROFILES.read_text())["singleuser"]["profileList"]


@pytest.fixture
async def spawner(kubeconfig):
    """A real KubeSpawner (its form and option code) with the lab's profile list."""
    made = kubespawner.KubeSpawner(_mock=True)
    made.profile_list = lab_profiles()
    return made


class FormFields(html.parser.HTMLParser):
    """The profile radios, each <select>'s option values and the free-form inputs of a rendered form."""

    def __init__(self) -> None:
        super().__init__()
        self.profiles: list[str] = []
        self.selects: dict[str, list[str]] = {}
        self.free_form: list[str] = []
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("name") == "profile":
            self.profiles.append(str(found["value"]))
        elif tag == "input" and found.get("data-name", "").endswith(UNLISTED_SUFFIX):
            self.free_form.append(str(found["data-name"]))
        elif tag == "select":
            self._select = str(found["name"])
            self.selects[self._select] = []
        elif tag == "option" and self._select:
            self.selects[self._select].append(str(found["value"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def test_the_profile_list_reads_as_kubespawner_renders_it(spawner):
    profiles = read_profiles(lab_profiles(), slugify)
    form = FormFields()
    form.feed(spawner.options_form)
    assert [p.slug for p in profiles] == form.profiles == ["pytorch-env", "tf"]
    ours = {
        f"profile-option-{p.slug}--{o.key}": [c.key or "unlisted-choice" for c in o.choices]
        for p in profiles
        for o in p.options
    }
    assert ours == form.selects
    assert form.free_form == [
        "profile-option-pytorch-env--gpu--unlisted-choice",
        "profile-option-tf--gpu--unlisted-choice",
    ]
    initialized = spawner._get_initialized_profile_list(lab_profiles())
    for profile, reference in zip(profiles, initialized, strict=True):
        assert profile.default == bool(reference.get("default"))
        for option in profile.options:
            choices = reference["profile_options"][option.key]["choices"]
            assert option.default is not None
            assert [c.key for c in option.choices if c.default] == [k for k, c in choices.items() if c.get("default")]


def form_data(profile_slug: str, picks) -> dict[str, list[str]]:
    """What the browser submits: every profile's selects, the chosen radio; "Other..." renamed by the page."""
    data: dict[str, list[str]] = {"profile": [profile_slug]}
    for profile in read_profiles(lab_profiles(), slugify):
        for option in profile.options:
            default = option.default
            data[f"profile-option-{profile.slug}--{option.key}"] = [default.key or "" if default else ""]
    for option, choice in picks:
        field = f"profile-option-{profile_slug}--{option.key}"
        if choice.key is None:
            del data[field]
            data[field + UNLISTED_SUFFIX] = [TYPED]
        else:
            data[field] = [choice.key]
    return data


async def test_every_row_is_what_kubespawner_stores_and_what_our_rules_decide(spawner):
    policy = load_policy(POLICY)
    report = judge(policy, read_profiles(lab_profiles(), slugify))
    assert len(report.rows) == report.combinations == 16
    for row in report.rows:
        stored = spawner._options_from_form(form_data(row.profile.slug, row.picks))
        expected = {k: (TYPED if v == FREE_FORM else v) for k, v in row.user_options.items()}
        assert stored == expected
        spawner.user_options = stored
        await spawner.load_user_options()  # KubeSpawner accepts it (choice keys, the free-form regex)
        server = ServerSnapshot("u", "", False, (), NOW, NOW, None, True, user_options=stored)
        decision = evaluate(policy, server, NOW)
        assert decision.rule_id == row.rule_id, (row.user_options, decision.reason)
    gpu = {r.rule_id for r in report.rows if r.user_options.get("gpu") != "none"}
    assert gpu == {"gpu"}
    assert {r.rule_id for r in report.rows if r.user_options.get("gpu") == "none"} == {"default"}
    assert all(r.before == ("groups lab-staff: staff (exempt)",) for r in report.rows)


def test_the_example_lab_checks_clean_and_prints_its_table():
    done = subprocess.run(
        [sys.executable, "-m", "culler", "policy", "check", str(POLICY), "--profile-list", str(PROFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["PROFILE", "CHOICES", "RULE", "LIMITS", "UNLESS"]
    row = next(line for line in lines if "tf " in line and "gpu=<free-form>" in line and "large" in line)
    assert row.split()[3:10] == ["gpu", "idle", "1d,", "max", "age", "2w", "groups"]
    assert sum("default  idle 1w, max age never" in line for line in lines) == 4


def warnings_for(policy_text: str, profile_list: Any = None) -> list[str]:
    policy = parse_policy(policy_text, "p.yaml")
    return judge(policy, read_profiles(profile_list or lab_profiles(), slugify)).warnings


def test_the_old_gpu_example_is_caught():
    warnings = warnings_for(
        "version: 1\nrules:\n  - id: gpu\n    match: {user_options: {gpu_type: '*'}}\n"
        "  - id: gpu-profile\n    match: {user_options: {profile: ['gpu-*']}}\n"
    )
    assert "rules[0] (id 'gpu') matches no profile x choice of the profile list" in warnings
    assert "rules[1] (id 'gpu-profile') matches no profile x choice of the profile list" in warnings
    assert "rules[1] (id 'gpu-profile'): profile 'gpu-*' is no profile's slug (slugs: pytorch-env, tf)" in warnings
    assert (
        "rules[0] (id 'gpu'): user_options.gpu_type: no profile has an option 'gpu_type' (options: gpu, resources)"
        in warnings
    )


def test_star_on_an_option_with_a_no_gpu_default_is_flagged():
    warnings = warnings_for("version: 1\nrules:\n  - id: gpu\n    match: {user_options: {gpu: '*'}}\n    idle: 1d\n")
    assert len(warnings) == 1
    assert warnings[0].startswith("rules[0] (id 'gpu'): user_options.gpu: '*' also matches 'none' ('No GPU')")
    assert "gpu: {any_except: none}" in warnings[0]
    assert warnings_for("version: 1\nrules:\n  - id: gpu\n    match: {user_options: {gpu: {any_except: none}}}\n") == []


def test_choices_left_to_the_defaults_beside_named_ones_are_flagged():
    warnings = warnings_for("version: 1\nrules:\n  - id: a100\n    match: {user_options: {gpu: 1xa100}}\n")
    # the "none" default is the CPU case: not flagged
    tail = "is named by no rule while other gpu choices are (1xa100); it gets the defaults (idle 1w, max age never)"
    assert sorted(warnings) == [
        f"profile 'pytorch-env', gpu: a free-form value {tail}",
        f"profile 'pytorch-env', gpu: choice '2xh100' {tail}",
        f"profile 'tf', gpu: a free-form value {tail}",
        f"profile 'tf', gpu: choice '2xh100' {tail}",
    ]


def test_a_choice_named_on_another_profile_only_does_not_count():
    warnings = warnings_for(
        "version: 1\nrules:\n  - id: tf-big\n    match: {profile: tf, user_options: {resources: large}}\n"
    )
    assert warnings == [
        "profile 'tf', resources: choice 'small' is named by no rule while other resources choices are (large); "
        "it gets the defaults (idle 1w, max age never)"
    ]


def test_unknown_choices_and_free_form_keys_are_flagged():
    no_free_form = copy.deepcopy(lab_profiles())
    for profile in no_free_form:
        profile["profile_options"] = copy.deepcopy(profile["profile_options"])
        del profile["profile_options"]["gpu"]["unlisted_choice"]
    warnings = warnings_for(
        "version: 1\nrules:\n  - id: big\n"
        "    match: {user_options: {gpu: [2xh100, 4xh100], gpu--unlisted-choice: '*'}}\n",
        no_free_form,
    )
    assert (
        "rules[0] (id 'big'): user_options.gpu: '4xh100' is no choice of 'gpu' (choices: 1xa100, 2xh100, none)"
        in warnings
    )
    assert (
        "rules[0] (id 'big'): user_options.gpu--unlisted-choice: no profile's 'gpu' offers a free-form choice"
        in warnings
    )


def test_identity_rules_and_typed_text_are_shown_as_exceptions():
    policy = parse_policy(
        "version: 1\nrules:\n  - id: vip\n    match: {users: [ada], admin: true}\n    exempt: true\n"
        "  - id: l40\n    match: {user_options: {gpu: 'NVIDIA-L40*'}}\n    idle: 2d\n"
        "  - id: any-gpu\n    match: {user_options: {gpu: {any_except: none}}}\n    idle: 1d\n",
        "p.yaml",
    )
    report = judge(policy, read_profiles(lab_profiles(), slugify))
    free = next(r for r in report.rows if r.user_options.get("gpu--unlisted-choice"))
    assert free.rule_id == "any-gpu"
    assert free.before == ("users ada; admins: vip (exempt)", "if the gpu text matches: l40 (idle 2d, max age never)")
    listed = next(r for r in report.rows if r.user_options.get("gpu") == "2xh100")
    assert listed.rule_id == "any-gpu" and listed.before == ("users ada; admins: vip (exempt)",)


def test_shapes_a_profile_list_comes_in():
    listed = lab_profiles()
    assert find_profile_list({"singleuser": {"profileList": listed}})[1] == "singleuser.profileList"
    assert find_profile_list({"hub": {"config": {"KubeSpawner": {"profile_list": listed}}}})[0] == listed
    assert find_profile_list(listed)[0] == listed
    keyed = {"b-second": listed[1], "a-first": listed[0]}
    found, where = find_profile_list(keyed)
    assert where == "a KubeSpawner profile_list (dict)"
    # KubeSpawner sorts a dict's values by key, and its keys are not slugs
    assert [p.slug for p in read_profiles(found)] == ["pytorch-env", "tf"]
    with pytest.raises(ProfileListError, match=r"no singleuser.profileList"):
        find_profile_list({"singleuser": {"image": {}}})
    with pytest.raises(ProfileListError, match="display_name"):
        read_profiles([{"slug": "x"}])


def test_defaults_when_none_is_marked_follow_kubespawner(spawner):
    raw = [{"display_name": "A", "profile_options": {"size": {"display_name": "S", "choices": {"s": {}, "m": {}}}}}]
    ours = read_profiles(raw, slugify)
    reference = spawner._get_initialized_profile_list(raw)
    assert ours[0].default and reference[0]["default"]
    assert [c.key for c in ours[0].options[0].choices if c.default] == ["s"]
    assert reference[0]["profile_options"]["size"]["choices"]["s"]["default"]


@pytest.mark.parametrize("name", ["Pytorch Env", "GPU: 2 x A100 (80 GB)", "Jane's  R/Studio", "  trailing--dash- "])
def test_plain_names_slug_as_python_slugify_does(name):
    assert simple_slug(name) == slugify(name)


def test_a_name_that_is_not_ascii_and_has_no_slug_is_flagged():
    raw = [{"display_name": "Umgebung für Übungen"}, {"display_name": "B", "slug": "b"}]
    warnings = judge(parse_policy("version: 1\n", "p.yaml"), read_profiles(raw, slugify)).warnings
    assert warnings == [
        "profile 'Umgebung für Übungen' has no slug: KubeSpawner stores 'umgebung-fur-ubungen', made from its "
        "display name, which changes when the name does; give it a slug"
    ]


def test_the_enumeration_is_bounded():
    choices = {f"c{i}": {"display_name": str(i)} for i in range(10)}
    options = {f"o{i}": {"display_name": str(i), "choices": choices} for i in range(5)}  # 100,000 rows
    report = judge(
        parse_policy("version: 1\n", "p.yaml"), read_profiles([{"display_name": "X", "profile_options": options}])
    )
    assert len(report.rows) == MAX_COMBINATIONS and report.combinations == 100_000
    assert report.warnings[0] == (
        "the profile list has 100,000 profile x choice combinations; only the first 10,000 were checked"
    )
    lines = table(report, max_rows=5)
    assert len(lines) == 7 and lines[-1] == "... 9,995 more rows not shown"


def test_free_form_rows_store_the_unlisted_key_only():
    profiles = read_profiles(lab_profiles(), slugify)
    rows = [user_options(p, picks) for p, picks in combinations(profiles)]
    free = [r for r in rows if "gpu--unlisted-choice" in r]
    assert len(free) == 4 and all("gpu" not in r for r in free)
