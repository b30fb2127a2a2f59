"""One declaration per setting: `CallConfig` only names the settings it is read from.

A call setting's default lives in `app.settings` alone; `CallConfig` has none that could
drift (the old core ran with max call 0 and silence 0 while the product defaulted to 3300 s
and 10 s). `tests/test_settings.py` checks that Settings, `.env.example` and the README
agree; these tests check the other half: the core's view follows Settings everywhere.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from app.call.config import CONNECT_BUFFER_MS, CallConfig
from app.replay import default_config
from app.settings import Settings
from tests.conftest import make_settings


def test_no_call_field_has_a_default_of_its_own() -> None:
    own = [
        f.name
        for f in fields(CallConfig)
        if f.default is not MISSING and f.name != "connect_buffer_ms"  # not a setting
    ]
    assert own == []
    assert CallConfig.__dataclass_fields__["connect_buffer_ms"].default == CONNECT_BUFFER_MS


def test_every_mapped_setting_exists_and_every_field_is_filled() -> None:
    for f in fields(CallConfig):
        name = f.metadata.get("setting")
        if name is not None:
            assert name in Settings.model_fields, f.name
        else:
            assert "derived" in f.metadata or f.name == "connect_buffer_ms", f.name


def test_the_core_defaults_are_the_settings_defaults() -> None:
    cfg = CallConfig.from_settings(make_settings())
    assert cfg.max_call_ms == 3_300_000 and cfg.silence_reprompt_ms == 10_000
    assert cfg.playout_timeout_ms == 30_000 and cfg.realtime_ready_timeout_ms == 4_000
    assert cfg.tools == () and cfg.rest_available is False
    assert cfg == default_config()  # the replayer's defaults are the same ones


def test_settings_reach_the_call_converted() -> None:
    cfg = CallConfig.from_settings(
        make_settings(
            max_call_seconds=90.5,
            silence_reprompt_seconds=0,
            noise_reduction="off",
            transcription_model="off",
            bot_voice="cedar",
            twilio_account_sid="AC" + "0" * 32,
            twilio_auth_token="token-for-config-test",
            transfer_number="+14155550100",
        )
    )
    assert cfg.max_call_ms == 90_500 and cfg.silence_reprompt_ms == 0
    assert cfg.noise_reduction is None and cfg.transcription_model is None
    assert cfg.voice == "cedar"
    assert cfg.rest_available and cfg.tools == ("end_call", "transfer_call")
    assert cfg.transfer_number == "+14155550100"


@pytest.mark.parametrize("keys", [(), ("max_call_ms",), ("max_call_ms", "voice")])
def test_a_fixture_header_missing_fields_gets_todays_defaults(keys: tuple[str, ...]) -> None:
    recorded = CallConfig.from_settings(make_settings(max_call_seconds=42, bot_voice="ash"))
    data = {k: v for k, v in recorded.to_dict().items() if k not in keys}
    data["a_field_from_the_future"] = 1
    back = CallConfig.from_dict(data, defaults=default_config())
    for f in fields(CallConfig):
        expected = getattr(default_config() if f.name in keys else recorded, f.name)
        assert getattr(back, f.name) == expected, f.name


def test_a_fixture_from_before_resume_mode_replays_with_the_turn_taking_it_ran() -> None:
    """Fields added with resume mode have a recorded-before value (`absent`), not today's
    default: an old fixture replays in cancel mode, hanging up at the last mark echo."""
    from app.call.config import CallConfig
    from app.replay import default_config

    today = default_config()
    assert (today.interrupt_mode, today.hangup_tail_ms, today.local_vad) == ("resume", 300, 3)
    old = dict(today.to_dict())
    for name in ("interrupt_mode", "hangup_tail_ms", "local_vad", "echo_guard_ms"):
        del old[name]
    replayed = CallConfig.from_dict(old, defaults=today)
    assert (replayed.interrupt_mode, replayed.hangup_tail_ms) == ("cancel", 0)
    assert (replayed.local_vad, replayed.echo_guard_ms) == (None, 0)
    assert CallConfig.from_dict(today.to_dict(), defaults=today) == today
