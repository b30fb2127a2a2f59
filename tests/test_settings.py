"""Settings: defaults with no environment, validation, error messages and warnings."""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from app.main import create_app
from app.recording import directory_problem
from app.settings import (
    DEFAULT_GREETING,
    SECRET_FIELDS,
    Settings,
    SettingsError,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_NAMES = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the real environment or a real .env leaks into a test."""
    for key in list(os.environ):
        if key.upper() in ENV_NAMES:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(**overrides: object) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, **overrides)
    return str(info.value)


def test_loads_with_no_environment_at_all() -> None:
    settings = load_settings()
    assert settings.openai_api_key is None
    assert settings.openai_realtime_url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert settings.public_base_url is None
    assert settings.twilio_api_base_url == "https://api.twilio.com"
    assert settings.shutdown_drain_seconds == 600
    assert settings.bot_voice == "marin"
    assert settings.bot_greeting == DEFAULT_GREETING
    assert settings.turn_detection == "server_vad"
    assert settings.realtime_connect_timeout_seconds == 4.0
    assert settings.log_format == "kv" and settings.log_level == "INFO"
    assert settings.transcription_enabled
    assert not settings.rest_enabled and not settings.transfer_enabled
    assert not settings.signatures_enabled
    assert "short sentences" in settings.instructions
    assert settings.secret_values() == []


def test_reads_environment_case_insensitively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("vad_threshold", "0.7")
    monkeypatch.setenv("BOT_VOICE", "Cedar")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("TURN_DETECTION", "SEMANTIC_VAD")
    settings = load_settings(_env_file=None)
    assert settings.vad_threshold == 0.7
    assert settings.bot_voice == "cedar"
    assert settings.log_level == "DEBUG"
    assert settings.turn_detection == "semantic_vad"


def test_reads_dotenv_file_in_working_directory(clean_env: Path) -> None:
    (clean_env / ".env").write_text("SHUTDOWN_DRAIN_SECONDS=5\nUNRELATED_THING=1\n")
    assert load_settings().shutdown_drain_seconds == 5


def test_env_example_copied_to_dotenv_is_harmless(clean_env: Path) -> None:
    shutil.copy(REPO_ROOT / ".env.example", clean_env / ".env")
    assert load_settings() == load_settings(_env_file=None)


# --- Settings, .env.example and the README's settings table agree ----------------------
#
# Convention for a setting whose default is None: the README's Default cell says `none`,
# optionally followed by what the bridge then does in parentheses ("none (auto-detect)"),
# and the setting's comment in .env.example says "Default: none" (same optional
# parentheses); its `# NAME=value` line shows an example. Every other setting's
# `# NAME=value` line shows exactly its default, and the README shows it as `value`.

DESCRIBED_DEFAULTS: dict[str, str] = {
    # DEFAULT_INSTRUCTIONS is a multi-sentence prompt, too long for a table cell or one
    # .env line: both documents describe it ("a built-in prompt ...") instead of quoting it.
    "BOT_INSTRUCTIONS": "a built-in prompt",
}

_ENV_LINE_RE = re.compile(r"^# ([A-Za-z][A-Za-z0-9_]*)=(.*)$")
_README_ROW_RE = re.compile(r"^\| `([A-Za-z][A-Za-z0-9_]*)` \|")
_README_NONE_RE = re.compile(r"none( \(.+\))?")
_ENV_NONE_RE = re.compile(r"\bDefault: none\b")


def _default(name: str) -> object:
    return Settings.model_fields[name.lower()].get_default(call_default_factory=True)


def _brief(value: object) -> str:
    """repr() of a value, cut short for the long text defaults."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _same(default: object, shown: str) -> bool:
    """Whether a document's text shows `default`: numbers numerically, booleans as true/false."""
    if isinstance(default, bool):
        return shown in ("true", "false") and (shown == "true") == default
    if isinstance(default, int | float):
        try:
            return float(shown) == float(default)
        except ValueError:
            return False
    return shown == str(default)


@functools.cache
def _env_example() -> list[tuple[str, str, str]]:
    """(NAME, value, comment) per `# NAME=value` line of .env.example.

    The comment is the prose of the line's paragraph (lines up to a blank line, after any
    `# ----` section header), joined into one line so that a phrase wrapped over two lines
    still matches.
    """
    entries = []
    text = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        rules = [i for i, line in enumerate(lines) if re.fullmatch(r"# -+", line)]
        lines = lines[rules[-1] + 1 :] if rules else lines
        settings = [m for line in lines if (m := _ENV_LINE_RE.match(line))]
        prose = [line.removeprefix("#").strip() for line in lines if not _ENV_LINE_RE.match(line)]
        comment = " ".join(prose)
        entries += [(m[1], m[2], comment) for m in settings]
    return entries


@functools.cache
def _readme_table() -> list[tuple[str, str]]:
    """(NAME, Default cell) per row of the table in the README's "Settings" section."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if match := _README_ROW_RE.match(line):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append((match[1], cells[-1].strip()))
    return rows


@pytest.mark.parametrize(
    ("document", "names"),
    [
        (".env.example", lambda: [name for name, _, _ in _env_example()]),
        ("README.md", lambda: [name for name, _ in _readme_table()]),
    ],
    ids=[".env.example", "README"],
)
def test_docs_name_every_setting_once_and_only_real_ones(
    document: str, names: Callable[[], list[str]]
) -> None:
    shown = names()
    missing = [name for name in ENV_NAMES if name not in shown]
    unknown = [name for name in shown if name not in ENV_NAMES]
    twice = sorted({name for name in shown if shown.count(name) > 1})
    assert (missing, unknown, twice) == ([], [], []), (
        f"{document}: settings missing {missing}, not in Settings {unknown}, listed twice {twice}"
    )


@pytest.mark.parametrize("name", ENV_NAMES)
def test_readme_shows_the_default(name: str) -> None:
    default = _default(name)
    cells = [cell for row, cell in _readme_table() if row == name]
    assert len(cells) == 1, f"{name}: the README's settings table has {len(cells)} rows for it"
    [cell] = cells
    where = (
        f"{name}: Settings default is {_brief(default)} but the README's Default cell is {cell!r}"
    )
    if name in DESCRIBED_DEFAULTS:
        assert cell.startswith(DESCRIBED_DEFAULTS[name]), (
            f"{where}; it should describe it as {DESCRIBED_DEFAULTS[name]!r}"
        )
    elif default is None:
        assert _README_NONE_RE.fullmatch(cell), f"{where}; it should say none or none (...)"
    else:
        code = re.fullmatch(r"`([^`]*)`", cell)
        assert code and _same(default, code[1]), f"{where}; it should be `{default}`"


@pytest.mark.parametrize("name", ENV_NAMES)
def test_env_example_shows_the_default(name: str) -> None:
    default = _default(name)
    found = [(v, c) for n, v, c in _env_example() if n == name]
    where = f"{name}: Settings default is {_brief(default)} but .env.example"
    assert len(found) == 1, f"{where} has {len(found)} '# {name}=' lines"
    [(value, comment)] = found
    if name in DESCRIBED_DEFAULTS:
        described = f"Default: {DESCRIBED_DEFAULTS[name]}"
        assert described in comment, f"{where} does not describe it as {described!r}"
    elif default is None:
        assert _ENV_NONE_RE.search(comment), f"{where}'s comment does not say 'Default: none'"
    else:
        assert _same(default, value), f"{where} shows {name}={value}"
        assert "Default:" not in comment, (
            f"{where}'s comment states a default too ({comment!r}); for a setting with a "
            f"default, the {name}=value line is the one place it is shown"
        )


def test_described_defaults_are_real_long_texts() -> None:
    """The allow-list is only for texts too long to quote, never to hide a drifting value."""
    for name in DESCRIBED_DEFAULTS:
        assert name in ENV_NAMES, f"{name} is allow-listed but is not a setting"
        default = _default(name)
        assert isinstance(default, str) and len(default) > 200, (
            f"{name}: default {_brief(default)} is short enough to show exactly; "
            "remove it from DESCRIBED_DEFAULTS"
        )


def test_env_example_values_are_never_quoted() -> None:
    """Docker's --env-file keeps quotes literally while python-dotenv strips them."""
    text = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    assert "Values are never quoted" in text
    quoted = [
        f"{name}={value}"
        for name, value, _ in _env_example()
        if value[:1] in ("'", '"') or value[-1:] in ("'", '"')
    ]
    assert quoted == [], f".env.example shows quoted values (Docker keeps the quotes): {quoted}"
    # An unquoted ` #` starts a comment for python-dotenv but not for Docker.
    hashes = [f"{name}={value}" for name, value, _ in _env_example() if " #" in value]
    assert hashes == [], f".env.example values that dotenv and Docker read differently: {hashes}"


def test_empty_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "PUBLIC_BASE_URL", "TRANSFER_NUMBER", "RECORD_DIR"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "  ")
    monkeypatch.setenv("VAD_THRESHOLD", "")
    settings = load_settings(_env_file=None)
    assert settings.openai_api_key is None
    assert settings.public_base_url is None
    assert settings.transfer_number is None
    assert settings.record_dir is None
    assert settings.twilio_account_sid is None
    assert settings.vad_threshold == 0.5


def test_empty_greeting_and_transcription_keep_their_meaning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOT_GREETING", "")
    monkeypatch.setenv("TRANSCRIPTION_MODEL", "")
    settings = load_settings(_env_file=None)
    assert settings.bot_greeting == ""
    assert not settings.transcription_enabled


@pytest.mark.parametrize("value", ["off", "OFF", " off "])
def test_transcription_off(value: str) -> None:
    assert not load_settings(_env_file=None, transcription_model=value).transcription_enabled


def test_error_names_env_var_and_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAD_THRESHOLD", "3")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert str(info.value) == (
        "invalid setting VAD_THRESHOLD: Input should be less than or equal to 1 (got '3')"
    )
    assert info.value.problems == [str(info.value)]


def test_error_lists_every_bad_setting() -> None:
    text = problems(vad_silence_duration_ms=0, bot_voice="robot", log_format="xml")
    lines = text.splitlines()
    assert len(lines) == 3
    assert any(line.startswith("invalid setting VAD_SILENCE_DURATION_MS:") for line in lines)
    assert any(line.startswith("invalid setting BOT_VOICE:") for line in lines)
    assert any(line.startswith("invalid setting LOG_FORMAT:") for line in lines)


def test_error_never_echoes_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "twilio-secret-token")
    monkeypatch.setenv("VAD_THRESHOLD", "-1")
    text = problems(openai_api_key=12345678)
    assert "OPENAI_API_KEY" in text
    assert "12345678" not in text
    assert "sk-very-secret-value" not in text and "twilio-secret-token" not in text
    assert {"openai_api_key", "twilio_auth_token"} <= SECRET_FIELDS


def test_long_bad_values_are_truncated_in_errors() -> None:
    text = problems(bot_voice="x" * 500)
    assert "x" * 80 + "..." in text
    assert "x" * 81 not in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://bridge.example.com", "https://bridge.example.com"),
        ("https://bridge.example.com/", "https://bridge.example.com"),
        ("http://localhost:8000", "http://localhost:8000"),
    ],
)
def test_public_base_url_accepted(value: str, expected: str) -> None:
    assert load_settings(_env_file=None, public_base_url=value).public_base_url == expected


@pytest.mark.parametrize(
    "value",
    [
        "ftp://example.com",
        "example.com",
        "https://example.com/app",
        "https://example.com?x=1",
        "https://example.com/#frag",
        "https://user:pw@example.com",
        "https://example.com:notaport",
    ],
)
def test_public_base_url_rejected(value: str) -> None:
    assert "invalid setting PUBLIC_BASE_URL:" in problems(public_base_url=value)


def test_realtime_url_must_be_websocket() -> None:
    assert "invalid setting OPENAI_REALTIME_URL: must start with ws:// or wss://" in problems(
        openai_realtime_url="https://api.openai.com/v1/realtime"
    )
    ok = load_settings(_env_file=None, openai_realtime_url="ws://127.0.0.1:9000/v1/realtime?m=x")
    assert ok.openai_realtime_url.startswith("ws://127.0.0.1:9000")


def test_twilio_api_base_url_strips_slash_and_checks_scheme() -> None:
    settings = load_settings(_env_file=None, twilio_api_base_url="http://127.0.0.1:9999/")
    assert settings.twilio_api_base_url == "http://127.0.0.1:9999"
    assert "TWILIO_API_BASE_URL" in problems(twilio_api_base_url="wss://api.twilio.com")


def test_account_sid_format() -> None:
    sid = "AC" + "0123456789abcdef" * 2
    assert load_settings(_env_file=None, twilio_account_sid=sid).twilio_account_sid == sid
    assert "TWILIO_ACCOUNT_SID" in problems(twilio_account_sid="AC123")
    assert "TWILIO_ACCOUNT_SID" in problems(twilio_account_sid="XX" + "0" * 32)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+14155550100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("sip:agent@pbx.example.com", "sip:agent@pbx.example.com"),
    ],
)
def test_dial_targets_accepted(value: str, expected: str) -> None:
    settings = load_settings(_env_file=None, transfer_number=value, fallback_number=value)
    assert settings.transfer_number == expected
    assert settings.fallback_number == expected


@pytest.mark.parametrize("value", ["14155550100", "+0123", "+1415abc", "sip:nohost", "tel:+1"])
def test_dial_targets_rejected(value: str) -> None:
    assert "invalid setting TRANSFER_NUMBER:" in problems(transfer_number=value)
    assert "invalid setting FALLBACK_NUMBER:" in problems(fallback_number=value)


def test_custom_voice_id_accepted() -> None:
    assert load_settings(_env_file=None, bot_voice="voice_abc123").bot_voice == "voice_abc123"
    assert "BOT_VOICE" in problems(bot_voice="voice_")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vad_threshold", -0.1),
        ("vad_prefix_padding_ms", -1),
        ("vad_silence_duration_ms", 0),
        ("interrupt_min_speech_ms", -5),
        ("shutdown_drain_seconds", -1),
        ("realtime_connect_timeout_seconds", 0),
        ("realtime_connect_timeout_seconds", 5.5),
        ("vad_eagerness", "sometimes"),
        ("noise_reduction", "loud"),
        ("log_level", "TRACE"),
    ],
)
def test_numeric_and_choice_bounds(field: str, value: object) -> None:
    assert f"invalid setting {field.upper()}:" in problems(**{field: value})


def test_min_speech_confirmation_needs_server_vad(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURN_DETECTION", "semantic_vad")
    monkeypatch.setenv("INTERRUPT_MIN_SPEECH_MS", "300")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    [line] = info.value.problems
    assert "TURN_DETECTION=semantic_vad" in line and "INTERRUPT_MIN_SPEECH_MS=300" in line
    assert line.startswith("invalid settings: ")
    # Either half alone is fine.
    assert load_settings(_env_file=None, interrupt_min_speech_ms=0).turn_detection == (
        "semantic_vad"
    )
    monkeypatch.delenv("TURN_DETECTION")
    assert load_settings(_env_file=None).interrupt_min_speech_ms == 300


def test_connect_timeout_upper_bound_is_inclusive() -> None:
    settings = load_settings(_env_file=None, realtime_connect_timeout_seconds=5)
    assert settings.realtime_connect_timeout_seconds == 5


def test_instructions_file_wins_over_text(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("You are the bakery's phone assistant.\n", encoding="utf-8")
    settings = load_settings(
        _env_file=None, bot_instructions="inline", bot_instructions_file=str(prompt)
    )
    assert settings.instructions == "You are the bakery's phone assistant."
    assert load_settings(_env_file=None, bot_instructions="inline").instructions == "inline"


def test_instructions_file_must_exist_and_be_text(tmp_path: Path) -> None:
    assert "invalid setting BOT_INSTRUCTIONS_FILE: is not an existing file" in problems(
        bot_instructions_file=str(tmp_path / "missing.txt")
    )
    assert "BOT_INSTRUCTIONS_FILE" in problems(bot_instructions_file=str(tmp_path))
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00\x80")
    assert "cannot be read as UTF-8" in problems(bot_instructions_file=str(binary))


def test_record_dir_must_not_be_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "invalid setting RECORD_DIR:" in problems(record_dir=str(afile))
    later = tmp_path / "not-yet"
    assert load_settings(_env_file=None, record_dir=str(later)).record_dir == later


def test_an_unusable_record_dir_is_refused_when_the_app_is_built(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SettingsError) as info:
        create_app(load_settings(_env_file=None, record_dir=str(afile / "rec")))
    assert str(info.value) == (
        "invalid setting RECORD_DIR: cannot be created (Not a directory) "
        f"(got {str(afile / 'rec')!r})"
    )
    deeper = tmp_path / "new" / "deeper"  # created at start, not at the first call
    create_app(load_settings(_env_file=None, record_dir=str(deeper)))
    assert deeper.is_dir() and list(deeper.iterdir()) == []  # the probe file is gone


def test_why_a_record_dir_cannot_take_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert directory_problem(afile) == "exists but is not a directory"
    assert directory_problem(tmp_path) is None

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)  # a read-only directory (this may run as root)
    assert directory_problem(tmp_path) == "is not writable (Permission denied)"


def test_host_and_port_for_the_launcher() -> None:
    settings = load_settings(_env_file=None)
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    settings = load_settings(_env_file=None, host=" 127.0.0.1 ", port="9000")
    assert (settings.host, settings.port) == ("127.0.0.1", 9000)
    assert "invalid setting PORT:" in problems(port=0)
    assert "invalid setting PORT:" in problems(port=65536)


def test_secrets_hidden_in_repr() -> None:
    settings = load_settings(
        _env_file=None, openai_api_key="sk-hidden-123", twilio_auth_token="tok-hidden-456"
    )
    assert "sk-hidden-123" not in repr(settings)
    assert "tok-hidden-456" not in repr(settings)
    assert sorted(settings.secret_values()) == ["sk-hidden-123", "tok-hidden-456"]


def test_warnings_with_no_settings() -> None:
    text = "\n".join(load_settings(_env_file=None).warnings())
    assert "TWILIO_AUTH_TOKEN is not set" in text and "OFF" in text
    assert "OPENAI_API_KEY is not set" in text
    assert "PUBLIC_BASE_URL is not set" in text


def test_warnings_for_transfer_without_rest_credentials() -> None:
    settings = load_settings(_env_file=None, transfer_number="+14155550100")
    assert not settings.transfer_enabled
    assert any("TRANSFER_NUMBER" in w for w in settings.warnings())


def test_fully_configured_has_no_warnings_and_offers_transfer() -> None:
    settings = load_settings(
        _env_file=None,
        openai_api_key="sk-test-key",
        public_base_url="https://bridge.example.com",
        twilio_account_sid="AC" + "a" * 32,
        twilio_auth_token="secret-token",
        transfer_number="+14155550100",
        operator_api_key="operator-key-0123",
    )
    assert settings.warnings() == []
    assert settings.rest_enabled and settings.transfer_enabled and settings.signatures_enabled


def test_without_an_operator_key_a_warning_says_what_is_off_and_what_is_open() -> None:
    text = "\n".join(load_settings(_env_file=None).warnings())
    assert "OPERATOR_API_KEY is not set" in text and "/metrics answers anyone" in text


def test_the_operator_key_and_the_database_url_are_secrets() -> None:
    url = "postgresql://bridge:db-password-123@db.internal/calls"
    settings = load_settings(_env_file=None, operator_api_key="op-key-123456", database_url=url)
    assert set(settings.secret_values()) >= {"op-key-123456"}
    assert "db-password-123" not in repr(settings)
    assert "database_url" in SECRET_FIELDS and "operator_api_key" in SECRET_FIELDS


def test_warnings_mention_http_public_url_and_missing_sid() -> None:
    settings = load_settings(
        _env_file=None, public_base_url="http://localhost:8000", twilio_auth_token="secret-token"
    )
    text = "\n".join(settings.warnings())
    assert "ws://" in text
    assert "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not both set" in text


@pytest.mark.parametrize(
    ("token", "required", "enforced"),
    [(None, None, False), ("secret-token", None, True), ("secret-token", False, False)],
)
def test_the_stream_token_is_on_whenever_signatures_are(
    token: str | None, required: bool | None, enforced: bool
) -> None:
    settings = load_settings(
        _env_file=None, twilio_auth_token=token, stream_token_required=required
    )
    assert settings.stream_token_enforced is enforced


def test_opting_out_of_the_stream_token_is_a_loud_warning() -> None:
    settings = load_settings(
        _env_file=None, twilio_auth_token="secret-token", stream_token_required=False
    )
    [warning] = [w for w in settings.warnings() if "STREAM_TOKEN_REQUIRED=false" in w]
    assert warning.startswith("SECURITY:") and "any CallSid" in warning


def test_the_default_connection_limit_leaves_room_for_every_call() -> None:
    assert load_settings(_env_file=None, max_concurrent_calls=50).connection_limit == 200
    assert load_settings(_env_file=None, max_connections=7).connection_limit == 7


def test_a_connection_limit_below_the_call_limit_is_a_warning() -> None:
    settings = load_settings(_env_file=None, max_concurrent_calls=100, max_connections=100)
    assert any("MAX_CONNECTIONS=100 leaves no room" in w for w in settings.warnings())


def test_min_speech_alone_keeps_the_cancel_mode_and_refuses_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(_env_file=None).interrupt_mode == "resume"
    monkeypatch.setenv("INTERRUPT_MIN_SPEECH_MS", "300")
    assert load_settings(_env_file=None).interrupt_mode == "cancel"  # as before the mode
    monkeypatch.setenv("INTERRUPT_MODE", "resume")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    [line] = info.value.problems
    assert "INTERRUPT_MIN_SPEECH_MS=300 needs INTERRUPT_MODE=cancel" in line
    monkeypatch.setenv("INTERRUPT_MODE", "cancel")
    assert load_settings(_env_file=None).interrupt_mode == "cancel"


def test_local_vad_and_backchannels_reach_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.call.config import CallConfig

    monkeypatch.setenv("LOCAL_VAD", "off")
    monkeypatch.setenv("BACKCHANNEL_WORDS", "ja, genau")
    cfg = CallConfig.from_settings(load_settings(_env_file=None))
    assert cfg.local_vad is None and cfg.backchannels == ("ja", "genau")
    monkeypatch.setenv("LOCAL_VAD", "2")
    monkeypatch.delenv("BACKCHANNEL_WORDS")
    monkeypatch.setenv("TRANSCRIPTION_LANGUAGE", "fr")
    cfg = CallConfig.from_settings(load_settings(_env_file=None))
    assert cfg.local_vad == 2 and "d'accord" in cfg.backchannels and "yeah" not in cfg.backchannels


def test_the_new_turn_settings_take_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERRUPT_MODE", "Resume")
    monkeypatch.setenv("LOCAL_VAD", "OFF")
    settings = load_settings(_env_file=None)
    assert (settings.interrupt_mode, settings.local_vad) == ("resume", "off")
