"""Who a caller is, as the host app says: a tenant id, its plan, and what differs for it.

The app keeps its customers in its own database; unimw keeps only plans.
A resolver of the app's (a ``callable`` or ``key_lookup`` source, the
Django ``IDENTITY`` hook, or an in-process call) answers with an
:class:`Identity`, and the tenant's rules are its plan's with the
identity's overrides on top (:mod:`unimw.plans`). The tenant need not be
declared in the policy: its counters are keyed by its id all the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unimw.policy import Limit


@dataclass(frozen=True, slots=True)
class Identity:
    """A tenant as the app knows it.

    ``limits`` replace the plan's limit of the same window and scope (this
    customer's monthly budget, say) and add to the others; ``max_tokens``
    and ``max_concurrent`` replace the plan's; ``models`` are
    allowed on top of the plan's list; ``credentials`` are the tenant's own
    provider keys by provider name (bring your own key), used for its calls
    to that provider and redacted like the policy's keys. Identities are
    hashable (credentials aside), so the rules they make are worked out
    once per distinct identity, not per call.
    """

    tenant: str
    plan: str | None = None
    models: tuple[str, ...] = ()
    limits: tuple[Limit, ...] = ()
    max_tokens: int | None = None
    max_concurrent: int | None = None
    credentials: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not self.tenant:
            raise ValueError("an identity needs a tenant id (a non-empty string)")
        if self.max_concurrent is not None and (not isinstance(self.max_concurrent, int) or self.max_concurrent < 1):
            raise ValueError("an identity's max_concurrent is a positive int (or None: its plan's)")
        # Lists and dicts from the app's own code become the immutable forms hashing needs.
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "limits", tuple(_limit(limit) for limit in self.limits))
        object.__setattr__(self, "credentials", dict(self.credentials))

    @property
    def overrides(self) -> bool:
        """Whether anything differs from the plan."""
        return bool(self.models or self.limits or self.max_tokens is not None or self.max_concurrent is not None)


def _limit(value: Limit | Mapping[str, Any]) -> Limit:
    from unimw.policy import Limit  # only an identity with limits of its own needs the policy models

    return value if isinstance(value, Limit) else Limit.model_validate(value)


def identity_of(answer: object) -> Identity | None:
    """What a resolver returned, as an identity: an :class:`Identity`, a tenant id, or None for nobody."""
    if answer is None or isinstance(answer, Identity):
        return answer
    if isinstance(answer, str):
        return Identity(answer) if answer else None
    raise TypeError(f"a tenant resolver returned {type(answer).__name__}: expected an Identity, a str or None")
