"""What a policy plugin imports: ``Verdict``, ``Action`` and ``ServerSnapshot`` (see the README's Plugins).

Kept at this path for plugins, whatever room the decision code lives in (culler.core.decide).
"""

from culler.core.decide import Action, Verdict
from culler.core.snapshot import ServerSnapshot

__all__ = ["Action", "ServerSnapshot", "Verdict"]
