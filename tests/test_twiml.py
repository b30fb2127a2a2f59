"""TwiML builders: structure, fallback verbs, parameter limits and XML escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from app.twiml import apology, connect_stream, dial

STREAM = "wss://bridge.example.com/media-stream"


def parse(xml: str) -> ET.Element:
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.tag == "Response"
    return root


def test_connect_stream_structure_and_parameters() -> None:
    root = parse(
        connect_stream(
            STREAM,
            {"CallSid": "CA123", "From": "+14155550100", "Empty": ""},
            "Sorry, try later.",
            None,
        )
    )
    assert [child.tag for child in root] == ["Connect", "Say", "Hangup"]
    connect = root[0]
    assert connect.get("action") is None  # verbs after </Connect> are the fallback
    stream = connect.find("Stream")
    assert stream is not None
    assert stream.get("url") == STREAM
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"CallSid": "CA123", "From": "+14155550100"}
    assert root[1].text == "Sorry, try later."


def test_connect_stream_falls_back_to_dial_when_number_set() -> None:
    root = parse(connect_stream(STREAM, {}, "Transferring you.", "+14155550199"))
    assert [child.tag for child in root] == ["Connect", "Say", "Dial"]
    assert root[2].text == "+14155550199"
    assert root.find("Hangup") is None


def test_connect_stream_sip_fallback_uses_sip_noun() -> None:
    root = parse(connect_stream(STREAM, {}, "", "sip:desk@pbx.example.com"))
    assert [child.tag for child in root] == ["Connect", "Dial"]
    sip = root[1].find("Sip")
    assert sip is not None and sip.text == "sip:desk@pbx.example.com"


def test_parameters_truncated_under_500_chars() -> None:
    name = "Long"
    root = parse(connect_stream(STREAM, {name: "x" * 1000, "n" * 600: "v"}, "m", None))
    params = root.find("Connect/Stream").findall("Parameter")  # type: ignore[union-attr]
    assert len(params) == 1
    value = params[0].get("value") or ""
    assert len(name) + len(value) == 499
    assert value == "x" * 495


def test_escaping_of_message_and_parameters() -> None:
    nasty = 'Tom & Jerry say <hi> "there"'
    xml = connect_stream(STREAM, {"Caller": "<&>\"'"}, nasty, None)
    assert "<hi>" not in xml and "&amp;" in xml
    root = parse(xml)
    assert root.find("Say").text == nasty  # type: ignore[union-attr]
    param = root.find("Connect/Stream/Parameter")
    assert param is not None and param.get("value") == "<&>\"'"


def test_webhook_documents_keep_their_xml_declaration() -> None:
    for xml in (connect_stream(STREAM, {}, "m", None), apology("bye")):
        assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')


def test_apology_says_then_hangs_up() -> None:
    root = parse(apology("Sorry <&> goodbye"))
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == "Sorry <&> goodbye"


def test_apology_with_empty_message_just_hangs_up() -> None:
    assert [child.tag for child in parse(apology(""))] == ["Hangup"]


def test_dial_number_is_plain_text_as_in_contract() -> None:
    xml = dial("+14155550100")
    # Exactly the contract's Twiml= value: no <?xml ...?> declaration in front.
    assert xml == "<Response><Dial>+14155550100</Dial></Response>"
    root = parse(xml)
    assert root[0].get("callerId") is None and root[0].get("timeout") is None


def test_dial_with_caller_id_timeout_and_sip() -> None:
    root = parse(dial("sip:agent@pbx.example.com", caller_id="+14155550111", timeout_s=25))
    element = root[0]
    assert element.tag == "Dial"
    assert element.get("callerId") == "+14155550111"
    assert element.get("timeout") == "25"
    sip = element.find("Sip")
    assert sip is not None and sip.text == "sip:agent@pbx.example.com"
