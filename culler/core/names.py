"""KubeSpawner's names for a user's server, and templates that use them (pure, no I/O).

KubeSpawner names pods, PVCs and the chart's ``subPath: "{username}"`` with slugs, not the raw hub
name: under ``slug_scheme: safe`` (KubeSpawner 7's default) ``j_smith`` is ``j-smith---be41c01d``;
under ``escape`` (KubeSpawner 6) ``jane-doe`` is ``jane-2ddoe``. A template filled with the raw name reads
a directory or a pod that does not exist. These are the placeholders of KubeSpawner's
``_expand_user_properties`` that the hub's REST API can fill (no ``{userid}``; ``{pod_name}`` and
``{pvc_name}`` depend on templates the service does not see, so write ``jupyter-{user_server}``).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

SlugScheme = Literal["safe", "escape"]
SLUG_SCHEMES: tuple[SlugScheme, ...] = ("safe", "escape")

PLACEHOLDERS = {
    "username": "the user's name under slug_scheme (safe: j-smith---be41c01d; escape: j-5fsmith)",
    "servername": "the server's name under slug_scheme; empty for the default server",
    "user_server": "{username}, or {username}--{servername} for a named server, under slug_scheme",
    "safe_username": "the user's name as the safe scheme makes it",
    "safe_servername": "the server's name as the safe scheme makes it",
    "safe_user_server": "{user_server} under the safe scheme",
    "escaped_username": "the user's name as the escape scheme (KubeSpawner 6) makes it",
    "escaped_servername": "the server's name as the escape scheme makes it",
    "escaped_user_server": "{escaped_username}--{escaped_servername}, as KubeSpawner writes it",
    "unescaped_username": "the hub's name for the user, unchanged",
    "unescaped_servername": "the hub's name for the server, unchanged",
}

_MAX_LENGTH = 48  # KubeSpawner's per-field budget for slugs
_HASH_LENGTH = 8
_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_OBJECT_NAME = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_ESCAPE_SAFE = frozenset(string.ascii_lowercase + string.digits)


def escape_slug(name: str) -> str:
    """The escape scheme: every character but a-z and 0-9 becomes ``-`` and its UTF-8 bytes in hex."""
    escaped = (c if c in _ESCAPE_SAFE else "".join(f"-{byte:X}" for byte in c.encode()) for c in name)
    return "".join(escaped).lower()


def _safe_part(name: str, max_length: int) -> str:
    """Lower-case letters, digits and single hyphens, starting with a letter; never empty."""
    part = _NOT_ALPHANUMERIC.sub("-", name.lower()).lstrip("-")[:max_length].rstrip("-")
    if part and not part[0].isalpha():
        part = "x-" + part[: max_length - 2]
    return part or "x"


def _hashed(name: str, max_length: int) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{_safe_part(name, max_length - _HASH_LENGTH - 3)}---{digest}"


def safe_slug(name: str, max_length: int = _MAX_LENGTH) -> str:
    """The safe scheme: a valid object name stays as it is; anything else is cleaned and hashed."""
    if "--" not in name and len(name) <= min(max_length, 63) and _OBJECT_NAME.match(name):
        return name
    return _hashed(name, max_length)


def multi_slug(names: list[str], max_length: int = _MAX_LENGTH) -> str:
    """Several names joined with ``--`` under one hash (for a user and server too long side by side)."""
    hasher = hashlib.sha256(names[0].encode())
    for name in names[1:]:
        hasher.update(b"\xff" + name.encode())  # \xff starts no UTF-8 character: no boundary collisions
    per_name = (max_length - _HASH_LENGTH - 1) // len(names) - 2
    return "--".join(_safe_part(name, per_name) for name in names) + f"---{hasher.hexdigest()[:_HASH_LENGTH]}"


def names_for(user: str, server: str, scheme: SlugScheme = "safe") -> dict[str, str]:
    """Every placeholder's value for one server, as KubeSpawner computes it."""
    safe_user = safe_slug(user)
    safe_server = safe_slug(server) if server else ""
    if len(safe_user) + len(safe_server) + 2 > _MAX_LENGTH:
        safe_user_server = multi_slug([user, server])
    else:
        safe_user_server = f"{safe_user}--{safe_server}" if server else safe_user
    escaped_user, escaped_server = escape_slug(user), escape_slug(server)
    escaped_user_server = f"{escaped_user}--{escaped_server}"
    values = {
        "safe_username": safe_user,
        "safe_servername": safe_server,
        "safe_user_server": safe_user_server,
        "escaped_username": escaped_user,
        "escaped_servername": escaped_server,
        "escaped_user_server": escaped_user_server,
        "unescaped_username": user,
        "unescaped_servername": server,
    }
    if scheme == "safe":
        values.update(username=safe_user, servername=safe_server, user_server=safe_user_server)
    else:
        values.update(username=escaped_user, servername=escaped_server)
        values["user_server"] = escaped_user_server if server else escaped_user
    return values


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    """A template with a placeholder the service cannot fill; the message names it."""


@dataclass(frozen=True)
class Template:
    """A text with KubeSpawner's placeholders, checked when made; ``quote`` escapes each filled value.

    A placeholder is ``{name}`` with a name of letters, digits and ``_``; other braces (PromQL's
    ``{pod="..."}``) are text.
    """

    text: str
    scheme: SlugScheme = "safe"

    def __post_init__(self) -> None:
        check_template(self.text)

    def root(self) -> str:
        """The directory above the first placeholder (``/mnt/homes/`` of ``/mnt/homes/{username}``)."""
        found = _PLACEHOLDER.search(self.text)
        fixed = self.text if found is None else self.text[: found.start()]
        return fixed if fixed.endswith("/") else (fixed.rsplit("/", 1)[0] + "/" if "/" in fixed else "./")

    def render(self, user: str, server: str, quote: Callable[[str], str] = str) -> str:
        values = names_for(user, server, self.scheme)
        rendered = _PLACEHOLDER.sub(lambda found: quote(values[found[1]]), self.text)
        # as KubeSpawner does: a template like "{username}--{servername}" loses the dangling "--" of a
        # default server, unless the template itself ends with "-"
        return rendered if self.text.endswith("-") else rendered.rstrip("-")


def check_template(text: str) -> None:
    """Raise TemplateError for a placeholder that is not one of PLACEHOLDERS."""
    unknown = [name for name in _PLACEHOLDER.findall(text) if name not in PLACEHOLDERS]
    if unknown:
        known = ", ".join("{" + key + "}" for key in PLACEHOLDERS)
        raise TemplateError(f"unknown placeholder {{{unknown[0]}}} (the hub's API cannot fill it); known: {known}")
