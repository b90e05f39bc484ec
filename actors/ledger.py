"""BudgetLedger: fleet-wide tenant budgets (SPEC §6 ``[budgets.*]``).

Before each model call a host reserves the call's worst case against the
tenant's budget; after it, the reservation is settled with the real cost.
Spending is recorded in the log (``ModelResponded.cost_usd``), so after a
restart the ledger is rebuilt from the projections (``seed``: what each
session spent up to the projection checkpoint) plus a fold of the log beyond
it: reservations in flight at a crash are simply gone, what was spent is not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fleetlog.events.schema import Envelope, ModelResponded, SessionCreated

__all__ = ["Budget", "Ledger"]


@dataclass(frozen=True)
class Budget:
    max_cost_usd: float | None = None
    max_tokens: int | None = None


@dataclass
class _Account:
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0


@dataclass
class Ledger:
    budgets: dict[str, Budget]
    accounts: dict[str, _Account] = field(default_factory=dict)
    _tenant_of: dict[str, str] = field(default_factory=dict)

    def fold(self, envelopes: Iterable[Envelope]) -> None:
        """Add what these events spent (a rebuild folds the whole log from position 1)."""
        for env in envelopes:
            event = env.event
            if isinstance(event, SessionCreated):
                self._tenant_of[env.session_id] = event.tenant
            elif isinstance(event, ModelResponded):
                tenant = self._tenant_of.get(env.session_id, "default")
                account = self.accounts.setdefault(tenant, _Account())
                account.spent_usd += event.cost_usd
                account.spent_tokens += event.input_tokens + event.output_tokens

    def seed(self, session_id: str, tenant: str, usd: float, tokens: int) -> None:
        """Add one session's spending as the projections report it (a rebuild's start)."""
        self._tenant_of[session_id] = tenant
        account = self.accounts.setdefault(tenant, _Account())
        account.spent_usd += usd
        account.spent_tokens += tokens

    def reserve(self, tenant: str, usd: float, tokens: int) -> tuple[bool, str]:
        budget = self.budgets.get(tenant)
        account = self.accounts.setdefault(tenant, _Account())
        if budget is not None:
            if budget.max_cost_usd is not None:
                committed = account.spent_usd + account.reserved_usd
                if committed + usd > budget.max_cost_usd:
                    return False, (
                        f"tenant {tenant} has ${committed:.4f} of its ${budget.max_cost_usd:g} "
                        f"budget spent or reserved; this call needs up to ${usd:.4f}"
                    )
            if budget.max_tokens is not None:
                committed_tokens = account.spent_tokens + account.reserved_tokens
                if committed_tokens + tokens > budget.max_tokens:
                    return False, (
                        f"tenant {tenant} has {committed_tokens} of its {budget.max_tokens} "
                        f"tokens spent or reserved; this call needs up to {tokens}"
                    )
        account.reserved_usd += usd
        account.reserved_tokens += tokens
        return True, ""

    def settle(
        self, tenant: str, reserved_usd: float, reserved_tokens: int, usd: float, tokens: int
    ) -> None:
        account = self.accounts.setdefault(tenant, _Account())
        account.reserved_usd = max(account.reserved_usd - reserved_usd, 0.0)
        account.reserved_tokens = max(account.reserved_tokens - reserved_tokens, 0)
        account.spent_usd += usd
        account.spent_tokens += tokens

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {
            tenant: {
                "spent_usd": a.spent_usd,
                "spent_tokens": a.spent_tokens,
                "reserved_usd": a.reserved_usd,
                "reserved_tokens": a.reserved_tokens,
            }
            for tenant, a in self.accounts.items()
        }
