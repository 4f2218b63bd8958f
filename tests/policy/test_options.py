"""Option criteria as KubeSpawner's form stores user_options: choices, free-form values, negation, profiles."""

import pytest
import yaml

from culler.core.decide import match
from culler.core.snapshot import ServerSnapshot
from culler.policy.model import Match, PolicyError, parse_policy, policy_schema, shadowed_rules
from culler.policy.options import OptionMatch

# What KubeSpawner 7's form stores (../shared/kubespawner.md): every option of the chosen profile with
# its choice key, defaults included; "Other..." only as <option>--unlisted-choice.
CPU = {"profile": "pytorch-env", "resources": "small", "gpu": "none"}
GPU = {"profile": "pytorch-env", "resources": "large", "gpu": "2xh100"}
OTHER = {"profile": "pytorch-env", "resources": "small", "gpu--unlisted-choice": "NVIDIA-L40S"}
TF = {"profile": "tf", "resources": "large", "gpu": "1xa100"}
REST = {"gpu_count": 0}  # a REST spawn may send JSON numbers


def server(options):
    return ServerSnapshot("alice", "", False, (), None, None, None, True, user_options=options)


def criterion(text):
    return OptionMatch.model_validate(text)


@pytest.mark.parametrize(
    ("written", "matched"),
    [
        ("*", {"CPU", "GPU", "OTHER", "TF"}),  # any value, free-form included ("No GPU" too: see any_except)
        ({"any_except": "none"}, {"GPU", "OTHER", "TF"}),
        ({"any_except": ["none", "1x*"]}, {"GPU", "OTHER"}),
        (["2xh100", "1xa100"], {"GPU", "TF"}),
        ({"free_form": True}, {"OTHER"}),
        ({"any_except": "none", "free_form": False}, {"GPU", "TF"}),
        ({"any_of": "*h100", "free_form": False}, {"GPU"}),
        ("NVIDIA-*", {"OTHER"}),
    ],
)
def test_gpu_criteria_on_the_forms_options(written, matched):
    cases = {"CPU": CPU, "GPU": GPU, "OTHER": OTHER, "TF": TF}
    found = {name for name, options in cases.items() if criterion(written).matches(options, "gpu")}
    assert found == matched


def test_an_absent_option_never_matches_not_even_any_except():
    assert not criterion({"any_except": "none"}).matches({"profile": "tf"}, "gpu")
    assert not criterion("*").matches({"gpu": None}, "gpu")


def test_an_empty_free_form_value_is_not_a_value():
    # KubeSpawner applies the unlisted choice only when it is non-empty; the listed choice stands
    assert criterion({"free_form": False}).matches({"gpu": "none", "gpu--unlisted-choice": ""}, "gpu")
    assert not criterion({"free_form": True}).matches({"gpu--unlisted-choice": ""}, "gpu")


def test_a_free_form_value_wins_over_a_listed_choice_as_in_kubespawner():
    both = {"gpu": "none", "gpu--unlisted-choice": "A100"}
    assert criterion({"any_except": "none"}).matches(both, "gpu")
    assert not criterion("none").matches(both, "gpu")


def test_typed_values_match_only_their_own_type():
    assert criterion(0).matches(REST, "gpu_count")
    assert not criterion(0).matches({"gpu_count": "0"}, "gpu_count")  # the form's string
    assert criterion("0").matches(REST, "gpu_count")  # a glob reads the text
    assert not criterion(False).matches(REST, "gpu_count")  # False == 0 in Python, not here


def test_the_unlisted_key_itself_still_works_as_a_plain_key():
    policy = parse_policy(
        "version: 1\nrules:\n  - id: other\n    match: {user_options: {gpu--unlisted-choice: '*'}}\n", "p.yaml"
    )
    assert match(policy.rules[0].match, server(OTHER)) and not match(policy.rules[0].match, server(GPU))


def test_profile_is_a_match_key_for_the_slug():
    policy = parse_policy(
        "version: 1\nrules:\n  - id: gpu\n    match:\n      profile: [pytorch-env, 'tf*']\n"
        "      user_options: {gpu: {any_except: none}}\n",
        "p.yaml",
    )
    rule = policy.rules[0].match
    assert rule.profile == ["pytorch-env", "tf*"]
    assert [bool(match(rule, server(o))) for o in (CPU, GPU, OTHER, TF)] == [False, True, True, True]
    assert not match(rule, server({"gpu": "2xh100"}))  # no profile: not a profile-list spawn
    assert not match(Match(profile=["*"]), server({}))


def test_profile_said_twice_is_an_error():
    with pytest.raises(PolicyError) as caught:
        parse_policy("version: 1\nrules:\n  - match: {profile: a, user_options: {profile: b}}\n", "p.yaml")
    assert caught.value.errors == [
        "p.yaml: rules[0] (id 'rule-1'): match: say the profile once: 'profile' or 'user_options.profile', not both"
    ]


@pytest.mark.parametrize(
    ("written", "error"),
    [
        ("{}", "give any_of, any_except or free_form"),
        ("{any_except: []}", "an empty list matches nothing"),
        ("[]", "an empty list matches nothing"),
        ("{not: none}", "match.user_options.gpu.not: Extra inputs are not permitted"),
        ("{free_form: maybe}", "match.user_options.gpu.free_form: Input should be a valid boolean"),
    ],
)
def test_bad_criteria_name_the_field(written, error):
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"version: 1\nrules:\n  - id: g\n    match: {{user_options: {{gpu: {written}}}}}\n", "p.yaml")
    assert any(error in line for line in caught.value.errors), caught.value.errors
    assert all(line.startswith("p.yaml: rules[0] (id 'g'): match.user_options.gpu") for line in caught.value.errors)


@pytest.mark.parametrize(
    ("wide", "narrow", "covers"),
    [
        ("*", {"any_except": "none"}, True),
        ({"any_except": "none"}, ["1xa100", "2xh100"], True),
        ({"any_except": "none"}, ["none", "1xa100"], False),
        ({"any_except": "none"}, ["1x*"], False),  # a glob: unsure, so not reported
        ({"any_except": "none"}, {"any_except": ["none", "1x*"]}, True),
        ({"any_except": ["none", "1x*"]}, {"any_except": "none"}, False),
        (["1x*"], {"any_except": "none"}, False),
        ({"free_form": True}, {"any_of": "*", "free_form": True}, True),
        ({"free_form": True}, "*", False),
        ("*", {"free_form": True}, True),
    ],
)
def test_coverage_of_option_criteria(wide, narrow, covers):
    assert criterion(wide).covers(criterion(narrow)) is covers


def test_a_rule_behind_a_wider_option_rule_is_reported_shadowed():
    policy = parse_policy(
        "version: 1\nrules:\n  - id: any-gpu\n    match: {user_options: {gpu: {any_except: none}}}\n"
        "  - id: h100\n    match: {profile: tf, user_options: {gpu: 2xh100}}\n"
        "  - id: cpu\n    match: {user_options: {gpu: none}}\n",
        "p.yaml",
    )
    assert shadowed_rules(policy) == [
        "rules[1] (id 'h100') can never match: rule 'any-gpu' comes first and matches every server it would"
    ]


def test_a_profile_rule_shadows_an_option_rule_on_the_same_profile():
    policy = parse_policy(
        "version: 1\nrules:\n  - id: tf\n    match: {profile: 'tf*'}\n"
        "  - id: tf-gpu\n    match: {user_options: {profile: tf, gpu: '*'}}\n",
        "p.yaml",
    )
    assert len(shadowed_rules(policy)) == 1


SCHEMA_CASES = [
    ("*", True),
    (["1xa100", "2xh100"], True),
    ({"any_except": "none"}, True),
    ({"any_except": ["none"], "free_form": False}, True),
    ({"free_form": True}, True),
    ({}, False),
    ({"not": "none"}, False),
    ([], False),
]


@pytest.mark.parametrize(("written", "valid"), SCHEMA_CASES)
def test_the_json_schema_follows_the_criteria(written, valid):
    jsonschema = pytest.importorskip("jsonschema")
    schema = policy_schema()
    document = {"version": 1, "rules": [{"match": {"profile": "tf", "user_options": {"gpu": written}}}]}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(document))
    assert (not errors) is valid, errors
    # and the loader agrees with the schema
    text = yaml.safe_dump(document)
    if valid:
        parse_policy(text, "p.yaml")
    else:
        with pytest.raises(PolicyError):
            parse_policy(text, "p.yaml")
