"""Read and check the agents file (`AGENTS_FILE`) once, at start, into `LoadedAgents`.

Everything that can be wrong with the file is found here, before the server binds its
port: a TOML syntax error, an unknown key, a bad value (`app.agents.model`), an agent
naming a tool the file doesn't define, a template naming a value no call has, a
`${VAR}` no environment sets, a Python tool that doesn't import or isn't `async def`, a
reasoning setting the model can't take, two agents answering one number, no (or two)
default agents. The loader keeps going after a mistake and reports them all, one line
each (`app.agents.problems`), so that one edit fixes the lot.

What it returns is resolved and ready for calls: templates parsed, header references
filled in, Python functions imported, each agent's tool specs and MCP entries built.

A header value read from the environment loses its trailing whitespace (a secret mounted
as a file usually ends in a newline); one that still holds a line break, another control
character or non-ASCII text is a start-up error naming the header, never the value, since
every request with it would fail. The values the log scrubber masks (`secrets`) are those
that can be secret without being noise: what `${VAR}` references resolve to, and the
literal values of credential headers (`Authorization`, `X-Api-Key`...); an `Accept =
"application/json"` is not one, or every log line saying "application/json" would read
"***".
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ValidationError

from app.agents.envrefs import EnvRefError, fill, references, used_values
from app.agents.model import (
    BUILTIN_TOOLS,
    TOOL_KINDS,
    AgentEntry,
    AgentsFileTop,
    HttpToolEntry,
    McpToolEntry,
    PythonToolEntry,
    ToolEntry,
    check_name,
)
from app.agents.problems import Path as KeyPath
from app.agents.problems import Problems, shown
from app.agents.templates import BUILTIN_NAMES, Template, TemplateError
from app.call.toolspec import ToolSpec
from app.records import model_of
from app.settings import Settings, SettingsError
from app.tools.defs import HttpTool, PythonFunction, PythonTool, ToolDef

#: Models whose name starts so take `reasoning_effort` and `parallel_tool_calls` (the GA
#: types: "Only supported by reasoning Realtime models such as gpt-realtime-2").
REASONING_MODEL_PREFIX: Final = "gpt-realtime-2"
_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)
_TOML_AT_END = re.compile(r"^(.*) \(at end of document\)$", re.DOTALL)
_MAX_REASON = 200
# RFC 9110 token characters; a header value is visible ASCII, spaces and tabs: a line
# break would inject a header, and httpx can't send a control or a non-ASCII character.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE_BAD = re.compile(r"[^\t\x20-\x7e]")
#: Header names (lower-cased) whose literal values are credentials, and the parts of a
#: name that make it one (`X-Api-Key`, `X-Auth-Token`, `X-Session-Id`...).
CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
CREDENTIAL_NAME_PARTS: Final = ("key", "token", "secret", "auth", "password", "session")
#: Shorter values are not scrubbed: masking "abc" would mangle every line that says it.
#: The recorder's own floor (`app.recording_lines.MIN_SECRET_CHARS`), above the log
#: scrubber's (`app.observability.MIN_SECRET_LENGTH`, 6).
MIN_SECRET_CHARS: Final = 8


@dataclass(frozen=True, slots=True)
class Agent:
    """One agent of the file, checked and resolved."""

    name: str
    entry: AgentEntry
    #: Its own instructions and greeting (None: the settings' text, used as is).
    instructions: Template | None
    greeting: Template | None
    #: Its zone for `{local_time}` (its own, or TIMEZONE).
    timezone: str
    functions: tuple[ToolSpec, ...]
    mcp_servers: tuple[dict[str, Any], ...]


@dataclass(slots=True)
class LoadedAgents:
    """The file's content, ready for calls (`app.agents.directory.Agents` serves it)."""

    agents: dict[str, Agent]
    default: str
    #: Dialled number -> agent name.
    numbers: dict[str, str]
    executors: dict[str, ToolDef]
    #: Values of the `${VAR}`s the MCP entries reference (set, non-empty ones).
    env: dict[str, str]
    #: The values to scrub from logs and fixtures (see the module's docstring).
    secrets: list[str]
    warnings: list[str] = field(default_factory=list)


def read_toml(path: Path, file: str) -> dict[str, Any]:
    """The file's TOML content; raises `SettingsError` with one line when it can't be
    read or parsed (nothing else can be checked then)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SettingsError([f"{file}: cannot read it ({reason})"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SettingsError([f"{file}: cannot read it (not UTF-8 text)"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if match := _TOML_POSITION.match(message):
            line, column, message = int(match[2]), int(match[3]), match[1]
        else:
            if match := _TOML_AT_END.match(message):
                message = match[1]
            lines = text.split("\n")
            line, column = len(lines), len(lines[-1]) + 1
        raise SettingsError([f"{file}: line {line}, column {column}: {message}"]) from None


def load(path: Path, settings: Settings, environ: Mapping[str, str]) -> LoadedAgents:
    """Read, check and resolve the agents file at `path`; raise `SettingsError` listing
    every mistake (`{file}: {key.path}: {what is wrong}`)."""
    return _Loader(path, settings, environ).run()


class _Loader:
    """One pass over one file: checks, collecting problems, then the resolved result."""

    def __init__(self, path: Path, settings: Settings, environ: Mapping[str, str]) -> None:
        self.path = path
        self.settings = settings
        #: Empty variables count as unset, as everywhere in the settings; trailing
        #: whitespace is no part of a header's value (a mounted secret's last newline).
        self.environ = {k: v.rstrip() for k, v in environ.items() if v.rstrip()}
        self.problems = Problems(str(path))
        self.warnings: list[str] = []
        self.tools: dict[str, ToolEntry] = {}
        #: Names of every tool table, valid or not (an agent naming a broken tool is
        #: not also told the tool doesn't exist).
        self.tool_names: list[str] = []
        self.functions: dict[str, PythonFunction] = {}
        self.resolved_headers: dict[str, dict[str, str]] = {}
        #: Header values that are secrets (`_secret_values`), short ones included.
        self.secret_values: set[str] = set()
        self.entries: dict[str, AgentEntry] = {}
        self.defaults: list[str] = []
        #: Dialled number -> agent.
        self.numbers: dict[str, str] = {}
        #: Agent -> its instructions and greeting templates.
        self.texts: dict[str, tuple[Template | None, Template | None]] = {}

    # -- the pass ------------------------------------------------------------------------

    def run(self) -> LoadedAgents:
        data = read_toml(self.path, self.problems.file)
        self._validate(AgentsFileTop, [], data)
        tools, agents = _tables(data.get("tools")), _tables(data.get("agents"))
        self.tool_names = list(tools)
        # Checked (so reported) in the file's order: agents need only the tools' names.
        if [key for key in data if key in ("agents", "tools")][:1] == ["agents"]:
            self._agents(agents)
            self._tools(tools)
        else:
            self._tools(tools)
            self._agents(agents)
        self.problems.raise_if_any()
        self._warn(self.entries)
        built = {
            name: Agent(
                name=name,
                entry=entry,
                instructions=self.texts[name][0],
                greeting=self.texts[name][1],
                timezone=entry.timezone or self.settings.timezone,
                functions=tuple(self._spec(t) for t in entry.tools if _is_function(self.tools[t])),
                mcp_servers=tuple(
                    self._mcp(t) for t in entry.tools if isinstance(self.tools[t], McpToolEntry)
                ),
            )
            for name, entry in self.entries.items()
        }
        return LoadedAgents(
            agents=built,
            default=self.defaults[0],
            numbers=self.numbers,
            executors=self._executors(),
            env=self._mcp_env(),
            secrets=self._secrets(),
            warnings=self.warnings,
        )

    def _validate(self, model: type[BaseModel], path: KeyPath, raw: Any) -> Any:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            written = list(raw) if isinstance(raw, dict) else []
            self.problems.validation(path, exc, model.model_fields, written)
            return None

    def _name(self, path: KeyPath, name: str) -> None:
        try:
            check_name(name)
        except ValueError as exc:
            self.problems.add(path, f"the name {exc}")

    # -- tools ---------------------------------------------------------------------------

    def _tools(self, tools: dict[str, dict[str, Any]]) -> None:
        for name, raw in tools.items():
            self._tool(name, raw)

    def _tool(self, name: str, raw: dict[str, Any]) -> None:
        where: KeyPath = ("tools", name)
        self._name(where, name)
        if name in BUILTIN_TOOLS:
            self.problems.add(where, f"{name} is a tool of the bridge's own; choose another name")
        kinds = [key for key in TOOL_KINDS if key in raw]
        if len(kinds) != 1:
            have = f"has {' and '.join(kinds)}; " if kinds else ""
            self.problems.add(
                where,
                f"{have}a tool has exactly one of url (an HTTP tool), function (a Python "
                "tool) or mcp_url (an MCP server)",
            )
            return
        model = TOOL_KINDS[kinds[0]][0]
        entry = self._validate(model, where, raw)
        if entry is None:
            return
        if isinstance(entry, HttpToolEntry | PythonToolEntry):
            self._parameters(where, entry)
        if isinstance(entry, PythonToolEntry):
            self._import(where, entry)
        if isinstance(entry, HttpToolEntry | McpToolEntry):
            self._headers(where, name, entry.headers)
        if isinstance(entry, McpToolEntry):
            self._approval(where, entry)
        self.tools[name] = entry

    def _parameters(self, where: KeyPath, entry: HttpToolEntry | PythonToolEntry) -> None:
        schema = entry.parameters
        at: KeyPath = (*where, "parameters")
        if schema.get("type") != "object":
            got = f" (got {_brief(schema['type'])})" if "type" in schema else ""
            self.problems.add(at, f'must be a JSON Schema with type = "object"{got}')
            return
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            path = [p for p in exc.absolute_path if isinstance(p, str | int)]
            self.problems.add([*at, *path], f"is not a valid JSON Schema: {exc.message}")
            return
        properties = schema.get("properties")
        known = list(properties) if isinstance(properties, dict) else []
        for i, name in enumerate(entry.redact):
            if name not in known:
                listed = ", ".join(known) if known else "none"
                self.problems.add(
                    (*where, "redact", i),
                    f"{shown(name)} is not a property of parameters (properties: {listed})",
                )

    def _import(self, where: KeyPath, entry: PythonToolEntry) -> None:
        module_name, _, attribute = entry.function.partition(":")
        at: KeyPath = (*where, "function")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or module_name
            if module_name == missing or module_name.startswith(missing + "."):
                self.problems.add(
                    at,
                    f"cannot import {module_name}: there is no module {missing} (it must be "
                    "importable from the working directory or the Python path)",
                )
            else:
                self.problems.add(at, f"importing {module_name} failed ({_reason(exc)})")
            return
        except Exception as exc:  # a tool module that fails to import stops the boot
            self.problems.add(at, f"importing {module_name} failed ({_reason(exc)})")
            return
        function = getattr(module, attribute, None)
        if function is None:
            self.problems.add(at, f"module {module_name} has no attribute {shown(attribute)}")
        elif not inspect.iscoroutinefunction(function):
            self.problems.add(
                at, f"{entry.function} is not an async function (declare it with async def)"
            )
        else:
            self.functions[entry.function] = function

    def _headers(self, where: KeyPath, name: str, headers: Mapping[str, str]) -> None:
        resolved: dict[str, str] = {}
        for header, value in headers.items():
            at: KeyPath = (*where, "headers", header)
            if not _HEADER_NAME.match(header):
                self.problems.add(at, "is not a valid HTTP header name")
            elif _HEADER_VALUE_BAD.search(value):
                self.problems.add(
                    at, "must not hold a line break, another control character or non-ASCII text"
                )
            else:
                try:
                    names = list(dict.fromkeys(ref.name for ref in references(value)))
                    filled = fill(value, self.environ).rstrip()
                except EnvRefError as exc:
                    self.problems.add(at, str(exc))
                    continue
                if _HEADER_VALUE_BAD.search(filled):  # never the value: it is a secret
                    variables = ", ".join(f"${{{n}}}" for n in names)
                    self.problems.add(
                        at,
                        f"the value of {variables} holds a line break, another control "
                        "character or non-ASCII text (past its trailing whitespace, which is "
                        "removed): every request would fail",
                    )
                    continue
                resolved[header] = filled
                self.secret_values.update(self._secret_values(header, names, filled))
        self.resolved_headers[name] = resolved

    def _secret_values(self, header: str, variables: list[str], value: str) -> list[str]:
        """What of header `header` (resolved to `value`) is a secret: with `${VAR}`s in it,
        the whole value and each variable's own; written out, the value of a credential
        header (`is_credential_header`); anything else is not."""
        if variables:
            return [value, *(self.environ[n] for n in variables if n in self.environ)]
        return [value] if is_credential_header(header) else []

    def _approval(self, where: KeyPath, entry: McpToolEntry) -> None:
        if not isinstance(entry.require_approval, list) or entry.allowed_tools is None:
            return
        for i, tool in enumerate(entry.require_approval):
            if tool not in entry.allowed_tools:
                self.problems.add(
                    (*where, "require_approval", i),
                    f"{shown(tool)} is not one of allowed_tools",
                )

    # -- agents --------------------------------------------------------------------------

    def _agents(self, agents: dict[str, dict[str, Any]]) -> None:
        for name, raw in agents.items():
            entry = self._agent(name, raw)
            if _is_default(name, raw.get("default")):
                self.defaults.append(name)
            if entry is not None:
                self.entries[name] = entry
                self.texts[name] = self._templates(name, entry)
                self._numbers(name, entry)
        self._defaults()

    def _agent(self, name: str, raw: dict[str, Any]) -> AgentEntry | None:
        where: KeyPath = ("agents", name)
        self._name(where, name)
        entry: AgentEntry | None = self._validate(AgentEntry, where, raw)
        if entry is None:
            return None
        seen: set[str] = set()
        for i, tool in enumerate(entry.tools):
            at: KeyPath = (*where, "tools", i)
            if tool in BUILTIN_TOOLS:
                self.problems.add(
                    at,
                    f"{tool} is built in: the bridge offers end_call whenever the Twilio "
                    "REST credentials are set, and transfer_call when a transfer number is",
                )
            elif tool not in self.tool_names:
                known = ", ".join(sorted(self.tool_names)) or "none: the file has no [tools]"
                self.problems.add(at, f"unknown tool {shown(tool)} (known: {known})")
            elif tool in seen:
                self.problems.add(at, f"{shown(tool)} is listed twice")
            seen.add(tool)
        self._model_support(where, entry)
        self._turn_detection(where, entry)
        return entry

    def _model_support(self, where: KeyPath, entry: AgentEntry) -> None:
        model = model_of(self.settings.openai_realtime_url)
        if model is not None and model.startswith(REASONING_MODEL_PREFIX):
            return
        which = (
            f"the model of OPENAI_REALTIME_URL is {model}"
            if model
            else ("OPENAI_REALTIME_URL names no model")
        )
        for key in ("reasoning_effort", "parallel_tool_calls"):
            if getattr(entry, key) is not None:
                self.problems.add(
                    (*where, key),
                    f"needs a reasoning model such as {REASONING_MODEL_PREFIX}, but {which}",
                )

    def _turn_detection(self, where: KeyPath, entry: AgentEntry) -> None:
        """As in the settings: min-speech confirmation needs server_vad's silence window,
        and is a policy of the cancel mode."""
        if (entry.interrupt_min_speech_ms or 0) > 0 and entry.interrupt_mode == "resume":
            self.problems.add(
                (*where, "interrupt_mode"),
                'interrupt_mode = "resume" stops the bot at once, so interrupt_min_speech_ms '
                'has no speech to wait for: set interrupt_mode = "cancel", or drop one of them',
            )
        turn = entry.turn_detection or self.settings.turn_detection
        own = entry.interrupt_min_speech_ms
        min_speech = own if own is not None else self.settings.interrupt_min_speech_ms
        if turn != "semantic_vad" or min_speech <= 0:
            return
        source = "" if own is not None else " (from INTERRUPT_MIN_SPEECH_MS)"
        self.problems.add(
            (*where, "interrupt_min_speech_ms" if own is not None else "turn_detection"),
            f"interrupt_min_speech_ms = {min_speech}{source} does not work with "
            'turn_detection = "semantic_vad": semantic VAD can take seconds to end a turn, '
            "while the min-speech confirmation assumes server_vad's silence window",
        )

    def _templates(self, name: str, entry: AgentEntry) -> tuple[Template | None, Template | None]:
        where: KeyPath = ("agents", name)
        known = list(BUILTIN_NAMES)
        for i, context in enumerate(entry.context):
            if context in BUILTIN_NAMES:
                self.problems.add(
                    (*where, "context", i), f"{context} is a built-in template name already"
                )
            elif context not in known:
                known.append(context)
        instructions: Template | None = None
        text, key = entry.instructions, "instructions"
        if entry.instructions is not None and entry.instructions_file is not None:
            self.problems.add(where, "set instructions or instructions_file, not both")
            return None, None
        if entry.instructions_file is not None:
            key = "instructions_file"
            text = self._read_instructions(where, entry.instructions_file)
        if text is not None:
            instructions = self._parse((*where, key), text.strip(), known)
        greeting = None
        if entry.greeting is not None:
            greeting = self._parse((*where, "greeting"), entry.greeting.strip(), known)
        return instructions, greeting

    def _read_instructions(self, where: KeyPath, name: str) -> str | None:
        path = self.path.parent / name
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            self.problems.add((*where, "instructions_file"), f"cannot read {path} ({reason})")
            return None
        except UnicodeDecodeError:
            self.problems.add((*where, "instructions_file"), f"cannot read {path} (not UTF-8 text)")
            return None
        if not text.strip():
            self.warnings.append(
                f"{self.problems.file}: {where[0]}.{where[1]}.instructions_file: {path} is "
                "empty: the model gets no instructions"
            )
        return text

    def _parse(self, at: KeyPath, text: str, known: list[str]) -> Template | None:
        try:
            return Template.parse(text, known)
        except TemplateError as exc:
            self.problems.add(at, str(exc))
            return None

    def _numbers(self, name: str, entry: AgentEntry) -> None:
        for i, number in enumerate(entry.numbers):
            owner = self.numbers.get(number)
            if owner == name:
                self.problems.add(("agents", name, "numbers", i), f"{number} is listed twice")
            elif owner is not None:
                self.problems.add(
                    ("agents", name, "numbers", i),
                    f"{number} is already answered by agents.{owner}",
                )
            else:
                self.numbers[number] = name

    def _defaults(self) -> None:
        defaults = self.defaults
        if not defaults:
            self.problems.add(
                ["agents"],
                'no default agent: name one "default" or give one default = true (it '
                "answers the numbers no other agent lists)",
            )
        elif len(defaults) > 1:
            self.problems.add(
                ["agents"],
                f"more than one default agent ({', '.join(defaults)}): exactly one may be "
                'named "default" or have default = true',
            )

    # -- what calls use ------------------------------------------------------------------

    def _spec(self, name: str) -> ToolSpec:
        entry = self.tools[name]
        assert isinstance(entry, HttpToolEntry | PythonToolEntry)
        return ToolSpec(
            name=name,
            description=entry.description,
            parameters=entry.parameters,
            kind="http" if isinstance(entry, HttpToolEntry) else "python",
            timeout_ms=round(entry.timeout_seconds * 1000),
            filler_after_ms=entry.filler_after_ms,
            filler_text=entry.filler,
            on_interrupt=entry.on_interrupt,
            redact=tuple(entry.redact),
        )

    def _mcp(self, name: str) -> dict[str, Any]:
        """Its `session.tools` entry (GA `Mcp`), header references kept as written."""
        entry = self.tools[name]
        assert isinstance(entry, McpToolEntry)
        server: dict[str, Any] = {"type": "mcp", "server_label": name, "server_url": entry.mcp_url}
        if entry.allowed_tools is not None:
            server["allowed_tools"] = list(entry.allowed_tools)
        approval = entry.require_approval
        if isinstance(approval, list):
            server["require_approval"] = {"always": {"tool_names": list(approval)}}
        else:
            server["require_approval"] = approval
        if entry.headers:
            server["headers"] = dict(entry.headers)
        if entry.description:
            server["server_description"] = entry.description
        return server

    def _executors(self) -> dict[str, ToolDef]:
        executors: dict[str, ToolDef] = {}
        for name, entry in self.tools.items():
            if isinstance(entry, HttpToolEntry):
                executors[name] = HttpTool(
                    name=name,
                    url=entry.url,
                    method=entry.method,
                    headers=self.resolved_headers[name],
                    timeout_s=entry.timeout_seconds,
                    max_reply_bytes=entry.max_reply_bytes,
                )
            elif isinstance(entry, PythonToolEntry):
                executors[name] = PythonTool(
                    name=name,
                    function=self.functions[entry.function],
                    timeout_s=entry.timeout_seconds,
                )
        return executors

    def _mcp_env(self) -> dict[str, str]:
        texts = [
            value
            for entry in self.tools.values()
            if isinstance(entry, McpToolEntry)
            for value in entry.headers.values()
        ]
        return used_values(texts, self.environ)

    def _secrets(self) -> list[str]:
        return sorted(v for v in self.secret_values if len(v) >= MIN_SECRET_CHARS)

    def _warn(self, entries: dict[str, AgentEntry]) -> None:
        file = self.problems.file
        http = [n for n, e in self.tools.items() if isinstance(e, HttpToolEntry)]
        if http and self.settings.tools_signing_secret is None:
            self.warnings.append(
                f"TOOLS_SIGNING_SECRET is not set: the requests of the HTTP tools of "
                f"{file} ({', '.join(http)}) are not signed, so their endpoints can't tell "
                "the bridge from anyone else who reaches them."
            )
        used = {tool for entry in entries.values() for tool in entry.tools}
        for name in self.tools:
            if name not in used:
                self.warnings.append(f"{file}: tools.{name}: no agent lists it (it is unused)")
        for name, tool in self.tools.items():
            if isinstance(tool, McpToolEntry) and tool.require_approval != "never":
                self.warnings.append(
                    f"{file}: tools.{name}.require_approval: nobody can approve during a "
                    "phone call, so the bridge denies every approval request: the tools it "
                    "names never run"
                )
        if not self.settings.rest_enabled:
            for name, agent in entries.items():
                if agent.transfer_number is not None:
                    self.warnings.append(
                        f"{file}: agents.{name}.transfer_number is set but TWILIO_ACCOUNT_SID "
                        "and TWILIO_AUTH_TOKEN are not both set: transfer_call is not offered."
                    )


def is_credential_header(name: str) -> bool:
    """`Authorization`, `Proxy-Authorization`, `Cookie`, or a name with `key`, `token`,
    `secret`, `auth`, `password` or `session` in it (any case)."""
    lowered = name.lower()
    return lowered in CREDENTIAL_HEADERS or any(p in lowered for p in CREDENTIAL_NAME_PARTS)


def _tables(value: Any) -> dict[str, dict[str, Any]]:
    """The sub-tables of a top-level table (anything else was reported already)."""
    if not isinstance(value, dict):
        return {}
    return {name: table for name, table in value.items() if isinstance(table, dict)}


def _is_default(name: str, flag: Any) -> bool:
    """`default = true`, or named "default" without `default = false`."""
    return flag is True or (name == "default" and flag is None)


def _is_function(entry: ToolEntry) -> bool:
    return isinstance(entry, HttpToolEntry | PythonToolEntry)


def _brief(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."
