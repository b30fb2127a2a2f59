"""Agents: per dialled number, who answers a call and with which tools (`AGENTS_FILE`).

The agents file (TOML) names agents (instructions, voice, greeting, turn detection, the
numbers they answer) and tools (HTTP endpoints, async Python functions, MCP servers). It
is read and checked once at start (`Agents.from_settings`); a mistake stops the boot with
exit code 2 and a line per mistake. Without a file there is one agent, `default`, made of
the settings.

* `model`: the file's tables as pydantic models (every key declared);
* `load`: reading and checking the whole file, resolving what calls need;
* `problems`: the error lines (`{file}: {key.path}: {what is wrong}`);
* `templates`: `{name}` placeholders, inserted safely per call;
* `envrefs`: `${VAR}` references in header values;
* `directory`: `Agents`, what the rest of the app uses.
"""

from app.agents.directory import Agents
from app.agents.envrefs import fill
from app.agents.templates import TEMPLATE_PARAMETERS

__all__ = ["TEMPLATE_PARAMETERS", "Agents", "fill"]
