"""Event types: frozen, tagged msgspec Structs in one union, plus the envelope.

Rules that keep old logs readable forever (see tests/golden):

* an event type is never renamed or removed; its tag is its class name;
* a field is never removed, reordered, renamed or retyped;
* a new field always gets a default, so older records still decode;
* unknown fields written by a newer version are ignored on decode, and an
  unknown event *type* decodes as :class:`UnknownEvent` (see ``codec``).

Events are named in the past tense: each records something that happened.
Times and ids are made where the effect happens and stored here, so that a
replay reads them instead of making new ones.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

__all__ = [
    "BlobRef",
    "Payload",
    "Limits",
    "EventBase",
    # session lifecycle and ownership
    "SessionCreated",
    "SessionClaimed",
    "CancelRequested",
    "SessionCompleted",
    "SessionFailed",
    "SessionCancelled",
    "SnapshotTaken",
    # model calls
    "ModelCallRequested",
    "ModelCallRetried",
    "ModelResponded",
    "ModelCallFailed",
    # tool calls and review
    "ToolCallProposed",
    "ToolCallVetted",
    "ToolCallRejected",
    "ReviewRequested",
    "ReviewDecided",
    "ToolCallStarted",
    "ToolCallCompleted",
    "ToolCallFailed",
    # context management and governance
    "ContextCompacted",
    "ContextRepaired",
    "LimitExceeded",
    "UnknownEvent",
    "Event",
    "EVENT_TYPES",
    "Envelope",
    "payload_text",
]


class BlobRef(msgspec.Struct, frozen=True):
    """A large payload stored once in the content-addressed blob store beside the log."""

    sha256: str
    size: int


#: A text field that the log may move to the blob store when it is large.
Payload = str | BlobRef


def payload_text(value: Payload) -> str:
    """The text of a payload; the log resolves blob references on ``read_stream``."""
    if isinstance(value, BlobRef):
        raise TypeError(f"blob {value.sha256} was not resolved; read it with log.load_blob")
    return value


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The caps a session runs under (SPEC §6 ``[limits]``), resolved when it is created."""

    max_steps: int = 25
    max_tokens: int = 50_000
    max_cost_usd: float = 1.0
    step_timeout_s: float = 30.0
    total_timeout_s: float = 300.0
    max_identical_calls: int = 3


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every event. ``blob_fields`` name the ``Payload`` fields the log may externalize."""

    blob_fields: ClassVar[tuple[str, ...]] = ()


# --- session lifecycle and ownership -------------------------------------------------


class SessionCreated(EventBase, frozen=True, kw_only=True):
    """A task became a session. Everything the loop needs to replay it is fixed here."""

    blob_fields: ClassVar[tuple[str, ...]] = ("prompt",)

    task_id: str
    prompt: Payload
    agent_type: str = "default"
    tenant: str = "default"
    model: str = "scripted"
    system: str = ""
    tools: list[str] = []
    limits: Limits = Limits()
    workspace: str = ""


class SessionClaimed(EventBase, frozen=True, kw_only=True):
    """An owner took the session with a new epoch; older epochs are fenced off from now on."""

    owner: str
    node: str = ""
    epoch: int
    #: What its exec tools run under from now on: "on", "off" (set so explicitly) or
    #: "unavailable: <why>" (they are refused). "" in logs written before the sandbox.
    sandbox: str = ""


class CancelRequested(EventBase, frozen=True, kw_only=True):
    by: str = ""
    note: str = ""


class SessionCompleted(EventBase, frozen=True, kw_only=True):
    blob_fields: ClassVar[tuple[str, ...]] = ("result",)

    result: Payload = ""


class SessionFailed(EventBase, frozen=True, kw_only=True):
    """``error`` is ``CODE: detail`` with a code from SPEC §3."""

    error: str


class SessionCancelled(EventBase, frozen=True, kw_only=True):
    note: str = ""


class SnapshotTaken(EventBase, frozen=True, kw_only=True):
    """The folded state up to ``upto_seq`` (JSON), so a long stream replays from here."""

    blob_fields: ClassVar[tuple[str, ...]] = ("state",)

    upto_seq: int
    state: Payload


# --- model calls ------------------------------------------------------------------------


class ModelCallRequested(EventBase, frozen=True, kw_only=True):
    """Written before the call. ``reserved_*`` hold the call's worst case against the
    tenant's budget until its answer (or the session's end) is in the log."""

    step: int
    request_id: str
    model: str
    input_tokens_estimate: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    max_tokens: int = 0
    #: "" for a step of the task; "compaction" for a summary of older turns (SPEC §2).
    purpose: str = ""
    #: The uncalibrated estimate of the request: what the reply's usage calibrates.
    estimate_basis: int = 0
    #: A summary request replaces messages[1:compact_upto] once answered.
    compact_upto: int = 0


class ModelCallRetried(EventBase, frozen=True, kw_only=True):
    """One failed attempt that will be retried (429, 5xx, 529, timeout)."""

    step: int
    request_id: str
    attempt: int
    error: str
    status_code: int | None = None
    delay_ms: float = 0.0


class ModelResponded(EventBase, frozen=True, kw_only=True):
    """``content`` is the response's content blocks as JSON."""

    blob_fields: ClassVar[tuple[str, ...]] = ("content",)

    step: int
    request_id: str
    model: str
    content: Payload
    stop_reason: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    purpose: str = ""  # as its ModelCallRequested's: a compaction summary is not a turn


class ModelCallFailed(EventBase, frozen=True, kw_only=True):
    step: int
    request_id: str
    error: str
    status_code: int | None = None
    retryable: bool = False
    purpose: str = ""


# --- tool calls and human review ------------------------------------------------------


class ToolCallProposed(EventBase, frozen=True, kw_only=True):
    """The model asked for a tool call: ``call_id`` is the tool_use id, ``input`` is JSON."""

    blob_fields: ClassVar[tuple[str, ...]] = ("input",)

    step: int
    call_id: str
    tool: str
    input: Payload


Verdict = Literal["allow", "ask", "deny"]


class ToolCallVetted(EventBase, frozen=True, kw_only=True):
    call_id: str
    verdict: Verdict
    risk: str
    reason: str = ""
    rule: str = ""


class ToolCallRejected(EventBase, frozen=True, kw_only=True):
    """The call never runs (unknown tool, invalid input, denied); the model gets ``is_error``."""

    call_id: str
    reason: str


class ReviewRequested(EventBase, frozen=True, kw_only=True):
    """A human must decide (policy ``ask``, or a non-idempotent call left in doubt by a crash)."""

    call_id: str
    reason: str
    in_doubt: bool = False
    call_hash: str = ""  # of (tool, input): what a decision must name


class ReviewDecided(EventBase, frozen=True, kw_only=True):
    """A human's decision, bound to the exact call: its id and ``call_hash`` of (tool, input).

    ``edited_input`` (a JSON object; "" when not edited): approved with this input instead
    of the model's. The call is vetted again with it (a deny rule still refuses it; an ask
    rule is answered by this approval), runs with it, and the model is told of the edit.
    """

    call_id: str
    approved: bool
    reviewer: str = ""
    note: str = ""
    end_session: bool = False
    call_hash: str = ""
    edited_input: str = ""


class ToolCallStarted(EventBase, frozen=True, kw_only=True):
    call_id: str
    idempotency_key: str
    attempt: int = 1


class ToolCallCompleted(EventBase, frozen=True, kw_only=True):
    blob_fields: ClassVar[tuple[str, ...]] = ("output",)

    call_id: str
    output: Payload
    is_error: bool = False
    latency_ms: float = 0.0
    #: What the model sees when ``output`` (kept whole) is over the size a result may
    #: take of the context window: head, tail and how to page through the rest.
    excerpt: str = ""


class ToolCallFailed(EventBase, frozen=True, kw_only=True):
    call_id: str
    error: str
    latency_ms: float = 0.0


# --- context management and loop governance -------------------------------------------


class ContextCompacted(EventBase, frozen=True, kw_only=True):
    """The context was made smaller; the task and tool_use/tool_result pairs survive.

    ``stage``: ``clear_tool_results`` replaced the results of ``cleared`` (call ids, in
    messages from ``first_message`` on) by placeholders; ``summarize`` replaced
    ``messages[first_message : first_message + dropped_messages]`` by ``summary``, which
    the model call ``request_id`` wrote (``digest``: the same, written by an older
    version without a model). Token counts are calibrated estimates.
    """

    blob_fields: ClassVar[tuple[str, ...]] = ("summary",)

    step: int
    tokens_before: int
    tokens_after: int
    dropped_messages: int
    summary: Payload = ""
    stage: str = "digest"
    first_message: int = 1
    cleared: list[str] = []
    request_id: str = ""


class ContextRepaired(EventBase, frozen=True, kw_only=True):
    """The conversation broke an API rule before a request; it was repaired, not sent.

    Always a bug somewhere: ``problems`` says what was found. Folding this event applies
    the same deterministic repair (``context.repair``), so replay sees what the model saw.
    """

    step: int
    problems: list[str] = []


class LimitExceeded(EventBase, frozen=True, kw_only=True):
    """A cap was hit; ``code`` is one of SPEC §3's failure reasons."""

    code: str
    limit: float
    value: float
    detail: str = ""


class UnknownEvent(EventBase, frozen=True, kw_only=True):
    """Stands in, on read, for an event type this version does not know (a newer writer's).

    It is never written; readers report it with its position instead of crashing.
    """

    type_name: str
    raw: bytes = b""


Event = (
    SessionCreated
    | SessionClaimed
    | CancelRequested
    | SessionCompleted
    | SessionFailed
    | SessionCancelled
    | SnapshotTaken
    | ModelCallRequested
    | ModelCallRetried
    | ModelResponded
    | ModelCallFailed
    | ToolCallProposed
    | ToolCallVetted
    | ToolCallRejected
    | ReviewRequested
    | ReviewDecided
    | ToolCallStarted
    | ToolCallCompleted
    | ToolCallFailed
    | ContextCompacted
    | ContextRepaired
    | LimitExceeded
    | UnknownEvent
)

EVENT_TYPES: tuple[type[EventBase], ...] = (
    SessionCreated,
    SessionClaimed,
    CancelRequested,
    SessionCompleted,
    SessionFailed,
    SessionCancelled,
    SnapshotTaken,
    ModelCallRequested,
    ModelCallRetried,
    ModelResponded,
    ModelCallFailed,
    ToolCallProposed,
    ToolCallVetted,
    ToolCallRejected,
    ReviewRequested,
    ReviewDecided,
    ToolCallStarted,
    ToolCallCompleted,
    ToolCallFailed,
    ContextCompacted,
    ContextRepaired,
    LimitExceeded,
    UnknownEvent,
)


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """One stored event: where it sits in the log and who wrote it.

    ``position`` is global and contiguous from 1; ``seq`` is per session and
    contiguous from 1; ``epoch`` is the writing owner's epoch (fencing); ``ts``
    is Unix time in seconds at append. Stored as an array (no field names) to
    keep records small: new fields may only ever be appended, with defaults.
    """

    position: int
    session_id: str
    seq: int
    epoch: int
    ts: float
    event_id: str
    event: Event
