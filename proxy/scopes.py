"""Step 9 of the gate: does the token carry the scopes the route needs?

Scope tokens are exact and case-sensitive (RFC 6749 §3.3: "The strings are defined by the authorization
server ... case-sensitive strings"): ``orders:write`` is not ``orders:writeX``, ``ORDERS:WRITE`` or
``orders:*``. The denial names what the route needs (RFC 6750 §3: the ``scope`` attribute is "a
space-delimited list of case-sensitive scope values indicating the required scope of the access token");
for ``anyOf`` that is every alternative, so a client that asks for the advertised scopes always passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from config.schema import ScopeRequirement


@dataclass(frozen=True, slots=True)
class ScopeCheck:
    kind: Literal["any", "all"]
    names: frozenset[str]
    challenge: str
    """The ``scope="..."`` value of the 403 challenge."""

    @classmethod
    def compile(cls, requirement: ScopeRequirement) -> ScopeCheck:
        if requirement.any_of is not None:
            return cls("any", frozenset(requirement.any_of), " ".join(dict.fromkeys(requirement.any_of)))
        names = requirement.all_of or []
        return cls("all", frozenset(names), " ".join(dict.fromkeys(names)))

    def is_satisfied_by(self, granted: frozenset[str]) -> bool:
        if self.kind == "any":
            return not self.names.isdisjoint(granted)
        return self.names <= granted
