"""Zone 2's cost tracker: prices, budgets, the ledger and the circuit breakers, glued together.

The proxy asks :meth:`CostTracker.admit` before forwarding a metered LLM call
and calls :meth:`CostTracker.settle` exactly once when it is over (whatever
happened in between). Breaker transitions and refusals become events that the
daemon records (``fleetd events``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleetd.units import format_usd
from fleetd.zone2.breaker import Admit, Breaker, BreakerSettings, Reject, RetrySettings, Transition
from fleetd.zone2.budget import Budgets, Refusal, Reservation, TaskCap, month_key
from fleetd.zone2.contract import AgentFigures, BreakerStatus, InstanceFigures, Registration, Zone2Policy
from fleetd.zone2.counters import Counts
from fleetd.zone2.ledger import Call, Ledger
from fleetd.zone2.llm import OVERHEAD_TOKENS, LLMRequest, Media, Usage
from fleetd.zone2.pricing import Price, PriceTable, bound_nusd, cost_nusd
from fleetd.zone2.providers import provider

log = logging.getLogger("fleetd.zone2")
DEFAULT_MAX_OUTPUT = 128_000  # when neither the request nor the price table bounds the output
# When the price table does not name a model's input limit: the largest of the models it lists (GPT-4.1's
# context window of 1,047,576 tokens, GPT-5.4's 1,050,000).
DEFAULT_MAX_INPUT = 1_050_000
# An image of a model whose price names no image_tokens: the largest worst case any provider publishes (GPT-4o mini
# at high detail: 2,833 + 8 tiles x 5,667 tokens).
DEFAULT_IMAGE_TOKENS = 48_169
MAX_SERVED = 1024  # names remembered as served by a dearer model (see CostTracker._cost)
REFUSAL_EVENT_EVERY = 60.0  # at most one refusal event per agent and kind per minute
LEDGER_RETRY_EVERY = 1.0  # s: while ledger rows wait unwritten, how often an admission tries to write them
Emit = Callable[[str, str | None, str, dict[str, Any]], None]  # (type, agent_id, message, data)


@dataclass(frozen=True)
class NotPriced:
    model: str
    fast_mode: bool = False  # the model is priced, its fast mode is not

    @property
    def message(self) -> str:
        if self.fast_mode:
            return (f"fast mode of model {self.model!r} has no price: set its multiple with "
                    "`fleetd price set MODEL ... --fast-multiplier X`")
        return f"model {self.model!r} has no price: set one with `fleetd price set`"


@dataclass(frozen=True)
class LedgerDown:
    """Metered calls are refused while the ledger cannot be written: spend that is not on disk would be
    forgotten by the next start of zone 2, and with it the caps' memory of it."""

    error: str
    retry_after: int = max(1, round(LEDGER_RETRY_EVERY))


@dataclass
class Ticket:
    """One admitted metered call."""

    request_id: str
    reg: Registration
    credential: str
    llm: LLMRequest
    price: Price | None
    reservation: Reservation
    task_id: str | None = None  # the task the agent held when the call was admitted: its ledger row names it
    pool: str | None = None  # the spend pool of the agent's registration when it was admitted: its row names it


def context_tokens(llm: LLMRequest, status: int | None, usage: Usage | None) -> int | None:
    """The tokens a Responses call leaves in its conversation, which a call continuing from it reads again: all of
    its input and its output. Unknown (None) when the call failed, named no response id, or let upstream truncate
    (then the conversation kept upstream may be longer than what this call read)."""
    if usage is None or usage.response_id is None or llm.truncates or status is None or not 200 <= status < 300:
        return None
    return usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens + usage.output_tokens


def media_tokens(media: Media, price: Price) -> int:
    """An upper bound on the tokens of a call's images: each at the model's published worst case for its detail
    (``image_tokens``, ``image_tokens_low``), or at DEFAULT_IMAGE_TOKENS when its price names none; plus the media
    tokens the body asks for itself."""
    full = price.image_tokens or DEFAULT_IMAGE_TOKENS
    return media.images * full + media.images_low * (price.image_tokens_low or full) + media.tokens


def month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=UTC)


class CostTracker:
    def __init__(self, ledger: Ledger, emit: Emit, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ledger = ledger
        self.emit = emit
        self.clock = clock
        self.monotonic = monotonic
        self.prices = PriceTable([])
        self.breaker_settings = BreakerSettings()
        self.retry = RetrySettings()
        self.budgets = Budgets(clock)
        self.breakers: dict[tuple[str, str], Breaker] = {}
        # (agent, kind) -> when its last event went, and about what (a task: a refusal for another is due at once)
        self._last_refusal: dict[tuple[str, str], tuple[float, str]] = {}
        # (credential, model asked for) -> the dearer model its answers said ran; the most recent MAX_SERVED
        self._served: OrderedDict[tuple[str, str], Price] = OrderedDict()
        self.counts = Counts()  # lifetime counters for metrics (zone2.counters)
        self._ledger_failing = False
        self._ledger_tried = 0.0
        self._load()

    def _load(self) -> None:
        since = month_start(self.clock())
        self.budgets.load(self.ledger.history(since))
        self.budgets.load_calls(self.ledger.call_counts(since))

    # -- policy from the daemon ------------------------------------------------
    def configure(self, policy: Zone2Policy) -> None:
        self.prices = PriceTable(policy.prices)
        self.breaker_settings = policy.breaker
        self.retry = policy.retry
        self.budgets.instance_caps = policy.instance
        for breaker in self.breakers.values():
            breaker.settings = self.breaker_settings

    # -- admission -------------------------------------------------------------
    def admit(self, reg: Registration, credential: str, llm: LLMRequest, task: str | None = None,
              task_max_nusd: int | None = None) -> Ticket | Refusal | NotPriced | LedgerDown:
        """Reserve the call's worst case against the agent's, the instance's, (``task``: the task the agent holds,
        capped at ``task_max_nusd``) the task's and (``reg.pool``) the spend pool's caps; the ticket to
        :meth:`settle` it with, or why not."""
        if self.ledger.unwritten and not self._ledger_written():
            return LedgerDown(self.ledger.error or "unknown error")
        self._known(reg.agent_id)
        price = self.prices.lookup(llm.model)
        if price is None and not reg.allow_unpriced:
            return NotPriced(llm.model)
        if llm.fast and price is not None and price.fast_multiplier is None and not reg.allow_unpriced:
            return NotPriced(llm.model, fast_mode=True)
        # A name whose answers said another, dearer model ran is reserved at that model's price too.
        served = self._served.get((credential, llm.model))
        bound = max((self.bound(llm, p) for p in (price, served) if p is not None), default=0)
        cap = None if task is None or task_max_nusd is None else TaskCap(task, task_max_nusd)
        capped = reg.pool if reg.pool is not None and reg.pool.cap_nusd is not None else None
        unread = ((self._task_known(cap.task_id) if cap is not None else None)
                  or (self._pool_known(capped.key) if capped is not None else None))
        if unread is not None:
            return unread
        held = self.budgets.reserve(reg.agent_id, reg.caps, bound, cap, capped)
        if isinstance(held, Refusal):
            self._refused(reg, held)
            return held
        # An uncapped pool is only named in the ledger (a version's spend, read by the daemon): nothing in memory.
        return Ticket(uuid.uuid4().hex, reg, credential, llm, price, held, task,
                      None if reg.pool is None else reg.pool.key)

    def bound(self, llm: LLMRequest, price: Price) -> int:
        """An upper bound on the cost of ``llm`` at ``price``, in nano-USD."""
        model_output = price.max_output_tokens or DEFAULT_MAX_OUTPUT
        max_output = 0 if llm.output_free else llm.max_output_tokens or model_output
        thinking = model_output if llm.thinking_tokens is None else llm.thinking_tokens
        output = (max_output + thinking + llm.prediction_bound) * llm.choices
        # Compaction: the summary step reads at most the request and writes at most max_tokens (its output is cut
        # there, as an on-demand summary's is); the reply reads at most the request and the summary.
        passes = llm.sampling_passes
        return bound_nusd(price, self.input_bound(llm, price) * passes + max_output * (passes - 1),
                          output * passes, priority=llm.priority, one_hour_cache=llm.cache_1h, fast=llm.fast,
                          us_only=llm.us_only)

    def input_bound(self, llm: LLMRequest, price: Price) -> int:
        """An upper bound on the input tokens of a call, with what it reads from upstream state.

        A Responses call continuing a response that zone 2 relayed reads that response's whole context again (its
        input and its output, reasoning included, as recorded in the ledger, and the chat template around those
        items: OVERHEAD_TOKENS more) plus its own body. Any other state kept upstream (a conversation, a stored
        prompt, a response zone 2 has not seen or whose context was truncated), and a PDF or file (billed by its
        pages), can be anything up to the model's input limit (its context window, or less when its provider says
        so)."""
        bound = llm.input_token_bound + media_tokens(llm.media, price)
        unsized = llm.unsized_input or llm.media.unsized
        if llm.previous_response_id is None and not unsized:
            return bound
        known = None if unsized else self.ledger.context_of(llm.previous_response_id or "")
        if known is None:
            return max(bound, price.max_input_tokens or DEFAULT_MAX_INPUT)
        return bound + known + OVERHEAD_TOKENS  # and the template around the items it carries

    def _known(self, agent_id: str) -> None:
        """The agent's windows are in memory: read from the ledger before its first call (or report)."""
        if not self.budgets.known(agent_id):
            rows, earlier = self.ledger.agent_history(agent_id, month_start(self.clock()))
            self.budgets.load_agent(agent_id, rows, earlier)

    def _task_known(self, task_id: str) -> LedgerDown | None:
        """The task's spend is in memory: summed from the ledger (all its attempts, before any restart of zone 2)
        before its first call here; LedgerDown when the ledger cannot be read (the cap cannot be known)."""
        if self.budgets.task_known(task_id):
            return None
        try:
            spent, calls = self.ledger.task_spend(task_id)
        except sqlite3.Error as exc:
            return LedgerDown(f"cannot read the spend of task {task_id}: {exc}")
        self.budgets.load_task(task_id, spent, calls)
        return None

    def _pool_known(self, key: str) -> LedgerDown | None:
        """The spend pool's spend is in memory: summed from the ledger (all its agents', all time, before any restart
        of zone 2) before its first call here; LedgerDown when the ledger cannot be read (the cap cannot be known)."""
        if self.budgets.pool_known(key):
            return None
        try:
            spent, calls = self.ledger.pool_spend(key)
        except sqlite3.Error as exc:
            return LedgerDown(f"cannot read the spend of pool {key}: {exc}")
        self.budgets.load_pool(key, spent, calls)
        return None

    def keep_pools(self, keys: Collection[str]) -> None:
        """The spend pools the live registrations name (zone2.registry.Registry.pools): the others' spend leaves
        memory, each once no call of its is in flight."""
        self.budgets.keep_pools(keys)

    def release_task(self, task_id: str) -> None:
        """No agent holds the task any more (zone2.tasks.HeldTasks): its spend leaves memory, once no call made for
        it is in flight."""
        self.budgets.release_task(task_id)

    def forget(self, agent_id: str) -> None:
        """The agent is gone for good: its windows, breakers and refusal records leave memory (not the ledger)."""
        self.budgets.forget(agent_id)
        for key in [k for k in self.breakers if k[0] == agent_id]:
            del self.breakers[key]
        for key in [k for k in self._last_refusal if k[0] == agent_id]:
            del self._last_refusal[key]

    def _due(self, agent_id: str, kind: str, about: str = "") -> bool:
        """Whether an event of this kind for this agent is due: at most one per REFUSAL_EVENT_EVERY seconds about
        the same thing (a task, a spend pool)."""
        key = (agent_id, kind)
        now = self.monotonic()
        last, subject = self._last_refusal.get(key, (-REFUSAL_EVENT_EVERY, about))
        if subject == about and now - last < REFUSAL_EVENT_EVERY:
            return False
        self._last_refusal[key] = (now, about)
        return True

    def _refused(self, reg: Registration, refusal: Refusal) -> None:
        if self._due(reg.agent_id, refusal.type, str(refusal.data.get("task") or refusal.data.get("pool") or "")):
            self.emit(refusal.type, reg.agent_id, refusal.message, {"role": reg.role, **refusal.data})

    def settle(self, ticket: Ticket, status: int | None, usage: Usage | None, attempts: int,
               unanswered: bool = False) -> int:
        """Charge the call: its real cost; the reserved bound if it succeeded but no usage came, or if it went out
        and no answer came (the upstream may have run and billed a call it never answered: a long generation
        outlasting the read timeout); else 0.

        The budget windows change at once; the ledger row is committed before this returns.
        """
        estimated = False
        cost = 0
        priority = provider(ticket.llm.api).served_at_priority(ticket.llm, usage)
        if status is None and unanswered:
            cost, estimated = ticket.reservation.amount, True
        elif status is not None and 200 <= status < 300:
            if usage is None:
                cost, estimated = ticket.reservation.amount, True
            else:
                cost = self._cost(ticket, usage, priority)
        elif usage is not None:
            # an error that still reports usage is billed as reported
            cost = self._cost(ticket, usage, priority)
        if cost > ticket.reservation.amount:
            # The bound is an upper bound by construction; if usage ever beats it, bill the truth and say so.
            self.emit("reservation_exceeded", ticket.reg.agent_id,
                      f"{ticket.llm.model} call cost {format_usd(cost / 1e9)}, above its reserved bound "
                      f"{format_usd(ticket.reservation.amount / 1e9)}", {"request_id": ticket.request_id})
        self.budgets.settle(ticket.reservation, cost)
        if usage is not None:
            self.counts.metered(usage)
        written = self.ledger.record(Call(
            ticket.request_id, ticket.reservation.at, ticket.reg.agent_id, ticket.reg.role, ticket.credential,
            ticket.llm.api, ticket.llm.model, status, usage or Usage(), cost, ticket.reservation.amount,
            estimated, attempts, context_tokens(ticket.llm, status, usage), ticket.task_id, ticket.pool,
        ))
        self._ledger_health(written)
        return cost

    def _cost(self, ticket: Ticket, usage: Usage, priority: bool) -> int:
        """What ``usage`` costs at the price of the model asked for, or at that of the model the answer says ran
        when it is priced differently (an Azure deployment or an alias chooses its own): the dearer of the two,
        so that a cheap name in the request cannot buy a dear model's tokens. A mismatch is an event."""
        asked = cost_nusd(ticket.price, usage, priority=priority) if ticket.price is not None else 0
        served = self.prices.lookup(usage.model) if usage.model is not None else None
        if served is None or served == ticket.price:
            return asked
        cost = cost_nusd(served, usage, priority=priority)
        if cost > asked:
            self._served[(ticket.credential, ticket.llm.model)] = served
            self._served.move_to_end((ticket.credential, ticket.llm.model))
            while len(self._served) > MAX_SERVED:
                self._served.popitem(last=False)
        if self._due(ticket.reg.agent_id, "model_mismatch"):
            self.emit("model_mismatch", ticket.reg.agent_id,
                      f"asked for model {ticket.llm.model!r}, the answer says {usage.model!r} ran: billed at the "
                      f"dearer of their prices ({format_usd(max(asked, cost) / 1e9)})",
                      {"request_id": ticket.request_id, "asked": ticket.llm.model, "served": usage.model})
        return max(asked, cost)

    # -- ledger failures ------------------------------------------------------
    # A call that was made is answered and charged (in memory) even when its row cannot be written: the
    # upstream has billed it, and an error would only make the agent's SDK retry it. New calls are refused
    # (LedgerDown) until the rows that wait are written, tried at most every LEDGER_RETRY_EVERY seconds.
    def _ledger_written(self) -> bool:
        now = self.monotonic()
        if now - self._ledger_tried < LEDGER_RETRY_EVERY:
            return False
        self._ledger_tried = now
        written = self.ledger.flush()
        self._ledger_health(written)
        return written

    def _ledger_health(self, written: bool) -> None:
        if written == (not self._ledger_failing):
            return
        self._ledger_failing = not written
        if written:
            log.warning("ledger: writing again; metered calls are admitted again")
            self.emit("ledger_recovered", None, "zone 2 writes its ledger again: metered calls are admitted again",
                      {})
            return
        self._ledger_tried = self.monotonic()
        error = self.ledger.error or "unknown error"
        log.error("ledger: cannot write (%s); metered calls are refused until it can", error)
        self.emit("ledger_write_failed", None, f"zone 2 cannot write its ledger ({error}): metered calls are "
                  "refused (503 ledger_unavailable) until it can", {"error": error,
                                                                   "unwritten": len(self.ledger.unwritten)})

    # -- breaker ---------------------------------------------------------------
    def breaker(self, agent_id: str, upstream: str) -> Breaker:
        key = (agent_id, upstream)
        breaker = self.breakers.get(key)
        if breaker is None:
            breaker = self.breakers[key] = Breaker(self.breaker_settings)
        return breaker

    def breaker_admit(self, agent_id: str, upstream: str) -> Admit | Reject:
        admission = self.breaker(agent_id, upstream).admit(self.monotonic())
        if isinstance(admission, Admit) and admission.transition:
            self._transition(agent_id, upstream, admission.transition)
        return admission

    def breaker_record(self, agent_id: str, upstream: str, status: int | None, probe: bool) -> None:
        self.counts.answered(status)
        transition = self.breaker(agent_id, upstream).record(self.monotonic(), status, probe)
        if transition:
            self._transition(agent_id, upstream, transition)

    def _transition(self, agent_id: str, upstream: str, transition: Transition) -> None:
        if str(transition.to) == "open":
            self.counts.breaker_trips += 1
        data: dict[str, Any] = {"upstream": upstream, "state": str(transition.to)}
        if transition.open_seconds is not None:
            data["open_seconds"] = transition.open_seconds
        self.emit(f"circuit_{transition.to}", agent_id, f"circuit to {upstream} {transition.to}: {transition.message}",
                  data)

    # -- reading ---------------------------------------------------------------
    def status(self, agent_id: str) -> AgentFigures:
        """An agent's spend, calls and breakers (GET /control/budget)."""
        self._known(agent_id)
        now = self.monotonic()
        breakers = {upstream: BreakerStatus(str(b.state), max(0.0, round(b.reopen_at - now, 1))
                                            if b.state == "open" else None, b.trips)
                    for (agent, upstream), b in self.breakers.items() if agent == agent_id}
        return AgentFigures(**self.budgets.status(agent_id), month=month_key(self.clock()), breakers=breakers)

    def instance_status(self) -> InstanceFigures:
        """The instance's spend and calls, and the counters since zone 2 started (GET /control/budget)."""
        return InstanceFigures(**self.budgets.instance_status(), month=month_key(self.clock()),
                               counters=self.counts.snapshot())
