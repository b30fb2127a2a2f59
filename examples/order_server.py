"""A tiny order-lookup endpoint for `examples/agents.toml`'s `lookup_order` tool.

    TOOLS_SIGNING_SECRET=change-me python -m examples.order_server   # 127.0.0.1:8088

It shows what an HTTP tool receives and how to check that a request came from the bridge:
the body is `{"call_sid", "agent", "from", "to", "tool", "arguments"}`, and with
TOOLS_SIGNING_SECRET set, `X-Bridge-Signature` is `v1=` + HMAC-SHA256(secret,
"<X-Bridge-Timestamp>." + body) in hex (`app.tools.signing.verify` checks it, and the
timestamp's age). Whatever JSON it answers is what the model reads. Standard library only,
one request at a time: an example, not a server to deploy.
"""

from __future__ import annotations

import json
import os
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from app.tools.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

ORDERS = {
    "1001": {"status": "shipped", "carrier": "DHL", "expected": "Thursday"},
    "1002": {"status": "being packed", "expected": "next week"},
}
MAX_BODY = 64 * 1024


class OrderHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != "/order" or not 0 < length <= MAX_BODY:
            self._answer(404, {"error": "no such endpoint"})
            return
        body = self.rfile.read(length)
        secret = os.environ.get("TOOLS_SIGNING_SECRET")
        if secret and not verify(
            secret,
            self.headers.get(TIMESTAMP_HEADER),
            self.headers.get(SIGNATURE_HEADER),
            body,
            now=time.time(),
        ):
            self._answer(401, {"error": "bad signature"})
            return
        request = json.loads(body)
        order_id = str(request["arguments"].get("order_id", ""))
        order = ORDERS.get(order_id)
        if order is None:
            self._answer(200, {"order_id": order_id, "found": False})
        else:
            self._answer(200, {"order_id": order_id, "found": True, **order})

    def _answer(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    port = int(os.environ.get("ORDER_SERVER_PORT", "8088"))
    HTTPServer(("127.0.0.1", port), OrderHandler).serve_forever()


if __name__ == "__main__":
    main()
