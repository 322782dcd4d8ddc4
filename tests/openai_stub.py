"""A small OpenAI-compatible chat server on localhost, to test our HTTP client (not a model)."""

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    """`reply(body, attempt)` returns (status, content or raw bytes, delay seconds) for each call;
    `attempt` counts earlier calls with the same last user message."""

    def __init__(self, reply):
        self.reply = reply
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: list[str | None] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        key = body["messages"][-1]["content"]
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.auth_headers.append(handler.headers.get("Authorization"))
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
        try:
            status, content, delay = self.reply(body, attempt)
            time.sleep(delay)
            if isinstance(content, bytes):
                payload = content
            else:
                payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (time-out)
        finally:
            with self.lock:
                self.in_flight -= 1


@contextmanager
def stub_server(reply):
    """Yield (StubServer, base_url) for a server running on 127.0.0.1 until the block ends."""
    stub = StubServer(reply)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            stub.handle(self)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def tags_json(*tags: str) -> str:
    return "```json\n" + json.dumps([{"tag": t, "explanation": f"about {t}"} for t in tags]) + "\n```"
