"""The policy file: models, loading with precise errors, shadowing checks, flags-to-policy (pure, no network)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from culler.policy.durations import parse_duration
from culler.policy.options import OptionCriterion, OptionMatch, as_list, list_covers

PLUGIN_GROUP = "jupyterhub_activity_culler.policies"
DEFAULT_RULE_ID = "default"


def _seconds(value: object) -> float:
    seconds = parse_duration(value)
    return math.inf if seconds is None else seconds


Duration = Annotated[
    float,
    BeforeValidator(_seconds),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*(never|\d+|(\d+[smhdwSMHDW])+)\s*$"},
                {"type": "integer", "minimum": 0},
            ],
            "description": "90s, 30m, 36h, 7d, 2w, 1d12h, plain seconds, or never",
        }
    ),
]


Names = Annotated[
    list[str],
    BeforeValidator(as_list),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Model):
    """All given keys must match (AND); within a list any item may match (OR)."""

    users: Names | None = Field(None, description="user names or glob patterns")
    groups: Names | None = Field(None, description="group names or glob patterns")
    admin: bool | None = None
    servers: Names | None = Field(None, description='server-name globs; "" is the default server')
    profile: Names | None = Field(
        None, description="KubeSpawner profile slugs or globs (the spawn form's user_options.profile)"
    )
    user_options: dict[str, OptionCriterion] | None = Field(
        None, description="spawn options by key: what each must be (all must match)"
    )

    @model_validator(mode="after")
    def _profile_once(self) -> Match:
        if self.profile is not None and "profile" in (self.user_options or {}):
            raise ValueError("say the profile once: 'profile' or 'user_options.profile', not both")
        return self

    def options(self) -> dict[str, OptionMatch]:
        """Every spawn-option criterion, ``profile`` included."""
        criteria = dict(self.user_options or {})
        if self.profile is not None:
            criteria["profile"] = OptionMatch(any_of=list(self.profile))
        return criteria


ProbeName = Literal["tree-scan", "prometheus", "server"]


class Settle(_Model):
    """Before a due server is stopped, wait until these probes vouch that its home is quiet."""

    probes: Annotated[list[ProbeName], BeforeValidator(as_list)] = Field(
        default_factory=list, description="probes configured in the service's settings; none: stop at once"
    )
    window: Duration = Field(120, description="how long every probe must vouch for quiet")
    max_deferral: Duration = Field(6 * 3600, description="the longest a due server waits for quiet")
    at_cap: Literal["stop", "skip"] = Field(
        "stop", description="at max_deferral: stop anyway (counted unverified) or keep deferring and report"
    )

    def problem(self) -> str | None:
        if self.probes and not self.window > 0:
            return "window must be longer than 0s"
        if self.probes and self.max_deferral <= self.window:
            return "max_deferral must be longer than window, or no server could ever settle"
        return None

    def under(self, defaults: Settle) -> Settle:
        """This (a rule's) settle section with the fields it does not set taken from ``defaults``."""
        return defaults.model_copy(update={name: getattr(self, name) for name in self.model_fields_set})


class Keep(_Model):
    """Users may push their server's idle deadline later, ``step`` at a time, up to ``max`` past the moment
    it would otherwise have been due (never past the rule's max_age)."""

    step: Duration = Field(description="how much later one keep moves the deadline")
    max: Duration = Field(description="the furthest past the normal deadline keeps may reach")

    @model_validator(mode="after")
    def _bounded(self) -> Keep:
        if not 0 < self.step < math.inf or not 0 < self.max < math.inf:
            raise ValueError("step and max must be longer than 0s and not never")
        if self.step > self.max:
            raise ValueError("step must not be longer than max")
        return self


class Defaults(_Model):
    idle: Duration = Field(7 * 86400, description="stop after this long without browser activity")
    max_age: Duration = Field(math.inf, description="stop servers running longer than this, active or not")
    remove_named_servers: bool = Field(False, description="delete named servers from the hub when stopping them")
    settle: Settle = Field(default_factory=Settle, description="wait for quiet homes before stopping")
    keep: Keep | None = Field(None, description="let users keep their servers longer; none: they cannot")

    @field_validator("settle")
    @classmethod
    def _settle_can_settle(cls, settle: Settle) -> Settle:
        # A rule's settle section is checked once the defaults fill it in (Policy._rule_settles).
        problem = settle.problem()
        if problem:
            raise ValueError(problem)
        return settle


class Rule(_Model):
    id: str = Field("", description="a stable name, used in logs, metrics and explain")
    description: str | None = None
    match: Match | None = Field(None, description="no match means every server")
    exempt: bool = Field(False, description="never stopped by anything, max age included")
    idle: Duration | None = None
    max_age: Duration | None = None
    remove_named_servers: bool | None = None
    settle: Settle | None = None
    keep: Keep | None = Field(
        None, description="overrides defaults.keep; null here: this rule's servers cannot be kept"
    )
    plugin: str | None = Field(None, description=f"a policy plugin registered in the entry-point group {PLUGIN_GROUP}")
    args: dict[str, Any] = Field(default_factory=dict, description="passed to the plugin")

    @field_validator("args")
    @classmethod
    def _plugin_args(cls, args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if args and not info.data.get("plugin"):
            raise ValueError("'args' is only meaningful with 'plugin'")
        return args


class UsersPolicy(_Model):
    delete_inactive_after: Duration = Field(description="delete users with no activity and no servers for this long")
    include_admins: bool = False


class Policy(_Model):
    version: Literal[1] = Field(description="format version")
    defaults: Defaults = Field(default_factory=Defaults)
    rules: list[Rule] = Field(default_factory=list, description="the first matching rule decides")
    users: UsersPolicy | None = Field(None, description="optional: delete inactive users")

    @model_validator(mode="after")
    def _rule_ids(self) -> Policy:
        seen: dict[str, int] = {}
        rules = []
        for index, rule in enumerate(self.rules):
            rule_id = rule.id or _auto_id(index)
            if rule_id == DEFAULT_RULE_ID:
                problem = f"{rule_id!r} is reserved for decisions made by 'defaults'"
            elif rule_id in seen:
                problem = f"{rule_id!r} is already used by rules[{seen[rule_id]}]"
            else:
                problem = None
            if problem:
                # _describe turns the context into "rules[i] (id ...): id: ..."
                raise PydanticCustomError("rule_id", "{problem}", {"index": index, "problem": problem})
            seen[rule_id] = index
            rules.append(rule if rule.id else rule.model_copy(update={"id": rule_id}))
        object.__setattr__(self, "rules", rules)
        return self

    @model_validator(mode="after")
    def _rule_settles(self) -> Policy:
        for index, rule in enumerate(self.rules):
            problem = self.settle_for(rule).problem()
            if problem:
                raise PydanticCustomError(
                    "rule_settle", "{problem} (with defaults.settle filling in)", {"index": index, "problem": problem}
                )
        return self

    def shortest_idle(self) -> float | None:
        """The shortest finite idle limit any rule or the defaults set (None: every limit is never)."""
        limits = [self.defaults.idle, *(r.idle for r in self.rules if r.idle is not None and not r.exempt)]
        finite = [limit for limit in limits if not math.isinf(limit)]
        return min(finite, default=None)

    def keep_for(self, rule: Rule | None) -> Keep | None:
        """The keep section in force for a rule: its own when it says one (``keep: null`` is "no keeps")."""
        if rule is not None and "keep" in rule.model_fields_set:
            return rule.keep
        return None if rule is not None and rule.exempt else self.defaults.keep

    def settle_for(self, rule: Rule | None) -> Settle:
        """The settle section in force for a rule: its own fields over the defaults'."""
        if rule is None or rule.settle is None:
            return self.defaults.settle
        return rule.settle.under(self.defaults.settle)


def _auto_id(index: int) -> str:
    return f"rule-{index + 1}"


class PolicyError(Exception):
    """A policy file that cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__("; ".join(errors))


def policy_hash(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:12]


def parse_policy(
    text: str, source: str, plugins: Iterable[str] | None = None, probes: Iterable[str] | None = None
) -> Policy:
    """Validate policy YAML; every error names the source, the rule (index and id) and the field."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyError(source, [f"{source}: not valid YAML: {_one_line(str(error))}"]) from error
    if not isinstance(raw, dict):
        raise PolicyError(source, [f"{source}: expected a mapping with 'version: 1' at the top"])
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as error:
        raise PolicyError(source, [_describe(source, raw, item) for item in error.errors()]) from error
    unknown = _unknown_plugins(policy, plugins) + unconfigured_probes(policy, probes)
    if unknown:
        raise PolicyError(source, [f"{source}: {line}" for line in unknown])
    return policy


def load_policy(path: Path, plugins: Iterable[str] | None = None, probes: Iterable[str] | None = None) -> Policy:
    try:
        text = path.read_text()
    except OSError as error:
        raise PolicyError(str(path), [f"{path}: cannot read: {error.strerror or error}"]) from error
    return parse_policy(text, str(path), plugins, probes)


def _unknown_plugins(policy: Policy, plugins: Iterable[str] | None) -> list[str]:
    if plugins is None:
        return []
    known = set(plugins)
    return [
        f"rules[{index}] (id {rule.id!r}): plugin: {rule.plugin!r} is not installed (known: {sorted(known) or 'none'})"
        for index, rule in enumerate(policy.rules)
        if rule.plugin and rule.plugin not in known
    ]


PROBE_SETTINGS = {
    "tree-scan": "CULLER_TREE_SCAN_PATH (e.g. /mnt/homes/{username})",
    "prometheus": "CULLER_PROMETHEUS_URL and CULLER_PROMETHEUS_QUERY",
    "server": "CULLER_PROBE_TOKEN, a hub service token holding only custom:activity-culler:probe",
}


def _settle_sections(policy: Policy) -> list[tuple[str, Settle | None]]:
    """Every settle section a policy has, with where it stands (for messages)."""
    return [("defaults", policy.defaults.settle)] + [
        (f"rules[{index}] (id {rule.id!r})", rule.settle) for index, rule in enumerate(policy.rules)
    ]


def unconfigured_probes(policy: Policy, probes: Iterable[str] | None) -> list[str]:
    """Probes a policy names that the service's settings do not set up (``probes`` None: don't check)."""
    if probes is None:
        return []
    configured = set(probes)
    places = _settle_sections(policy)
    return [
        f"{where}: settle.probes: {name!r} is not configured in the service's settings (set {PROBE_SETTINGS[name]})"
        for where, settle in places
        if settle is not None
        for name in settle.probes
        if name not in configured
    ]


def _describe(source: str, raw: dict[str, Any], item: Any) -> str:
    loc = list(item["loc"])
    if item["type"] in ("rule_id", "rule_settle"):
        loc = ["rules", item["ctx"]["index"], "id" if item["type"] == "rule_id" else "settle"]
    where = ""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        index = loc[1]
        rules = raw.get("rules")
        rule = rules[index] if isinstance(rules, list) and index < len(rules) else None
        rule_id = (rule.get("id") or _auto_id(index)) if isinstance(rule, dict) else None
        where = f"rules[{index}]" + (f" (id {rule_id!r})" if rule_id else "") + ": "
        loc = loc[2:]
    field = ".".join(str(part) for part in loc if not str(part).startswith("function-")) or "(rule)"
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "literal_error" and field == "version":
        message = f"unsupported version {item.get('input')!r}; this service reads version 1"
    return f"{source}: {where}{field}: {message}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def trusting_servers(policy: Policy) -> list[str]:
    """The ``server`` probe asks code the user controls: it may delay a stop up to max_deferral, no more."""
    places = _settle_sections(policy)
    return [
        f"{where}: settle.probes includes 'server' with at_cap: skip: the server's own probe answers for "
        "code its user controls, so a lying one would keep the server forever; use at_cap: stop"
        for where, settle in places
        if settle is not None and "server" in settle.probes and settle.at_cap == "skip"
    ]


def shadowed_rules(policy: Policy) -> list[str]:
    """Warnings for rules that can never match because an earlier rule catches everything they would."""
    warnings = []
    for later_index, later in enumerate(policy.rules):
        for earlier in policy.rules[:later_index]:
            if earlier.plugin is None and _covers(earlier.match, later.match):
                warnings.append(
                    f"rules[{later_index}] (id {later.id!r}) can never match: rule {earlier.id!r} comes first "
                    "and matches every server it would"
                )
                break
    return warnings


_KINDS = {int: "number", float: "number", bool: "boolean"}


def typed_option_values(policy: Policy) -> list[str]:
    """Warnings for option values that are not strings: a spawn form (KubeSpawner's too) stores strings."""
    warnings = []
    for index, rule in enumerate(policy.rules):
        for key, criterion in (rule.match.options() if rule.match else {}).items():
            for value in criterion.patterns():
                if not isinstance(value, str):
                    text = json.dumps(value)
                    warnings.append(
                        f"rules[{index}] (id {rule.id!r}): user_options.{key}: {text} is a {_KINDS[type(value)]}, "
                        f"not a string: it matches only a JSON {text} sent through the REST API, never a spawn "
                        f'form\'s "{text}"; quote it to match the form'
                    )
    return warnings


def _covers(wide: Match | None, narrow: Match | None) -> bool:
    if wide is None:
        return True
    narrow = narrow or Match()
    for key in ("users", "groups", "servers"):
        if not list_covers(getattr(wide, key), getattr(narrow, key)):
            return False
    if wide.admin is not None and wide.admin != narrow.admin:
        return False
    narrow_options = narrow.options()
    for option, criterion in wide.options().items():
        other = narrow_options.get(option)
        if other is None or not criterion.covers(other):
            return False
    return True


def policy_from_flags(
    *,
    timeout: float,
    max_age: float,
    cull_default_servers: bool,
    cull_named_servers: bool,
    remove_named_servers: bool,
    cull_users: bool,
    cull_admin_users: bool,
) -> Policy:
    """The policy that jupyterhub-idle-culler-style flags describe (0 max age means never).

    Unlike the incumbent, ``--cull-*-servers=false`` also protects from ``--max-age`` (exempt rules).
    """
    rules: list[dict[str, Any]] = []
    if not cull_default_servers:
        rules.append({"id": "flag-no-default-servers", "match": {"servers": [""]}, "exempt": True})
    if not cull_named_servers:
        rules.append({"id": "flag-no-named-servers", "match": {"servers": ["?*"]}, "exempt": True})
    raw: dict[str, Any] = {
        "version": 1,
        "defaults": {"idle": timeout, "max_age": max_age or "never", "remove_named_servers": remove_named_servers},
        "rules": rules,
    }
    if cull_users:
        raw["users"] = {"delete_inactive_after": timeout, "include_admins": cull_admin_users}
    return Policy.model_validate(raw)


def policy_schema() -> dict[str, Any]:
    schema = _never_for_infinity(Policy.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "jupyterhub-activity-culler policy"
    return schema


def _never_for_infinity(node: Any) -> Any:
    """JSON has no Infinity: a ``never`` default (``max_age``) is written as the string ``never``."""
    if isinstance(node, dict):
        return {key: _never_for_infinity(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_never_for_infinity(value) for value in node]
    if isinstance(node, float) and math.isinf(node):
        return "never"
    return node
