"""The model's calls to business tools, from its `function_call` item to the answer. Sans-I/O.

Rules (each one a failure seen elsewhere, see the README's "Agents and tools"):

1. **Only a completed call runs.** A `function_call` item whose status is not `completed`
   (its response was cut off while the arguments were being written) never runs; the
   session checks that before `call`.
2. **Arguments are checked first**, against the tool's JSON Schema: invalid ones go back to
   the model as an error output (naming the paths and rules broken, never the values), and
   the tool is not called.
3. **One batch per response.** The calls of one response run concurrently (`RunTool` each,
   as its item completes); their outputs go to the model in the order the model made the
   calls (built-in tools' outputs included), and once all are in and the response is done,
   the model is asked to answer — unless the caller's own turn is still to be answered
   (the caller is speaking, or has spoken and no response has started since: that answer
   will see the outputs), every run was cancelled, or the call is ending. A result that
   comes after the caller's turn was answered gets its own answer: it is never lost.
   After `MAX_TOOL_ROUNDS` answers in a row with no word from the caller, the answer may
   call no tool (a model looping on a failing tool stops).
4. **Barge-in while a tool runs**: a `cancel` tool is stopped (`CancelTool`) and the model
   gets `{"error": "cancelled..."}`; a `continue` tool's result is still delivered. Either
   way the batch's answer is no longer the model's to give unasked: the caller has spoken.
5. **A slow tool gets a filler**: the caller waits in silence at most `filler_after_ms`
   for it: when that time is up and the line is quiet, the session asks for a short spoken
   filler (`filler`); when the bot is still talking then (its own "let me look that up"),
   the wait starts again once the line goes quiet. It is an ordinary response, so it never
   overlaps the answer (which queues behind it, or withdraws it if it was not yet started)
   and a barge-in stops it like any other.
6. **Results are inputs.** A run's outcome comes back as a `tool_result` input (recorded in
   call fixtures), so a replay feeds the recorded outcome at its recorded time and never
   calls anything. A result for a call that is not running (cancelled, unknown) is bad
   input, skipped. The core bounds every run itself: `timeout_ms` plus `TIMEOUT_GRACE_MS`
   after it started, a run with no result is stopped and answered as a timeout (a Python
   tool that ignores its cancellation can't hold the call).

Values of a tool's `redact` arguments never reach a log line, a record or an error output
(a problem at a redacted argument reads `$.card: invalid (redacted)`); a fixture holds
`***` for a valid one and `***!` for an invalid one (`redacted_arguments`, which the
recorder uses), and a replaying core (`trust_redacted`) takes those verdicts instead of
checking the value again, so the replay decides exactly as the live call did. A live call
never trusts a marker: a model sending `***` is checked like any value.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any, Final

import orjson
from jsonschema import Draft202012Validator

from app.call.actions import CancelTool, RunTool
from app.call.config import CallConfig
from app.call.inbound import short
from app.call.measures import Measures
from app.call.outbox import Outbox, Timer
from app.call.toolspec import ToolSpec
from app.observability import log_event
from app.protocol import realtime as rt

logger = logging.getLogger("app.call")

#: What a redacted argument's value is recorded as (and replayed with).
REDACTED: Final = "***"
#: ... and an invalid one (the verdict the live call reached, for the replay).
REDACTED_INVALID: Final = "***!"
#: Tool answers in a row with no word from the caller before the answer may call no tool.
MAX_TOOL_ROUNDS: Final = 5
#: How long past its own timeout a run may go unanswered before the core gives up on it.
TIMEOUT_GRACE_MS: Final = 2000
#: Most schema problems named in one error output.
MAX_PROBLEMS: Final = 5
#: Arguments longer than this (JSON text) are not parsed: no tool takes a novel.
MAX_ARGUMENT_CHARS: Final = 64 * 1024
CANCELLED_OUTPUT: Final = '{"error": "cancelled: the caller interrupted before the tool finished"}'
ENDED_OUTPUT: Final = '{"error": "cancelled: the call is over"}'
NO_ANSWER_OUTPUT: Final = '{"error": "the tool did not answer in time"}'


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    """One compiled validator per schema (schemas are few, calls many)."""
    return Draft202012Validator(json.loads(schema_json))


def schema_problems(
    spec: ToolSpec, arguments: dict[str, Any], *, trust_redacted: bool = False
) -> list[str]:
    """What is wrong with `arguments` for `spec`, by JSON path and rule, without the values
    (they may be a card number): a redacted argument's problems are one generic line.
    `trust_redacted` (a replay): a redacted argument recorded as `***` was valid live, one
    recorded as `***!` was not (module docstring)."""
    validator = _validator(json.dumps(spec.parameters, sort_keys=True))
    found: dict[tuple[str, ...], str] = {}
    try:
        errors = list(validator.iter_errors(arguments))
    except RecursionError:  # a recursive schema over a deep value
        return ["$: the arguments are nested too deeply"]
    for error in errors:
        path = [str(step) for step in error.absolute_path]
        if path and path[0] in spec.redact:
            if not trust_redacted:
                found[(path[0],)] = f"$.{path[0]}: invalid (redacted)"
            continue
        rule = json.dumps(error.validator_value, default=str)
        if len(rule) > 80:
            rule = rule[:77] + "..."
        key = (*path, "", str(error.validator))
        found.setdefault(key, f"{error.json_path}: {error.validator} {rule}")
    if trust_redacted:
        for name in spec.redact:
            if arguments.get(name) == REDACTED_INVALID:
                found[(name,)] = f"$.{name}: invalid (redacted)"
    return [found[key] for key in sorted(found)][:MAX_PROBLEMS]


def redacted_arguments(spec: ToolSpec, text: object) -> object:
    """A function call's arguments (JSON text) as a fixture records them: each redacted
    argument `***` (valid) or `***!` (invalid), so a replay reaches the same verdict;
    text that doesn't parse is `***`, and JSON that isn't an object a value of the same
    kind (both still refused alike in a replay)."""
    if type(text) is not str:
        return text
    arguments, problem = parse_arguments(text)
    if problem is not None:
        return REDACTED
    if not isinstance(arguments, dict):
        return {list: "[]", str: '""', bool: "false", type(None): "null"}.get(type(arguments), "0")
    bad = {p.split(":", 1)[0].removeprefix("$.") for p in schema_problems(spec, arguments)}
    hidden = {
        k: ((REDACTED_INVALID if k in bad else REDACTED) if k in spec.redact else v)
        for k, v in arguments.items()
    }
    return json.dumps(hidden)


def redacted(spec: ToolSpec | None, arguments: Any) -> Any:
    """`arguments` with the values of `spec.redact` replaced by `***` (for logs, records,
    fixtures)."""
    if spec is None or not spec.redact or not isinstance(arguments, dict):
        return arguments
    return {k: (REDACTED if k in spec.redact else v) for k, v in arguments.items()}


def parse_arguments(text: str) -> tuple[Any, str | None]:
    """The arguments' JSON value, or None and why not. orjson: its depth limit turns a
    value nested past 1024 levels into an error, not a RecursionError."""
    if len(text) > MAX_ARGUMENT_CHARS:
        return None, "$: the arguments are not a JSON text of a sane size"
    if not text.strip():
        return {}, None
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError:
        return None, "$: the arguments are not valid JSON"


class State(Enum):
    RUNNING = "running"
    DONE = "done"


@dataclass(slots=True)
class Run:
    """One call of the model's to a business tool."""

    call_id: str
    name: str
    spec: ToolSpec | None
    started_ms: float
    state: State = State.RUNNING
    output: str | None = None
    result: str = ""
    arguments: Any = None  # redacted, for the record
    sent: bool = False  # its output went to the model
    filler_at: float | None = None
    #: The filler came due while the line wasn't quiet: its wait restarts when it is.
    filler_waiting: bool = False
    #: When the core gives up waiting for its result (`TIMEOUT_GRACE_MS` past its timeout).
    deadline: float | None = None


@dataclass(slots=True)
class Batch:
    """The tool calls of one response, in the order the model made them."""

    response_id: str
    runs: list[Run] = field(default_factory=list)
    response_done: bool = False
    #: The caller spoke since the call was made (their turn, a barge-in, a key press).
    caller_spoke: bool = False
    #: ... and no response has started since: that turn's answer will see the outputs.
    turn_pending: bool = False
    filler_asked: bool = False


class Flush(Enum):
    """What a batch needs once its outputs are all sent."""

    NOTHING = "nothing"
    ANSWER = "answer"  # ask the model to answer with the outputs
    ANSWER_NO_TOOLS = "answer_no_tools"  # ... and it may not call a tool again


class ToolCalls:
    """The business tool calls of one call."""

    def __init__(
        self, outbox: Outbox, config: CallConfig, measures: Measures, *, trust_redacted: bool
    ) -> None:
        self.out = outbox
        self.config = config
        self.measures = measures
        self.trust_redacted = trust_redacted
        self.runs: dict[str, Run] = {}
        self._batches: dict[str, Batch] = {}
        #: Responses already done (a call item arriving after its `response.done`).
        self._done: set[str] = set()
        #: Batches answered in a row with no word from the caller.
        self.rounds = 0

    # -- questions ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._running())

    def offers(self, name: str | None) -> bool:
        return name is not None and self.config.function(name) is not None

    # -- the model's calls ----------------------------------------------------------------

    def call(self, now: float, item: dict[str, Any], response_id: str, cut_off: bool) -> None:
        """A completed `function_call` item for one of the call's business tools, in
        response `response_id` (`cut_off`: the caller has already cut that response off)."""
        name: str = item["name"]
        call_id: str = item["call_id"]
        spec = self.config.function(name)
        assert spec is not None  # the session checked `offers`
        if call_id in self.runs:
            self.out.bad("realtime", "duplicate_call_id")
            return
        batch = self._batch(response_id)
        if cut_off:
            batch.caller_spoke = True
        run = Run(call_id, name, spec, now)
        self.runs[call_id] = run
        batch.runs.append(run)
        arguments, problems = self._arguments(item.get("arguments"), spec)
        run.arguments = redacted(spec, arguments)
        if problems:
            log_event(
                logger, logging.WARNING, "tool.invalid_arguments", tool=name, problems=problems
            )
            output = json.dumps({"error": "invalid arguments", "problems": problems})
            self._finish(now, run, "error", output, "invalid_arguments")
            return
        if cut_off and spec.on_interrupt == "cancel":
            log_event(logger, logging.INFO, "tool.not_run", tool=name, reason="interrupted")
            self._finish(now, run, "cancelled", CANCELLED_OUTPUT, "interrupted")
            return
        log_event(logger, logging.INFO, "tool.started", tool=name, call_id=short(call_id))
        assert isinstance(arguments, dict)
        self.out.emit(RunTool(call_id, name, arguments, spec.timeout_ms))
        run.deadline = now + spec.timeout_ms + TIMEOUT_GRACE_MS
        self._arm_deadline()
        if spec.filler_after_ms > 0:
            run.filler_at = now + spec.filler_after_ms
            self._arm_filler()

    def unknown(self, now: float, item: dict[str, Any], response_id: str) -> None:
        """A completed call to a tool the call doesn't offer: an error output, in order."""
        name, call_id = item.get("name"), item["call_id"]
        if call_id in self.runs:
            self.out.bad("realtime", "duplicate_call_id")
            return
        log_event(logger, logging.WARNING, "tool.unknown", tool=short(name))
        run = Run(call_id, short(name) or "?", None, now)
        self.runs[call_id] = run
        self._batch(response_id).runs.append(run)
        self._finish(now, run, "error", '{"error": "unknown tool"}', "unknown_tool")

    def answered(self, now: float, item: dict[str, Any], response_id: str, output: str) -> bool:
        """A built-in tool's call (`end_call`, `transfer_call`), answered at once by the
        session: its output takes its place in the batch's order (recorded by the
        session, not here). False for a call id seen before (nothing is sent twice)."""
        call_id = item["call_id"]
        if call_id in self.runs:
            self.out.bad("realtime", "duplicate_call_id")
            return False
        run = Run(call_id, str(item.get("name")), None, now, State.DONE, output)
        self.runs[call_id] = run
        self._batch(response_id).runs.append(run)
        return True

    def result(self, now: float, answer: dict[str, Any]) -> bool:
        """A `tool_result` input (the driver's, or a fixture's): True when it was taken."""
        call_id = answer.get("call_id")
        run = self.runs.get(call_id) if type(call_id) is str else None
        if run is None or run.state is not State.RUNNING:
            # Cancelled by a barge-in (its late result is moot) or never ours.
            self.out.bad("rest", "unexpected_tool_result")
            return False
        result = answer.get("result")
        output = answer.get("output")
        if result not in ("ok", "error", "timeout") or type(output) is not str:
            self.out.bad("rest", "malformed_tool_result")
            result, output = "error", '{"error": "the tool failed"}'
        detail = answer.get("detail")
        self._finish(now, run, result, output, detail if type(detail) is str else "")
        self._arm_filler()
        self._arm_deadline()
        return True

    def past_deadline(self, now: float) -> None:
        """The deadline timer fired: runs the driver never answered are given up."""
        for run in self.runs.values():
            if run.state is State.RUNNING and run.deadline is not None and run.deadline <= now:
                self.out.emit(CancelTool(run.call_id))
                log_event(logger, logging.WARNING, "tool.no_answer", tool=run.name)
                self._finish(now, run, "timeout", NO_ANSWER_OUTPUT, "no_answer")
        self._arm_deadline()
        self._arm_filler()

    def _arm_deadline(self) -> None:
        self._arm(Timer.TOOL_DEADLINE, [run.deadline for run in self._running()])

    # -- the call's other events ----------------------------------------------------------------

    def response_done(self, response_id: str) -> None:
        self._done.add(response_id)
        batch = self._batches.get(response_id)
        if batch is not None:
            batch.response_done = True

    def turn_answering(self) -> None:
        """The caller's turn is being answered from now on (a response started, or the
        service committed the turn to answer it by itself): outputs sent later are not
        in view of that answer and need one of their own."""
        for batch in self._open_batches():
            batch.turn_pending = False

    def caller_spoke(self, now: float) -> None:
        """The caller cut the bot off, or took a turn while a tool ran: `cancel` tools
        stop, and no open batch answers unasked (the caller's turn gets the answer, and
        it will see the outputs)."""
        self.rounds = 0
        now_cancelled = []
        for batch in self._open_batches():
            batch.caller_spoke = batch.turn_pending = True
            for run in batch.runs:
                if run.state is State.RUNNING and run.spec and run.spec.on_interrupt == "cancel":
                    now_cancelled.append(run)
        for run in now_cancelled:
            self.out.emit(CancelTool(run.call_id))
            log_event(logger, logging.INFO, "tool.cancelled", tool=run.name, reason="interrupted")
            self._finish(now, run, "cancelled", CANCELLED_OUTPUT, "interrupted")
        self._arm_filler()

    def ended(self, now: float) -> None:
        """The call is over: runs still going are stopped, and recorded as cancelled."""
        for run in self.runs.values():
            if run.state is State.RUNNING:
                self.out.emit(CancelTool(run.call_id))
                run.state, run.result, run.output = State.DONE, "cancelled", ENDED_OUTPUT
                self._measure(now, run, "call_ended")
        self.out.cancel_timer(Timer.TOOL_FILLER)
        self.out.cancel_timer(Timer.TOOL_DEADLINE)

    # -- fillers --------------------------------------------------------------------------

    def filler_due(self, now: float, quiet: bool) -> ToolSpec | None:
        """The filler timer fired: the spec whose filler to say now, if a run still needs
        one (each batch gets at most one, none once the caller has spoken). Not `quiet`:
        the due ones wait for the line to go quiet (`line_quiet`)."""
        chosen: ToolSpec | None = None
        for batch in self._open_batches():
            for run in batch.runs:
                due = run.filler_at
                if run.state is not State.RUNNING or due is None or due > now:
                    continue
                run.filler_at = None
                if batch.filler_asked or batch.caller_spoke:
                    continue
                if not quiet:
                    run.filler_waiting = True
                elif chosen is None:
                    batch.filler_asked = True
                    chosen = run.spec
        self._arm_filler()
        return chosen

    def line_quiet(self, now: float) -> None:
        """The bot and the caller are both silent: fillers that came due while they
        weren't count their wait from now."""
        for run in self.runs.values():
            if run.filler_waiting:
                run.filler_waiting = False
                if run.state is State.RUNNING and run.spec is not None:
                    run.filler_at = now + run.spec.filler_after_ms
        self._arm_filler()

    def _arm_filler(self) -> None:
        self._arm(Timer.TOOL_FILLER, [run.filler_at for run in self._running()])

    def _running(self) -> list[Run]:
        return [run for run in self.runs.values() if run.state is State.RUNNING]

    def _arm(self, timer: Timer, deadlines: list[float | None]) -> None:
        """`timer` at the earliest of `deadlines` (None: that run has none), or off."""
        due = [at for at in deadlines if at is not None]
        if due:
            self.out.set_timer(timer, min(due))
        else:
            self.out.cancel_timer(timer)

    # -- outputs --------------------------------------------------------------------------

    def flush(self, answering: bool = False) -> list[Flush]:
        """Send every output whose turn has come (in call order within each batch); for
        each batch now complete, whether the model should answer it. `answering`: a
        response is active or asked for (it began before these outputs)."""
        wants: list[Flush] = []
        for batch in list(self._batches.values()):
            for run in batch.runs:
                if run.state is State.RUNNING:
                    break
                if not run.sent:
                    run.sent = True
                    assert run.output is not None
                    self.out.realtime(rt.function_output(run.call_id, run.output))
            complete = batch.response_done and all(r.sent for r in batch.runs)
            if complete:  # settled: it leaves the open batches
                del self._batches[batch.response_id]
                wants.append(self._want(batch, answering))
        return wants

    def _want(self, batch: Batch, answering: bool) -> Flush:
        if batch.caller_spoke and batch.turn_pending and not answering:
            return Flush.NOTHING  # the caller's turn is answered next, outputs in view
        tools = [run for run in batch.runs if run.spec is not None]
        if tools and all(run.result == "cancelled" for run in tools):
            return Flush.NOTHING  # nothing was done: nothing to say about it
        self.rounds += 1
        return Flush.ANSWER_NO_TOOLS if self.rounds > MAX_TOOL_ROUNDS else Flush.ANSWER

    def _batch(self, response_id: str) -> Batch:
        batch = self._batches.get(response_id)
        if batch is None:
            batch = self._batches[response_id] = Batch(response_id)
            # An item after its response's end (or without a response id): nothing more
            # of it is coming, so it completes as soon as its runs do.
            batch.response_done = response_id in self._done or not response_id
        return batch

    def _open_batches(self) -> list[Batch]:
        return list(self._batches.values())

    def _arguments(self, text: object, spec: ToolSpec) -> tuple[Any, list[str]]:
        """The call's arguments, parsed, and what is wrong with them."""
        if type(text) is not str:
            return None, ["$: the arguments are not a JSON text"]
        arguments, problem = parse_arguments(text)
        if problem is not None:
            return None, [problem]
        if not isinstance(arguments, dict):
            return None, ["$: the arguments are not a JSON object"]
        return arguments, schema_problems(spec, arguments, trust_redacted=self.trust_redacted)

    def _finish(self, now: float, run: Run, result: str, output: str, detail: str) -> None:
        run.state, run.result, run.output = State.DONE, result, output
        run.filler_at = run.deadline = None
        self._measure(now, run, detail)

    def _measure(self, now: float, run: Run, detail: str) -> None:
        ms = max(0, round(now - run.started_ms))
        extra: dict[str, Any] = {"call_id": run.call_id, "at_ms": round(run.started_ms)}
        if detail:
            extra["detail"] = detail
        if run.arguments is not None:
            extra["arguments"] = run.arguments
        ran = run.spec is not None and detail not in ("invalid_arguments", "interrupted")
        label = None if run.spec is not None else "unknown"  # a name the model made up
        self.measures.tool_call(run.name, run.result, ms, ran=ran, label=label, **extra)
        fields: dict[str, Any] = {"tool": run.name, "result": run.result, "ms": ms}
        if detail:
            fields["detail"] = detail
        log_event(logger, logging.INFO, "tool.done", **fields)
