"""`python -m app` (what `make run` runs): the product's server on HOST and PORT.

`uvicorn app.main:app --host H --port P` stays the contract (the Dockerfile runs it), but
there the address comes from the command line, and `make run` used to pass `--env-file
.env` to uvicorn, which read `.env` a second time beside pydantic-settings and ignored a
PORT set in it. Here the settings are loaded once (environment over `.env`), the app is
built from them the way `app.main:app` is (`app.main.default_app`: exit code 2 and a
message on a bad setting, `gc.freeze()`), and uvicorn is run programmatically on
`settings.host`/`settings.port` with no log configuration of its own (the app's
structured logging takes uvicorn's loggers over) and no websocket compression (base64
mu-law barely compresses; deflate costs CPU and memory per call).
"""

from __future__ import annotations

import sys

import uvicorn

from app.main import default_app
from app.settings import Settings

#: uvicorn's own exit code for a server that never started (as `uvicorn.run` exits).
STARTUP_FAILURE = 3


def main() -> None:
    """Build the app from the settings and serve it until SIGTERM (or Ctrl-C)."""
    application = default_app()
    settings: Settings = application.state.bridge.settings
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        ws_per_message_deflate=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
