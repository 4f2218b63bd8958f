"""A lab's KubeSpawner profile list against a policy: which rule decides each spawn-form choice (pure).

Reads ``singleuser.profileList`` of a Zero-to-JupyterHub values file (or its
``hub.config.KubeSpawner.profile_list``), or KubeSpawner's ``profile_list`` in its list or dict shape,
and normalizes it as KubeSpawner's ``_get_initialized_profile_list`` does: a missing slug comes from
``display_name``, the first choice is the default when none is marked, the first profile likewise.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from culler.policy.durations import format_duration
from culler.policy.model import DEFAULT_RULE_ID, Match, Policy, Rule
from culler.policy.options import UNLISTED_SUFFIX, OptionMatch, is_literal, value_matches

MAX_COMBINATIONS = 10_000  # profile x choice rows judged; beyond this the check says what it skipped
FREE_FORM = "<free-form>"  # the text standing in for whatever a user types under "Other..."
NONE_LIKE = re.compile(r"^(none|no|off|false|0|cpu|cpu[- ]only|disabled?|no[- _]?gpus?)$", re.IGNORECASE)

Slugify = Callable[[str], str]


class ProfileListError(ValueError):
    """A file that holds no profile list we can read; the message says what was expected."""


@dataclass(frozen=True)
class Choice:
    key: str | None  # None: the free-form ("Other...") choice
    display_name: str
    default: bool = False

    @property
    def label(self) -> str:
        return FREE_FORM if self.key is None else self.key


@dataclass(frozen=True)
class Option:
    key: str
    display_name: str
    choices: tuple[Choice, ...]  # the free-form choice last, when enabled

    @property
    def default(self) -> Choice | None:
        return next((c for c in self.choices if c.default), None)


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    default: bool
    options: tuple[Option, ...]
    slug_generated: bool = False


def simple_slug(text: str) -> str:
    """python-slugify's result for plain names (KubeSpawner's own slugify is used when installed)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def find_profile_list(raw: Any) -> tuple[Any, str]:
    """The profile list in a loaded file, and where it was found."""
    if isinstance(raw, list):
        return raw, "a KubeSpawner profile_list (list)"
    if not isinstance(raw, dict):
        raise ProfileListError("expected a Zero-to-JupyterHub values file or a KubeSpawner profile_list")
    singleuser = raw.get("singleuser")
    if isinstance(singleuser, dict) and singleuser.get("profileList"):
        return singleuser["profileList"], "singleuser.profileList"
    config = ((raw.get("hub") or {}).get("config") or {}).get("KubeSpawner") or {}
    if isinstance(config, dict) and config.get("profile_list"):
        return config["profile_list"], "hub.config.KubeSpawner.profile_list"
    if "profile_list" in raw:
        return raw["profile_list"], "profile_list"
    if raw and all(isinstance(v, dict) and "display_name" in v for v in raw.values()):
        return raw, "a KubeSpawner profile_list (dict)"
    raise ProfileListError("no singleuser.profileList, hub.config.KubeSpawner.profile_list or profile_list found")


def read_profiles(raw: Any, slugify: Slugify = simple_slug) -> list[Profile]:
    """Profiles as KubeSpawner initializes them (a dict shape is sorted by key, as KubeSpawner does)."""
    items = [raw[key] for key in sorted(raw)] if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise ProfileListError("the profile list is empty or not a list")
    profiles = [_profile(item, index, slugify) for index, item in enumerate(items)]
    if not any(p.default for p in profiles):
        profiles[0] = Profile(
            profiles[0].slug, profiles[0].display_name, True, profiles[0].options, profiles[0].slug_generated
        )
    return profiles


def _profile(item: Any, index: int, slugify: Slugify) -> Profile:
    if not isinstance(item, dict) or not isinstance(item.get("display_name"), str):
        raise ProfileListError(f"profile {index + 1}: expected a mapping with a display_name")
    slug = item.get("slug")
    options = item.get("profile_options") or {}
    if not isinstance(options, dict):
        raise ProfileListError(f"profile {item['display_name']!r}: profile_options must be a mapping")
    return Profile(
        slug=str(slug) if slug else slugify(item["display_name"]),
        display_name=item["display_name"],
        default=bool(item.get("default")),
        options=tuple(_option(str(key), spec, item["display_name"]) for key, spec in options.items()),
        slug_generated=not slug,
    )


def _option(key: str, spec: Any, profile: str) -> Option:
    if not isinstance(spec, dict):
        raise ProfileListError(f"profile {profile!r}, option {key!r}: expected a mapping")
    raw_choices = spec.get("choices") or {}
    if not isinstance(raw_choices, dict):
        raise ProfileListError(f"profile {profile!r}, option {key!r}: choices must be a mapping")
    marked = any(isinstance(c, dict) and c.get("default") for c in raw_choices.values())
    choices = [
        Choice(
            str(name),
            str((c or {}).get("display_name", name)),
            bool((c or {}).get("default")) or (not marked and i == 0),
        )
        for i, (name, c) in enumerate(raw_choices.items())
    ]
    unlisted = spec.get("unlisted_choice") or {}
    if isinstance(unlisted, dict) and unlisted.get("enabled"):
        choices.append(Choice(None, str(unlisted.get("display_name_in_choices", "Other..."))))
    return Option(key, str(spec.get("display_name", key)), tuple(choices))


# -- judging every profile x choice ---------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One way to fill in the form, the rule that decides it, and rules that may decide it instead."""

    profile: Profile
    picks: tuple[tuple[Option, Choice], ...]
    rule: Rule | None  # None: the policy's defaults
    limits: str  # "exempt", or "idle 1d, max age 14d"
    before: tuple[str, ...] = ()  # earlier rules that decide instead for some users or texts

    @property
    def user_options(self) -> dict[str, str]:
        return user_options(self.profile, self.picks)

    @property
    def rule_id(self) -> str:
        return self.rule.id if self.rule else DEFAULT_RULE_ID


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    combinations: int = 0  # all there are, judged or not
    warnings: list[str] = field(default_factory=list)


def user_options(profile: Profile, picks: tuple[tuple[Option, Choice], ...]) -> dict[str, str]:
    """What KubeSpawner's form stores for these picks."""
    stored = {"profile": profile.slug}
    for option, choice in picks:
        if choice.key is None:
            stored[option.key + UNLISTED_SUFFIX] = FREE_FORM
        else:
            stored[option.key] = choice.key
    return stored


def combinations(profiles: list[Profile]) -> Iterator[tuple[Profile, tuple[tuple[Option, Choice], ...]]]:
    for profile in profiles:
        lists = [[(option, choice) for choice in option.choices] for option in profile.options if option.choices]
        for picks in itertools.product(*lists):
            yield profile, tuple(picks)


def count_combinations(profiles: list[Profile]) -> int:
    total = 0
    for profile in profiles:
        count = 1
        for option in profile.options:
            count *= max(1, len(option.choices))
        total += count
    return total


def judge(policy: Policy, profiles: list[Profile]) -> Report:
    """Every profile x choice (bounded by MAX_COMBINATIONS) with its deciding rule, and the warnings."""
    report = Report(combinations=count_combinations(profiles))
    for profile, picks in _bounded(profiles):
        report.rows.append(_row(policy, profile, picks))
    if report.combinations > len(report.rows):
        report.warnings.append(
            f"the profile list has {report.combinations:,} profile x choice combinations; "
            f"only the first {len(report.rows):,} were checked"
        )
    report.warnings += list_warnings(policy, profiles, report.rows)
    return report


def _row(policy: Policy, profile: Profile, picks: tuple[tuple[Option, Choice], ...]) -> Row:
    stored = user_options(profile, picks)
    free = {option.key for option, choice in picks if choice.key is None}
    before: list[str] = []
    for rule in policy.rules:
        verdict, why = _rule_applies(rule, stored, free)
        if verdict is False:
            continue
        if verdict is None or rule.plugin:
            before.append(f"{why or f'plugin {rule.plugin!r} may decide'}: {rule.id} ({_limits(policy, rule)})")
            continue
        return Row(profile, picks, rule, _limits(policy, rule), tuple(before))
    return Row(profile, picks, None, _limits(policy, None), tuple(before))


def _rule_applies(rule: Rule, stored: Mapping[str, str], free: set[str]) -> tuple[bool | None, str]:
    """True/False for this form's options; None when it also depends on who or on a typed text."""
    criteria = rule.match or Match()
    unsure: list[str] = []
    for key, criterion in criteria.options().items():
        base = key.removesuffix(UNLISTED_SUFFIX)
        if base in free and (text_dependent := _depends_on_text(criterion, key != base)):
            unsure.append(text_dependent.format(option=base))
        elif not criterion.matches(stored, key):
            return False, ""
    who = [
        f"{name} {', '.join(_shown(v) for v in value)}"
        for name in ("users", "groups", "servers")
        if (value := getattr(criteria, name)) is not None
    ]
    if criteria.admin is not None:
        who.append("admins" if criteria.admin else "non-admins")
    unsure += who
    return (None, "; ".join(unsure)) if unsure else (True, "")


def _shown(name: str) -> str:
    return name or '""'  # the default server's empty name


def _depends_on_text(criterion: OptionMatch, on_unlisted_key: bool) -> str:
    """'' when a free-form value's text does not change the criterion's answer; else what it depends on."""
    if criterion.free_form is False and not on_unlisted_key:
        return ""
    patterns = criterion.any_of if criterion.any_of is not None else []
    if any(p != "*" for p in patterns) or not all(is_literal(p) for p in criterion.any_except or []):
        return "if the {option} text matches"
    return ""


def _limits(policy: Policy, rule: Rule | None) -> str:
    if rule is not None and rule.exempt:
        return "exempt"
    idle = rule.idle if rule and rule.idle is not None else policy.defaults.idle
    max_age = rule.max_age if rule and rule.max_age is not None else policy.defaults.max_age
    return f"idle {format_duration(idle)}, max age {format_duration(max_age)}"


def _may_match(rule: Rule, profile: Profile, picks: tuple[tuple[Option, Choice], ...]) -> bool:
    free = {option.key for option, choice in picks if choice.key is None}
    return _rule_applies(rule, user_options(profile, picks), free)[0] is not False


def _bounded(profiles: list[Profile]) -> Iterator[tuple[Profile, tuple[tuple[Option, Choice], ...]]]:
    return itertools.islice(combinations(profiles), MAX_COMBINATIONS)


# -- warnings ---------------------------------------------------------------------------------------


def list_warnings(policy: Policy, profiles: list[Profile], rows: list[Row]) -> list[str]:
    return (
        _unused_rules(policy, profiles)
        + _unknown_keys(policy, profiles)
        + _star_on_none(policy, profiles)
        + _uncovered_choices(policy, profiles, rows)
        + _generated_slugs(profiles)
    )


def _where(index: int, rule: Rule) -> str:
    return f"rules[{index}] (id {rule.id!r})"


def _unused_rules(policy: Policy, profiles: list[Profile]) -> list[str]:
    warnings = []
    for index, rule in enumerate(policy.rules):
        if (
            rule.match
            and rule.match.options()
            and not any(_may_match(rule, p, picks) for p, picks in _bounded(profiles))
        ):
            warnings.append(f"{_where(index, rule)} matches no profile x choice of the profile list")
    slugs = [p.slug for p in profiles]
    for index, rule in enumerate(policy.rules):
        criterion = rule.match.options().get("profile") if rule.match else None
        for pattern in criterion.patterns() if criterion else []:
            if not any(value_matches(pattern, slug) for slug in slugs):
                warnings.append(
                    f"{_where(index, rule)}: profile {pattern!r} is no profile's slug (slugs: {', '.join(slugs)})"
                )
    return warnings


def _options_by_key(profiles: list[Profile]) -> dict[str, list[tuple[Profile, Option]]]:
    found: dict[str, list[tuple[Profile, Option]]] = {}
    for profile in profiles:
        for option in profile.options:
            found.setdefault(option.key, []).append((profile, option))
    return found


def _unknown_keys(policy: Policy, profiles: list[Profile]) -> list[str]:
    known = _options_by_key(profiles)
    warnings = []
    for index, rule in enumerate(policy.rules):
        for key, criterion in (rule.match.options() if rule.match else {}).items():
            if key == "profile":
                continue
            base = key.removesuffix(UNLISTED_SUFFIX)
            owners = known.get(base, [])
            if not owners:
                warnings.append(
                    f"{_where(index, rule)}: user_options.{key}: no profile has an option {base!r} "
                    f"(options: {', '.join(sorted(known)) or 'none'})"
                )
                continue
            if key != base and not any(o.choices and o.choices[-1].key is None for _, o in owners):
                warnings.append(
                    f"{_where(index, rule)}: user_options.{key}: no profile's {base!r} offers a free-form choice"
                )
            choices = {c.key for _, o in owners for c in o.choices}
            if None in choices or key != base:
                continue  # a free-form value can be anything
            for pattern in criterion.patterns():
                if is_literal(pattern) and str(pattern) not in choices:
                    warnings.append(
                        f"{_where(index, rule)}: user_options.{key}: {pattern!r} is no choice of {base!r} "
                        f"(choices: {', '.join(sorted(c for c in choices if c))})"
                    )
    return warnings


def _star_on_none(policy: Policy, profiles: list[Profile]) -> list[str]:
    warnings = []
    by_key = _options_by_key(profiles)
    for index, rule in enumerate(policy.rules):
        for key, criterion in (rule.match.options() if rule.match else {}).items():
            hit: dict[str, tuple[str, Choice]] = {}  # profile slug -> (glob, default choice)
            for profile, option in by_key.get(key, []):
                default = option.default
                if default is None or default.key is None or not _none_like(default):
                    continue
                globs = [p for p in criterion.any_of or [] if not is_literal(p) and value_matches(p, default.key)]
                if globs and criterion.matches({key: default.key}, key):
                    hit[profile.slug] = (str(globs[0]), default)
            if hit:
                glob, default = next(iter(hit.values()))
                warnings.append(
                    f"{_where(index, rule)}: user_options.{key}: {glob!r} also matches {default.key!r} "
                    f"({default.display_name!r}), the default choice (profiles: {', '.join(hit)}), so every server "
                    f"of those profiles matches; to mean any other choice write {key}: {{any_except: {default.key}}}"
                )
    return warnings


def _none_like(choice: Choice) -> bool:
    return bool(NONE_LIKE.match(choice.key or "") or NONE_LIKE.match(choice.display_name.strip()))


def _uncovered_choices(policy: Policy, profiles: list[Profile], rows: list[Row]) -> list[str]:
    warnings = []
    for profile in profiles:
        for option in profile.options:
            named = {c.label for c in option.choices if _named_by_a_rule(policy, profile, option.key, c)}
            if not named:
                continue
            for choice in option.choices:
                if choice.label in named or _none_like(choice):
                    continue
                decided = [r.rule_id for r in rows if r.profile is profile and (option, choice) in r.picks]
                defaults = decided.count(DEFAULT_RULE_ID)
                if defaults:
                    what = "a free-form value" if choice.key is None else f"choice {choice.key!r}"
                    share = "" if defaults == len(decided) else f" in {defaults} of its {len(decided)} rows"
                    warnings.append(
                        f"profile {profile.slug!r}, {option.key}: {what} is named by no rule while other "
                        f"{option.key} choices are ({', '.join(sorted(named))}); it gets the defaults "
                        f"({_limits(policy, None)}){share}"
                    )
    return warnings


def _named_by_a_rule(policy: Policy, profile: Profile, key: str, choice: Choice) -> bool:
    """Whether a rule for this profile has a criterion on this option that matches or excepts this choice."""
    value = FREE_FORM if choice.key is None else choice.key
    for rule in policy.rules:
        criteria = rule.match.options() if rule.match else {}
        criterion, on_profile = criteria.get(key), criteria.get("profile")
        if criterion is None or (
            on_profile is not None and not on_profile.matches({"profile": profile.slug}, "profile")
        ):
            continue
        if choice.key is None and criterion.free_form is not None:
            return True
        if any(value_matches(p, value) for p in criterion.patterns()):
            return True
    return False


def _generated_slugs(profiles: list[Profile]) -> list[str]:
    return [
        f"profile {p.display_name!r} has no slug: KubeSpawner stores {p.slug!r}, made from its display name, "
        "which changes when the name does; give it a slug"
        for p in profiles
        if p.slug_generated and not p.display_name.isascii()
    ]


# -- the table --------------------------------------------------------------------------------------


def table(report: Report, max_rows: int = 500) -> list[str]:
    """The rows as aligned text lines: profile, choices (``*`` the default), rule, limits, exceptions."""
    header = ("PROFILE", "CHOICES", "RULE", "LIMITS", "UNLESS")
    cells = [
        (
            row.profile.slug + ("*" if row.profile.default else ""),
            " ".join(f"{o.key}={c.label}{'*' if c.default else ''}" for o, c in row.picks) or "-",
            row.rule_id,
            row.limits,
            "; ".join(row.before),
        )
        for row in report.rows[:max_rows]
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(line)).rstrip()
        for line in [header, *cells]
    ]
    if len(report.rows) > max_rows:
        lines.append(f"... {len(report.rows) - max_rows:,} more rows not shown")
    return lines
