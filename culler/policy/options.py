"""Matching spawn options as KubeSpawner stores them, and the globs of all match keys (pure, no I/O).

KubeSpawner's profile form stores ``user_options`` like ``{"profile": "pytorch-env", "gpu": "none"}``:
every option of the chosen profile with its choice key (the default included), and a free-form
("Other…") value only as ``"gpu--unlisted-choice": "<text>"``, with no ``gpu`` key. A criterion on
``gpu`` therefore reads the option's value whichever way it arrived, as KubeSpawner applies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

UNLISTED_SUFFIX = "--unlisted-choice"
GLOB_CHARS = "*?["

Scalar = str | int | float | bool
_SCALAR_SCHEMA: dict[str, Any] = {"anyOf": [{"type": t} for t in ("string", "integer", "number", "boolean")]}
_PATTERNS_SCHEMA: dict[str, Any] = {
    "anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA, "minItems": 1}]
}


def as_list(value: object) -> object:
    """A lone value as a one-item list (YAML lets an admin write either)."""
    return [value] if isinstance(value, (str, bool, int, float)) else value


class OptionMatch(BaseModel):
    """One option's criterion: a value or glob, a list (any of them), or a mapping of these keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    any_of: list[Scalar] | None = Field(None, description='values or globs, any of which matches ("*": any value)')
    any_except: list[Scalar] | None = Field(
        None, description='any value except these (e.g. the "No GPU" choice); an absent option never matches'
    )
    free_form: bool | None = Field(
        None, description="true: only a free-form (unlisted-choice) value; false: only a listed choice"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return {"any_of": as_list(value)}
        return {key: as_list(item) if key in ("any_of", "any_except") else item for key, item in value.items()}

    @model_validator(mode="after")
    def _says_something(self) -> OptionMatch:
        if self.any_of is None and self.any_except is None and self.free_form is None:
            raise ValueError("give any_of, any_except or free_form")
        if self.any_of == [] or self.any_except == []:
            raise ValueError("an empty list matches nothing; leave the key out instead")
        return self

    def patterns(self) -> list[Scalar]:
        """Every value or glob this criterion names, matched or excepted."""
        return [*(self.any_of or []), *(self.any_except or [])]

    def matches(self, options: Mapping[str, Any], key: str) -> bool:
        found = option_value(options, key)
        if found is None:
            return False
        value, free_form = found
        if self.free_form is not None and self.free_form != free_form:
            return False
        if self.any_of is not None and not any(value_matches(p, value) for p in self.any_of):
            return False
        return not (self.any_except is not None and any(value_matches(p, value) for p in self.any_except))

    def covers(self, narrow: OptionMatch) -> bool:
        """Whether this matches every value ``narrow`` matches; False when unsure."""
        if self.free_form is not None and self.free_form != narrow.free_form:
            return False
        if self.any_of is not None and not (
            "*" in self.any_of if narrow.any_of is None else list_covers(self.any_of, narrow.any_of)
        ):
            return False
        return all(_excluded_by(narrow, pattern) for pattern in self.any_except or [])


OptionCriterion = Annotated[
    OptionMatch,
    WithJsonSchema(
        {
            "anyOf": [
                *_PATTERNS_SCHEMA["anyOf"],
                {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": {
                        "any_of": _PATTERNS_SCHEMA,
                        "any_except": _PATTERNS_SCHEMA,
                        "free_form": {"type": "boolean"},
                    },
                },
            ],
            "description": 'a value or glob, a list (any of them), or {any_of, any_except, free_form}; "*" matches '
            "any value; an option's free-form (unlisted-choice) value counts as its value",
        }
    ),
]


def _excluded_by(narrow: OptionMatch, pattern: Scalar) -> bool:
    """Whether nothing ``narrow`` matches is matched by ``pattern``."""
    if any(pattern_covers(excepted, pattern) for excepted in narrow.any_except or []):
        return True
    return narrow.any_of is not None and all(is_literal(v) and not value_matches(pattern, v) for v in narrow.any_of)


def option_value(options: Mapping[str, Any], key: str) -> tuple[Any, bool] | None:
    """An option's value and whether it is free-form; None when the option is absent.

    A non-empty free-form value wins over a listed choice, as in KubeSpawner's ``_load_profile``.
    """
    unlisted = options.get(key + UNLISTED_SUFFIX)
    if unlisted is not None and unlisted != "":
        return unlisted, True
    value = options.get(key)
    return None if value is None else (value, False)


def value_matches(pattern: Scalar, value: Any) -> bool:
    """A string pattern is a glob over the value's text; a typed one (1, true) matches only itself."""
    if isinstance(pattern, str):
        return fnmatchcase(str(value), pattern)
    return type(pattern) is type(value) and pattern == value


def any_glob(patterns: Iterable[str], values: Iterable[str]) -> bool:
    values = list(values)
    return any(fnmatchcase(value, pattern) for pattern in patterns for value in values)


def is_literal(value: Any) -> bool:
    return not isinstance(value, str) or not any(ch in value for ch in GLOB_CHARS)


def list_covers(wide: list[Any] | None, narrow: list[Any] | None) -> bool:
    """Whether the patterns ``wide`` match everything the patterns ``narrow`` match (None: anything)."""
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(any(pattern_covers(w, n) for w in wide) for n in narrow)


def pattern_covers(pattern: Any, value: Any) -> bool:
    """Whether ``pattern`` matches everything ``value`` (itself a pattern) matches; False when unsure."""
    if not isinstance(pattern, str):
        return type(pattern) is type(value) and pattern == value
    if pattern == "*":
        return True
    if not isinstance(value, str):  # a typed value is matched by a glob through its text
        return fnmatchcase(str(value), pattern)
    if not is_literal(value):
        return pattern == value
    return fnmatchcase(value, pattern)
