"""TwiML documents the bridge returns to Twilio, built with twilio's VoiceResponse.

Using the library (rather than string templates) guarantees correct XML escaping of
caller-controlled values such as `From` or operator-written messages.
"""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import VoiceResponse

MAX_PARAMETER_LENGTH = 499
"""Twilio requires len(name) + len(value) of each <Parameter> to be under 500."""


def _add_dial(
    response: VoiceResponse,
    target: str,
    caller_id: str | None = None,
    timeout_s: int | None = None,
) -> None:
    """Append `<Dial>target</Dial>`; a SIP URI must go in the `<Sip>` noun instead."""
    if target.lower().startswith("sip:"):
        response.dial(caller_id=caller_id, timeout=timeout_s).sip(target)
    else:
        response.dial(target, caller_id=caller_id, timeout=timeout_s)


def stream_parameters(parameters: Mapping[str, str | None]) -> dict[str, str]:
    """The `<Parameter>`s exactly as the TwiML carries them (and the stream's `start`
    returns them): empty values skipped, long ones cut to Twilio's limit. The stream token
    is computed over these."""
    out: dict[str, str] = {}
    for name, value in parameters.items():
        if not name or value is None or value == "":
            continue
        room = MAX_PARAMETER_LENGTH - len(name)
        if room > 0:
            out[name] = str(value)[:room]
    return out


def connect_stream(
    stream_url: str,
    parameters: Mapping[str, str],
    fallback_message: str,
    fallback_number: str | None,
) -> str:
    """`<Connect><Stream>` to the bridge, followed by the fallback TwiML.

    Each parameter becomes a `<Parameter>` (they arrive in the `start` message's
    `customParameters`; the stream URL itself must not carry a query string). Empty
    values are skipped and long values are truncated to Twilio's 500-character limit.

    Twilio runs the verbs after `</Connect>` only when our server closes the websocket
    without having ended or redirected the call through the REST API, i.e. when the
    bridge failed; so they say `fallback_message` and then dial `fallback_number` if set,
    else hang up.
    """
    response = VoiceResponse()
    stream = response.connect().stream(url=stream_url)
    for name, value in stream_parameters(parameters).items():
        stream.parameter(name=name, value=value)
    if fallback_message:
        response.say(fallback_message)
    if fallback_number:
        _add_dial(response, fallback_number)
    else:
        response.hangup()
    return str(response)


def apology(message: str) -> str:
    """Say `message` and hang up; used when the bridge cannot serve calls at all."""
    response = VoiceResponse()
    if message:
        response.say(message)
    response.hangup()
    return str(response)


def dial(number: str, caller_id: str | None = None, timeout_s: int | None = None) -> str:
    """`<Dial>` a phone number or `sip:` URI, e.g. to transfer a live call via REST.

    `caller_id` sets the number the callee sees; `timeout_s` is how long to ring. The
    document has no `<?xml ...?>` declaration: it is sent as the REST update's `Twiml=`
    parameter, which the contract spells `<Response><Dial>NUMBER</Dial></Response>`.
    """
    response = VoiceResponse()
    _add_dial(response, number, caller_id, timeout_s)
    return response.to_xml(xml_declaration=False)


def busy(fallback_message: str, fallback_number: str | None) -> str:
    """The answer when the process takes no more calls (MAX_CONCURRENT_CALLS).

    With FALLBACK_NUMBER set, the overflow goes to the people behind it (after the
    fallback message), as it does when the bridge fails. Without it, `<Reject
    reason="busy"/>`: the caller hears a busy tone at once and can call back, the call
    is never answered (so never billed as an answered call), and the caller's carrier
    treats it as any busy line; a spoken apology would answer it only to hang up.
    """
    response = VoiceResponse()
    if fallback_number:
        if fallback_message:
            response.say(fallback_message)
        _add_dial(response, fallback_number)
    else:
        response.reject(reason="busy")
    return str(response)
