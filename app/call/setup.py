"""What a call asks the Realtime service for: the `session.update` built from its config.

The wire shape lives in `app.protocol.realtime`; this module decides its content: the
caller's turns detected by server or semantic VAD, and who answers and interrupts. With
an immediate interruption policy the service both answers and cancels by itself; with a
minimum-speech policy, or in resume mode (`INTERRUPT_MODE=resume`, the default), the bridge
decides whether speech was a real turn, so the service must neither cancel
(`interrupt_response`) nor answer noise (`create_response`). An outbound call holds both
off until it opens (the callee's hello is no question to answer before detection spoke),
then sends its policy's `session.update` again.
"""

from __future__ import annotations

from typing import Any

from app.call import tools
from app.call.config import CallConfig
from app.protocol import realtime as rt


def automatic_turns(cfg: CallConfig) -> bool:
    """The service answers and interrupts by itself (cancel mode, no minimum speech)."""
    return cfg.interrupt_mode == "cancel" and cfg.interrupt_min_speech_ms == 0


def turn_detection(cfg: CallConfig, *, hold: bool = False) -> dict[str, Any]:
    """`hold`: the service neither answers nor interrupts, whatever the policy (an
    outbound call before its opening, `app.call.opening`)."""
    automatic = not hold and automatic_turns(cfg)
    if cfg.turn_detection == "semantic_vad":
        return rt.semantic_vad(cfg.vad_eagerness, automatic=automatic)
    return rt.server_vad(
        cfg.vad_threshold,
        cfg.vad_prefix_padding_ms,
        cfg.vad_silence_duration_ms,
        automatic=automatic,
    )


def session_update(cfg: CallConfig, *, hold: bool = False) -> rt.Event:
    """`session.update` for this call: pcmu both ways, voice, VAD, noise, tools (`hold`:
    see `turn_detection`)."""
    transcription: dict[str, Any] | None = None
    if cfg.transcription_model:
        transcription = {"model": cfg.transcription_model}
        if cfg.transcription_language:
            transcription["language"] = cfg.transcription_language
    return rt.session_update(
        instructions=cfg.instructions,
        voice=cfg.voice,
        turn_detection=turn_detection(cfg, hold=hold),
        noise_reduction=cfg.noise_reduction,
        transcription=transcription,
        tools=[
            *tools.definitions(cfg.tools),
            *(spec.definition() for spec in cfg.functions),
            *cfg.mcp_servers,
        ],
        reasoning_effort=cfg.reasoning_effort,
        parallel_tool_calls=cfg.parallel_tool_calls,
    )
