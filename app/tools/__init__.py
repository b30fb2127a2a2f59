"""Business tools: how the bridge runs what the model calls.

- `defs`: the data types (`HttpTool`, `PythonTool`, `ToolContext`, `ToolOutcome`), built
  once at start from the agents file.
- `runner`: `ToolRunner`, which runs a tool by name for every call (one shared HTTP pool).
- `http` / `python`: one run of each kind, bounded in time and size, never raising.
- `signing`: the `X-Bridge-Signature` HMAC that lets an endpoint verify a request.

Nothing is imported here, so importing `app.tools.defs` stays cheap (no HTTP client).
"""
