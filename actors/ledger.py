"""BudgetLedger: fleet-wide tenant budgets (SPEC §6 ``[budgets.*]``), a hard cap.

Before each model call a session reserves the call's worst case (the largest
input the request can be billed for, plus its ``max_tokens`` of output, at the
model's prices) against its tenant's budget; after the reply is durable, the
reservation is released and the session's spending recorded. A call is
granted only while ``spent + reserved + worst case <= budget``, and a call can
never cost more than its worst case, so spending never exceeds the budget.

Everything is keyed by session, and a session has at most one model call in
flight, so every message is idempotent and carries the session's *cumulative*
spending from its durable state: a late, repeated or lost ``release`` cannot
count anything twice or leave a reservation behind, and the session's next
``reserve`` (after a restart of its host, say) replaces whatever it held.

Reservations are durable too: ``ModelCallRequested`` records the amounts, and
is written before the ledger is asked. So a restarted ledger, rebuilt from the
projections plus a fold of the log beyond them, knows every reservation in
flight and its holder (a session whose last request is unanswered and that has
not ended), and a session's end releases whatever it held.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fleetlog.config import Config
from fleetlog.events.faults import crash_point
from fleetlog.events.schema import (
    Envelope,
    ModelCallFailed,
    ModelCallRequested,
    ModelResponded,
    SessionCancelled,
    SessionCompleted,
    SessionCreated,
    SessionFailed,
)

__all__ = ["Budget", "Ledger", "LocalBudget", "budgets_of"]

_ENDS = (SessionCompleted, SessionFailed, SessionCancelled)


@dataclass(frozen=True)
class Budget:
    max_cost_usd: float | None = None
    max_tokens: int | None = None


def budgets_of(config: Config) -> dict[str, Budget]:
    """``[budgets.*]`` as the ledger takes them."""
    return {t: Budget(b.max_cost_usd, b.max_tokens) for t, b in config.budgets.items()}


@dataclass
class _Account:
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    holders: int = 0  # sessions holding a reservation


@dataclass
class _Session:
    tenant: str
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0


@dataclass
class Ledger:
    budgets: dict[str, Budget]
    accounts: dict[str, _Account] = field(default_factory=dict)
    sessions: dict[str, _Session] = field(default_factory=dict)

    # --- rebuilding ----------------------------------------------------------------------

    def fold(self, envelopes: Iterable[Envelope]) -> None:
        """Apply what these events spent and reserved (a rebuild folds the log in order)."""
        for env in envelopes:
            event = env.event
            if isinstance(event, SessionCreated):
                self._session(env.session_id, event.tenant)
                continue
            session = self.sessions.get(env.session_id)
            if session is None:
                session = self._session(env.session_id, "default")
            if isinstance(event, ModelCallRequested):
                self._hold(session, event.reserved_usd, event.reserved_tokens)
            elif isinstance(event, ModelResponded):
                self._spend(
                    session,
                    session.spent_usd + event.cost_usd,
                    session.spent_tokens + event.input_tokens + event.output_tokens,
                )
                self._hold(session, 0.0, 0)
            elif isinstance(event, (ModelCallFailed, *_ENDS)):
                self._hold(session, 0.0, 0)

    def seed(
        self,
        session_id: str,
        tenant: str,
        usd: float,
        tokens: int,
        *,
        reserved_usd: float = 0.0,
        reserved_tokens: int = 0,
    ) -> None:
        """One session as the projections report it (a rebuild's start)."""
        session = self._session(session_id, tenant)
        self._spend(session, session.spent_usd + usd, session.spent_tokens + tokens)
        self._hold(session, reserved_usd, reserved_tokens)

    # --- the sessions' calls -------------------------------------------------------------

    def reserve(
        self,
        tenant: str,
        session_id: str,
        usd: float,
        tokens: int,
        spent_usd: float = 0.0,
        spent_tokens: int = 0,
    ) -> tuple[bool, str]:
        """Grant ``session_id``'s next call up to ``usd``/``tokens``, replacing what it held.

        ``spent_*`` are the session's cumulative, durable spending: they make up
        for a ``release`` that never arrived (its host died first).
        """
        session = self._session(session_id, tenant)
        self._spend(session, spent_usd, spent_tokens)
        self._hold(session, 0.0, 0)
        crash_point("in_reserve")
        budget = self.budgets.get(session.tenant)
        account = self.accounts[session.tenant]
        if budget is not None:
            if budget.max_cost_usd is not None:
                committed = account.spent_usd + account.reserved_usd
                if committed + usd > budget.max_cost_usd:
                    return False, (
                        f"tenant {session.tenant} has ${committed:.4f} of its "
                        f"${budget.max_cost_usd:g} budget spent or reserved; "
                        f"this call may cost up to ${usd:.4f}"
                    )
            if budget.max_tokens is not None:
                committed_tokens = account.spent_tokens + account.reserved_tokens
                if committed_tokens + tokens > budget.max_tokens:
                    return False, (
                        f"tenant {session.tenant} has {committed_tokens} of its "
                        f"{budget.max_tokens} tokens spent or reserved; "
                        f"this call may use up to {tokens}"
                    )
        self._hold(session, usd, tokens)
        return True, ""

    def release(self, tenant: str, session_id: str, spent_usd: float, spent_tokens: int) -> None:
        """The session's call is over (answered, failed, cut off) or the session ended."""
        session = self._session(session_id, tenant)
        crash_point("in_settle")
        self._spend(session, spent_usd, spent_tokens)
        self._hold(session, 0.0, 0)

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {
            tenant: {
                "spent_usd": a.spent_usd,
                "spent_tokens": a.spent_tokens,
                "reserved_usd": a.reserved_usd,
                "reserved_tokens": a.reserved_tokens,
                "holders": a.holders,
            }
            for tenant, a in self.accounts.items()
        }

    # --- bookkeeping ---------------------------------------------------------------------

    def _session(self, session_id: str, tenant: str) -> _Session:
        session = self.sessions.get(session_id)
        if session is None:
            session = self.sessions[session_id] = _Session(tenant)
            self.accounts.setdefault(tenant, _Account())
        return session

    def _spend(self, session: _Session, usd: float, tokens: int) -> None:
        # Cumulative and monotone: the larger of what the ledger and the session know.
        account = self.accounts[session.tenant]
        if usd > session.spent_usd:
            account.spent_usd += usd - session.spent_usd
            session.spent_usd = usd
        if tokens > session.spent_tokens:
            account.spent_tokens += tokens - session.spent_tokens
            session.spent_tokens = tokens

    def _hold(self, session: _Session, usd: float, tokens: int) -> None:
        account = self.accounts[session.tenant]
        held = session.reserved_usd > 0 or session.reserved_tokens > 0
        holds = usd > 0 or tokens > 0
        account.reserved_usd += usd - session.reserved_usd
        account.reserved_tokens += tokens - session.reserved_tokens
        account.holders += int(holds) - int(held)
        if account.holders == 0:  # no drift from float subtraction once nothing is held
            account.reserved_usd = 0.0
            account.reserved_tokens = 0
        session.reserved_usd = usd
        session.reserved_tokens = tokens


class LocalBudget:
    """The runners' BudgetPort over a ledger in the same process (one host, no Ray).

    The fleet's ledger actor answers the same calls through Ray (``fleet.py``).
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def reserve(
        self,
        tenant: str,
        session_id: str,
        usd: float,
        tokens: int,
        spent_usd: float,
        spent_tokens: int,
    ) -> tuple[bool, str]:
        return self.ledger.reserve(tenant, session_id, usd, tokens, spent_usd, spent_tokens)

    async def release(
        self, tenant: str, session_id: str, spent_usd: float, spent_tokens: int
    ) -> None:
        self.ledger.release(tenant, session_id, spent_usd, spent_tokens)
