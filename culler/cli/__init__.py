"""Command line: serve (default, with jupyterhub-idle-culler's flat flags), ``policy check|schema``, ``explain``,
``history export``.

Each command imports only what it uses: ``policy`` needs no HTTP client, scheduler or metrics.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from culler.cli.flags import PROG, USAGE_ERROR, UsageError
from culler.policy.model import PolicyError

COMMANDS = {
    "policy": "culler.cli.policy:policy_command",
    "explain": "culler.cli.explain:explain_command",
    "history": "culler.cli.history:history_command",
}


def _command(name: str | None) -> Callable[[Sequence[str]], int]:
    """The command's handler, imported only now; the default (flags only) serves."""
    module, _, function = COMMANDS.get(name or "", "culler.cli.serve:serve").partition(":")
    handler: Callable[[Sequence[str]], int] = getattr(import_module(module), function)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in (*COMMANDS, "demo") else None
    try:
        if command == "demo":
            return _demo(args[1:])
        return _command(command)(args[1:] if command else args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except PolicyError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _demo(argv: Sequence[str]) -> int:
    """The demo lives in the checkout (devtools/), outside the service's package."""
    raise UsageError("the demo runs from a checkout of the repository: ./dev demo [--duration S]")
