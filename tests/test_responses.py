"""Responses on its own: what it sends through the outbox, and the outcomes it reports."""

from __future__ import annotations

from typing import Any

import pytest

from app.call.outbox import Outbox
from app.call.responses import MAX_FAILED_IN_ROW, Finished, Refusal, Request, Responses
from app.protocol import realtime as rt
from tests.core import outbox, to_realtime

ALREADY_ACTIVE = "conversation_already_has_active_response"


def responses() -> tuple[Responses, Outbox]:
    out = outbox()
    return Responses(out), out


def sent(out: Outbox) -> list[dict[str, Any]]:
    return to_realtime(out.take())


def ours(event: dict[str, Any], rid: str) -> dict[str, Any]:
    """The `response.created` payload of the response `event` (our request) started."""
    return {"id": rid, "metadata": event["response"]["metadata"]}


def service(rid: str) -> dict[str, Any]:
    """A response the service started on its own (server VAD): metadata null."""
    return {"id": rid, "metadata": None}


def refusal(event: dict[str, Any], code: str | None = ALREADY_ACTIVE) -> dict[str, Any]:
    return {"type": "invalid_request_error", "code": code, "event_id": event["event_id"]}


def failed(rid: str, code: str | None = None) -> dict[str, Any]:
    details = {"type": "failed", "error": {"type": "server_error", "code": code}}
    return {"id": rid, "status": "failed", "status_details": details}


# -- requests -------------------------------------------------------------------------------


def test_a_request_is_sent_at_once_tagged_with_its_event_id() -> None:
    r, out = responses()
    assert not r.responding
    r.request("Say hi.")
    (create,) = sent(out)
    assert create == rt.response_create("Say hi.", "bridge_response_1")
    assert create["response"]["metadata"] == {rt.REQUEST_KEY: "bridge_response_1"}
    assert r.responding and r.active is None  # asked for, not started yet
    r.created(ours(create, "resp_1"))
    assert r.active == "resp_1" and r.responding


def test_a_request_while_responding_waits_for_the_active_response() -> None:
    r, out = responses()
    r.created(service("resp_vad"))
    r.request("Later.")
    assert sent(out) == []  # a second active response would be refused
    r.send_waiting()
    assert sent(out) == []  # still responding
    r.done({"id": "resp_vad", "status": "completed"})
    r.send_waiting()
    assert sent(out) == [rt.response_create("Later.", "bridge_response_1")]


def test_requests_that_wait_are_merged_into_one() -> None:
    r, out = responses()
    r.created(service("resp_vad"))
    r.request("First.")
    r.request()  # no instructions of its own: the first's are kept
    r.done({"id": "resp_vad", "status": "completed"})
    r.send_waiting()
    (create,) = sent(out)
    assert create["response"]["instructions"] == "First."
    assert r.created(ours(create, "resp_1")) is False
    r.request("Answer.")
    r.request("Closing.", closing=True)  # the later instructions win
    r.done({"id": "resp_1", "status": "completed"})
    r.send_waiting()
    (create,) = sent(out)
    assert create["response"]["instructions"] == "Closing."
    assert r.created(ours(create, "resp_2")) is True  # the merge carries the closing words


def test_request_merge_rules() -> None:
    a = Request("a", closing=False, droppable=True, event_id="x", withdrawn=True)
    assert a.merge(Request(None, closing=True, droppable=True)) == Request(
        "a", closing=True, droppable=True
    )
    assert a.merge(Request("b", droppable=False)) == Request("b", droppable=False)
    # A merged request is a fresh one: no event id, not withdrawn.
    merged = a.merge(Request())
    assert merged.event_id == "" and not merged.withdrawn


def test_request_after_done_always_waits() -> None:
    r, out = responses()
    r.created(service("resp_1"))
    r.request_after_done()
    assert sent(out) == []
    r.done({"id": "resp_1", "status": "cancelled"})
    r.send_waiting()
    (create,) = sent(out)
    assert create["type"] == "response.create" and "instructions" not in create["response"]


def test_send_waiting_with_nothing_waiting_sends_nothing() -> None:
    r, out = responses()
    r.send_waiting()
    assert sent(out) == [] and not r.responding


# -- response.created -------------------------------------------------------------------------


def test_created_tells_ours_from_the_services_own_by_the_metadata_tag() -> None:
    r, out = responses()
    r.request()
    (create,) = sent(out)
    assert r.created(service("resp_vad")) is False
    assert r.active == "resp_vad" and r.responding
    # Ours is still in flight: when the service's own is done, we are still responding.
    r.done({"id": "resp_vad", "status": "completed"})
    assert r.responding and r.active is None
    other_tag = {"id": "resp_x", "metadata": {rt.REQUEST_KEY: "bridge_response_99"}}
    assert r.created(other_tag) is False and r.responding
    assert r.created(ours(create, "resp_1")) is False  # ours, not closing
    r.done({"id": "resp_1", "status": "completed"})
    assert not r.responding


def test_created_without_metadata_is_taken_for_ours_when_one_is_in_flight() -> None:
    r, out = responses()
    assert r.created({"id": "resp_0"}) is False  # nothing of ours in flight
    r.done({"id": "resp_0", "status": "completed"})
    r.request(closing=True)
    sent(out)
    assert r.created({"id": "resp_1"}) is True  # a service that doesn't echo metadata
    r.done({"id": "resp_1", "status": "completed"})
    assert not r.responding


def test_created_for_the_closing_words_is_true() -> None:
    r, out = responses()
    r.request("Say goodbye.", closing=True)
    (create,) = sent(out)
    assert r.created(ours(create, "resp_bye")) is True
    assert out.take() == []


def test_a_withdrawn_closing_request_is_cancelled_as_it_starts_and_its_audio_dropped() -> None:
    r, out = responses()
    r.request("Say goodbye.", closing=True)
    (create,) = sent(out)
    r.withdraw_closing()
    assert r.created(ours(create, "resp_bye")) is False
    assert sent(out) == [rt.response_cancel()]
    assert r.audio("resp_bye", "item_bye", new_item=True) is False
    finished = r.done({"id": "resp_bye", "status": "cancelled"})
    assert finished == Finished("resp_bye", had_audio=False, failing=False)
    assert sent(out) == [rt.item_delete("item_bye")]  # never heard: out of the conversation


def test_withdrawing_drops_a_waiting_closing_request_but_not_others() -> None:
    r, out = responses()
    r.created(service("resp_1"))
    r.request("Say goodbye.", closing=True)
    r.withdraw_closing()
    r.done({"id": "resp_1", "status": "completed"})
    r.send_waiting()
    assert sent(out) == []
    r.created(service("resp_2"))
    r.request("Answer.")
    r.withdraw_closing()  # not a closing request: still wanted
    r.done({"id": "resp_2", "status": "completed"})
    r.send_waiting()
    assert [e["response"]["instructions"] for e in sent(out)] == ["Answer."]


def test_withdrawing_the_last_words_keeps_an_answer_merged_with_them() -> None:
    # A key press while the goodbye waits: one request would carry both. The caller then
    # speaks up, the goodbye is called off: the key press must still get its answer.
    r, out = responses()
    r.created(service("resp_1"))
    r.request()  # the key press's answer
    r.request("Say goodbye.", closing=True)
    r.withdraw_closing()
    r.done({"id": "resp_1", "status": "completed"})
    r.send_waiting()
    (create,) = sent(out)
    assert "instructions" not in create.get("response", {})


# -- refusals -------------------------------------------------------------------------------


def test_an_error_that_is_not_about_our_request_is_not_a_refusal() -> None:
    r, out = responses()
    assert r.refused({"code": ALREADY_ACTIVE, "event_id": "bridge_response_1"}) is None
    r.request()
    (create,) = sent(out)
    assert r.refused({"code": ALREADY_ACTIVE, "event_id": "someone_else"}) is None
    assert r.refused({"code": ALREADY_ACTIVE}) is None
    assert r.responding  # still in flight
    assert r.refused(refusal(create)) is Refusal.ASK_AGAIN


def test_already_active_asks_again_once_the_active_response_is_done() -> None:
    r, out = responses()
    r.request("Answer.")
    (create,) = sent(out)
    r.created(service("resp_vad"))
    assert r.refused(refusal(create)) is Refusal.ASK_AGAIN
    assert r.failed_in_row == 0  # not a failure
    r.done({"id": "resp_vad", "status": "completed"})
    r.send_waiting()
    assert sent(out) == [rt.response_create("Answer.", "bridge_response_2")]


@pytest.mark.parametrize("how", ["droppable", "withdrawn"])
def test_already_active_drops_a_droppable_or_withdrawn_request(how: str) -> None:
    r, out = responses()
    if how == "droppable":
        r.request("Greet.", droppable=True)
    else:
        r.request("Say goodbye.", closing=True)
        r.withdraw_closing()
    (create,) = sent(out)
    r.created(service("resp_vad"))
    assert r.refused(refusal(create)) is Refusal.ASK_AGAIN
    r.done({"id": "resp_vad", "status": "completed"})
    r.send_waiting()
    assert sent(out) == [] and not r.responding


def test_merged_droppable_requests_stay_droppable_only_if_all_were() -> None:
    for second, asks_again in ((True, False), (False, True)):
        r, out = responses()
        r.created(service("resp_1"))
        r.request(droppable=True)
        r.request(droppable=second)
        r.done({"id": "resp_1", "status": "completed"})
        r.send_waiting()
        (create,) = sent(out)
        r.created(service("resp_2"))
        r.refused(refusal(create))
        r.done({"id": "resp_2", "status": "completed"})
        r.send_waiting()
        assert bool(sent(out)) is asks_again


def test_refusals_fail_then_are_failing_after_max_in_row() -> None:
    assert MAX_FAILED_IN_ROW == 2
    r, out = responses()
    r.request()
    (first,) = sent(out)
    assert r.refused(refusal(first, "server_error")) is Refusal.FAILED
    assert r.failed_in_row == 1 and not r.responding
    r.request()
    (second,) = sent(out)
    assert r.refused(refusal(second, "server_error")) is Refusal.FAILING


def test_a_fatal_refusal_is_failing_at_once() -> None:
    r, out = responses()
    r.request()
    (create,) = sent(out)
    assert r.refused(refusal(create, "insufficient_quota")) is Refusal.FAILING
    assert r.failed_in_row == 1


# -- audio and response.done ------------------------------------------------------------------


def test_audio_of_a_response_is_played_and_counted_as_heard() -> None:
    r, _ = responses()
    r.created(service("resp_1"))
    assert r.audio("resp_1", "item_a", new_item=True) is True
    assert r.audio("resp_1", "item_a", new_item=False) is True
    assert r.done({"id": "resp_1", "status": "completed"}) == Finished("resp_1", True, False)
    # A response without any played audio.
    r.created(service("resp_2"))
    assert r.done({"id": "resp_2", "status": "completed"}) == Finished("resp_2", False, False)


def test_a_cut_off_responses_audio_is_dropped_and_its_never_heard_items_deleted() -> None:
    r, out = responses()
    r.created(service("resp_1"))
    assert r.audio("resp_1", "item_a", new_item=True) is True  # partly heard
    r.cut_off()
    assert r.audio("resp_1", "item_a", new_item=False) is False  # truncated by BargeIn
    assert r.audio("resp_1", "item_b", new_item=True) is False
    assert r.audio("resp_1", "item_b", new_item=True) is False  # counted once
    assert r.audio("resp_1", "item_c", new_item=True) is False
    assert sent(out) == []  # deleted only once the response is done
    finished = r.done({"id": "resp_1", "status": "cancelled"})
    assert finished == Finished("resp_1", had_audio=True, failing=False)
    assert sent(out) == [rt.item_delete("item_b"), rt.item_delete("item_c")]
    # Another response's audio is played again, and nothing is deleted twice.
    r.created(service("resp_2"))
    assert r.audio("resp_2", "item_d", new_item=True) is True
    r.done({"id": "resp_2", "status": "completed"})
    assert sent(out) == []


def test_cut_off_drops_a_response_still_sending_audio_though_never_announced() -> None:
    """Its `response.created` was lost (or bad input): the service still cancels it, so
    its late audio must not play after the clear (found by the property tests)."""
    r, _ = responses()
    assert r.audio("resp_9", "item_z", new_item=True) is True
    r.cut_off()
    assert r.audio("resp_9", "item_z", new_item=False) is False
    # A response finished before the cut-off had sent all its audio: nothing to drop.
    r.created(service("resp_2"))
    assert r.audio("resp_2", "item_y", new_item=True) is True
    r.done({"id": "resp_2", "status": "completed"})
    r.cut_off()
    r.created(service("resp_3"))
    assert r.audio("resp_3", "item_x", new_item=True) is True


def test_cut_off_without_an_active_response_drops_nothing() -> None:
    r, _ = responses()
    r.cut_off()
    r.created(service("resp_1"))
    assert r.audio("resp_1", "item_a", new_item=True) is True


def test_done_of_another_response_leaves_the_active_one() -> None:
    r, _ = responses()
    r.created(service("resp_1"))
    r.created(service("resp_2"))
    r.done({"id": "resp_1", "status": "completed"})
    assert r.active == "resp_2" and r.responding


def test_done_reports_failures_and_a_success_resets_the_count() -> None:
    r, _ = responses()
    r.created(service("resp_1"))
    assert r.done(failed("resp_1")) == Finished("resp_1", False, failing=False)
    assert r.failed_in_row == 1
    r.created(service("resp_2"))
    assert r.done({"id": "resp_2", "status": "incomplete"}).failing is False
    assert r.failed_in_row == 0
    r.created(service("resp_3"))
    assert r.done(failed("resp_3")).failing is False
    r.created(service("resp_4"))
    assert r.done(failed("resp_4")).failing is True  # MAX_FAILED_IN_ROW in a row
    assert r.failed_in_row == MAX_FAILED_IN_ROW


@pytest.mark.parametrize("status", ["completed", "cancelled", "incomplete"])
def test_every_finished_status_resets_the_failure_count(status: str) -> None:
    r, _ = responses()
    r.created(service("resp_1"))
    r.done(failed("resp_1"))
    r.created(service("resp_2"))
    r.done({"id": "resp_2", "status": status})
    assert r.failed_in_row == 0


def test_a_fatal_failure_is_failing_at_once_and_details_may_be_missing() -> None:
    r, _ = responses()
    r.created(service("resp_1"))
    assert r.done(failed("resp_1", "insufficient_quota")).failing is True
    r2, _ = responses()
    r2.created(service("resp_1"))
    assert r2.done({"id": "resp_1", "status": "failed", "status_details": None}).failing is False
    assert r2.failed_in_row == 1
