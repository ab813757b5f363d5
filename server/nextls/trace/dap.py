"""A small Debug Adapter Protocol client: framing, requests with responses, events."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time


class DapError(RuntimeError):
    """A request failed, the adapter went away, or an expected message did not come in time."""


def encode_message(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class MessageReader:
    """Splits a byte stream into DAP messages (`Content-Length` headers, then a JSON body)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict]:
        self._buffer += data
        messages = []
        while True:
            header_end = self._buffer.find(b"\r\n\r\n")
            if header_end < 0:
                return messages
            length = None
            for header in self._buffer[:header_end].split(b"\r\n"):
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length is None:
                raise DapError(f"DAP message without Content-Length: {self._buffer[:header_end]!r}")
            body_start = header_end + 4
            if len(self._buffer) < body_start + length:
                return messages
            messages.append(json.loads(self._buffer[body_start:body_start + length]))
            self._buffer = self._buffer[body_start + length:]


def _acknowledge_at_once(sock: socket.socket) -> None:
    """Turn off delayed ACKs (Linux; it lasts until the next receive, so it is set after each one).

    debugpy sends a message as two small writes, a header and a body, with Nagle's algorithm on: the
    body waits until the header is acknowledged, and a delayed ACK made every message ~40 ms late."""
    if hasattr(socket, "TCP_QUICKACK"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class DapClient:
    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one request is one small write
        _acknowledge_at_once(sock)
        self._sock = sock
        self._seq = 0
        self._send_lock = threading.Lock()
        self._responses: dict[int, dict] = {}
        self._response_ready = threading.Condition()
        self.events: queue.Queue[dict] = queue.Queue()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="dap-reader", daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> DapClient:
        return cls(socket.create_connection((host, port), timeout=timeout))

    def _read_loop(self) -> None:
        reader = MessageReader()
        self._sock.settimeout(None)
        try:
            while data := self._sock.recv(65536):
                _acknowledge_at_once(self._sock)
                for message in reader.feed(data):
                    if message.get("type") == "response":
                        with self._response_ready:
                            self._responses[message["request_seq"]] = message
                            self._response_ready.notify_all()
                    elif message.get("type") == "event":
                        self.events.put(message)
        except OSError:
            pass
        finally:
            self.closed.set()
            with self._response_ready:
                self._response_ready.notify_all()

    def send(self, command: str, arguments: dict | None = None) -> int:
        with self._send_lock:
            self._seq += 1
            message = {"seq": self._seq, "type": "request", "command": command}
            if arguments is not None:
                message["arguments"] = arguments
            self._sock.sendall(encode_message(message))
            return self._seq

    def wait_response(self, seq: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._response_ready:
            while seq not in self._responses:
                left = deadline - time.monotonic()
                if self.closed.is_set() or left <= 0:
                    why = "adapter closed the connection" if self.closed.is_set() else "timed out"
                    raise DapError(f"no response to request {seq} ({why})")
                self._response_ready.wait(left)
            response = self._responses.pop(seq)
        if not response.get("success", False):
            raise DapError("{} failed: {}".format(response.get("command"), response.get("message", response)))
        return response.get("body") or {}

    def request(self, command: str, arguments: dict | None = None, timeout: float = 10.0) -> dict:
        return self.wait_response(self.send(command, arguments), timeout)

    def wait_event(self, name: str, timeout: float, alive=lambda: True) -> dict:
        """Wait for event `name`, dropping others; give up when `alive()` turns false or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.02)
            except queue.Empty:
                if self.closed.is_set() or not alive():
                    raise DapError(f"the debuggee ended before the {name!r} event") from None
                continue
            if event.get("event") == name:
                return event.get("body") or {}
        raise DapError(f"timed out waiting for the {name!r} event")

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
