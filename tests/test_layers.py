"""Layers point one way: checked on the source, imports under TYPE_CHECKING included.

* no import cycle anywhere in `app/` (`main` and `lifecycle` included);
* the call core (`app/call/`) imports no SDK, no web framework and no I/O layer of ours;
* `app/protocol/` (wire formats) imports nothing of `app/call/`;
* no module of the core calls another object's private helpers (`x._name(...)`).
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
SDKS = ("twilio", "openai", "fastapi", "starlette", "websockets", "uvicorn", "pydantic")
OURS_IO = (
    "app.twiml",
    "app.bridge",
    "app.main",
    "app.realtime_socket",
    "app.twilio_socket",
    "app.telephony",
    "app.recording",
    "app.recording_lines",
    "app.replay",
    "app.settings",
    "app.lifecycle",
    "app.admission",
    "app.forms",
    "app.limits",
    "app.server_guard",
    "app.metrics",
    "app.records",
    "app.operator_api",
    "app.ledger",
    "app.ui",
    "app.viewer",
    "app.demo",
    "app.store",
)


def _module(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


MODULES = {_module(p): p for p in APP.rglob("*.py")}
GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_no_import_cycles_in_app() -> None:
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(GRAPH[node]):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif len(path) < 30:
                visit(nxt, [*path, nxt])

    for start in sorted(GRAPH):
        visit(start, [start])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles[:5])


def test_the_core_imports_no_sdk_and_no_io_layer() -> None:
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("app.call"):
            continue
        for name in _imports(path):
            if any(name == s or name.startswith(s + ".") for s in (*SDKS, *OURS_IO)):
                bad.append(f"{module}: {name}")
    assert not bad, bad


def test_protocol_imports_nothing_of_the_core() -> None:
    bad = [
        f"{m}: {i}"
        for m, p in MODULES.items()
        if m.startswith("app.protocol")
        for i in _imports(p)
        if i.startswith("app.call")
    ]
    assert not bad, bad


def test_no_core_module_calls_another_objects_private_helpers() -> None:
    calls = []
    for module, path in MODULES.items():
        if not module.startswith("app.call"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name, base = node.func.attr, node.func.value
                private = name.startswith("_") and not name.startswith("__")
                if private and not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
                    calls.append(f"{module}:{node.lineno} {ast.unparse(node.func)}")
    assert not calls, calls
