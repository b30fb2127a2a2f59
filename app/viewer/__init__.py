"""Seeing a recorded call: what the caller heard, as a timeline and as audio.

- `app.viewer.playout`: the model of Twilio's playout queue (sent is not heard);
- `app.viewer.svg`: `render_svg(fixture)`, the call's lanes over a time axis;
- `app.viewer.wav`: `render_wav(fixture)`, caller left and heard bot audio right.

Pure functions of a `app.replay.Fixture`; `python -m app.replay --svg/--wav` writes them.
"""
