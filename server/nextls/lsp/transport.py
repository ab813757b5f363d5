"""The LSP byte stream, hardened: frames in, JSON-RPC messages out, whatever a client sends.

pygls' read loop (`pygls.io_.run_async`) trusts the stream: a huge `Content-Length` is read into memory
(the server dies of MemoryError), and a wrong length or LF-only headers desynchronize it for good (every
later body is glued to the next header line, which then never matches). A message whose params do not fit
its method's type gets no response at all. This module replaces only that loop; pygls' protocol still
handles every message:

* `FrameDecoder` cuts the stream into messages. A body over `MAX_BODY_BYTES` is refused without being
  read; bytes that are not a frame (junk, malformed or LF-only headers, the rest of a body whose length was
  wrong) are skipped up to the next line that ends with a `Content-Length:` header. A length a few bytes
  too long swallows the start of the next header: the JSON object at the front is the message, and the
  bytes after it are read again as the next frame's start.
* `Connection` turns each message into pygls' types and hands it to the protocol. A request whose params
  do not fit gets a -32602 error with a one-line reason, a body that is not a JSON-RPC object a -32700 or
  -32600 error (id null, as JSON-RPC says), and notifications that do not fit are dropped with a log line.
* `QuietWriter` stops writing, once, when the client's end is gone, instead of raising on every message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from cattrs.errors import ClassValidationError
from cattrs.v import transform_error
from lsprotocol.types import ResponseError
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCProtocol, JsonRPCRequestMessage

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_HEADER_LINE = 8 * 1024  # longer than any real header line: what has no line break by then is junk
READ_CHUNK = 64 * 1024
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602

_CONTENT_LENGTH = re.compile(rb"Content-Length:[ \t]*(\d{1,20})[ \t]*\r\n\Z", re.IGNORECASE)
_HEADER_TAIL = 64  # kept when junk without line breaks is dropped: it may hold the start of a header
_OTHER_HEADER = re.compile(rb"[!-9;-~]+:[^\r\n]*\r\n\Z")  # a well-formed header line (Content-Type...)
_JSON_START = re.compile(r"\s*")


@dataclass(frozen=True)
class Message:
    """A frame whose body is JSON."""

    payload: Any


@dataclass(frozen=True)
class Refused:
    """Bytes that did not make a message. `code`: the JSON-RPC error the client gets (id null), or None when
    there is nothing to answer (junk between frames)."""

    reason: str
    code: int | None


class FrameDecoder:
    """LSP's base protocol (`Content-Length: N\\r\\n`, other headers, `\\r\\n`, N bytes of JSON), fed in chunks."""

    def __init__(self, max_body: int = MAX_BODY_BYTES) -> None:
        self.max_body = max_body
        self._buffer = bytearray()
        self._header_length: int | None = None  # the Content-Length of the header block being read
        self._body_length: int | None = None  # the headers are done: this many body bytes come next
        self._skipped = 0  # junk bytes since the last frame

    def feed(self, data: bytes) -> list[Message | Refused]:
        self._buffer += data
        events: list[Message | Refused] = []
        while True:
            if self._body_length is not None:
                if len(self._buffer) < self._body_length:
                    break
                body = bytes(self._buffer[: self._body_length])
                del self._buffer[: self._body_length]
                self._body_length = None
                events.append(self._decode(body))
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_LINE:
                    self._drop_junk(len(self._buffer) - _HEADER_TAIL)
                break
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            self._header_line(line, events)
        return events

    def _drop_junk(self, count: int) -> None:
        del self._buffer[:count]
        self._skipped += count

    def _header_line(self, line: bytes, events: list[Message | Refused]) -> None:
        match = _CONTENT_LENGTH.search(line)
        if match:
            self._skipped += match.start()
            self._header_length = int(match.group(1))
            if self._skipped:
                events.append(Refused(f"skipped {self._skipped} byte(s) that were not a well-formed frame", None))
                self._skipped = 0
            return
        if self._header_length is None:
            self._skipped += len(line)
            return
        if line == b"\r\n":
            length, self._header_length = self._header_length, None
            if length > self.max_body:  # its bytes are skipped as junk up to the next header
                events.append(Refused(f"refused a message of {length} bytes without reading it: the limit is "
                                      f"{self.max_body} bytes", INVALID_REQUEST))
            else:
                self._body_length = length
            return
        if not _OTHER_HEADER.match(line):  # an LF-only or garbled header: the frame is dropped
            self._header_length = None
            self._skipped += len(line)

    def _decode(self, body: bytes) -> Message | Refused:
        try:
            return Message(json.loads(body))
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            pass
        # A Content-Length a few bytes too long swallowed the start of the next frame: the JSON value at the
        # front is this message, and the bytes after it go back to be read as the next frame's header.
        text = body.decode("utf-8", errors="surrogateescape")
        try:
            payload, end = json.JSONDecoder().raw_decode(text, _JSON_START.match(text).end())
        except (ValueError, RecursionError) as error:
            return Refused(f"a message body of {len(body)} bytes is not JSON ({error})", PARSE_ERROR)
        self._buffer[:0] = text[end:].encode("utf-8", errors="surrogateescape")
        return Message(payload)


def one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of `text`, cut to `limit` characters (error messages for the client)."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _invalid_params_reason(method: str, error: Exception) -> str:
    if isinstance(error, ClassValidationError):
        details = "; ".join(transform_error(error, path="$")[:3])
    else:
        details = f"{type(error).__name__}: {error}"
    return one_line(f"invalid params for {method}: {details}")


class Connection:
    """One client's byte stream, decoded and handed to pygls' protocol message by message."""

    def __init__(self, protocol: JsonRPCProtocol, max_body: int = MAX_BODY_BYTES) -> None:
        self.protocol = protocol
        self.decoder = FrameDecoder(max_body)

    def receive(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            if isinstance(event, Refused):
                logger.warning("%s", event.reason)
                if event.code is not None:
                    self._error(None, event.code, event.reason)
                continue
            try:
                self._dispatch(event.payload)
            except Exception:  # a bug in a handler's dispatch: logged, and the next message is read
                logger.exception("handling a message failed")

    def _error(self, msg_id: Any, code: int, message: str) -> None:
        self.protocol._send_response(msg_id, error=ResponseError(code=code, message=message))

    def _dispatch(self, payload: Any) -> None:
        if not isinstance(payload, dict) or payload.get("jsonrpc") != JsonRPCProtocol.VERSION:
            self._error(None, INVALID_REQUEST, "not a JSON-RPC 2.0 message object")
            return
        method = payload.get("method")
        msg_id = payload.get("id")
        if method is None:  # a response to one of our requests: pygls matches it to its future
            self.protocol.handle_message(self.protocol.structure_message(payload))
            return
        valid_id = isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool)
        if not isinstance(method, str) or ("id" in payload and not valid_id):
            self._error(msg_id if valid_id else None, INVALID_REQUEST,
                        "a request needs a string method and an integer or string id")
            return
        is_request = "id" in payload
        payload.setdefault("params", None)  # JSON-RPC lets a message leave its params out
        fallback = JsonRPCRequestMessage if is_request else JsonRPCNotification
        message_type = self.protocol.get_message_type(method) or fallback
        try:
            message = self.protocol._converter.structure(payload, message_type)
        except Exception as error:
            reason = _invalid_params_reason(method, error)
            if is_request:
                logger.warning("request %r: %s", msg_id, reason)
                self._error(msg_id, INVALID_PARAMS, reason)
            else:
                logger.warning("ignored a notification: %s", reason)
            return
        self.protocol.handle_message(message)


class QuietWriter:
    """pygls' writer over a byte stream; once the client's end is gone, later messages are dropped quietly."""

    def __init__(self, stream: Any, on_lost: Callable[[], None] | None = None) -> None:
        self._stream = stream
        self._on_lost = on_lost
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._stream.write(data)
            flush = getattr(self._stream, "flush", None)
            if flush is not None:
                flush()
        except (OSError, ValueError) as error:  # a broken pipe, a reset socket, a closed file
            logger.warning("the client's end of the connection is gone (%s); nothing more is sent", error)
            self.closed = True
            if self._on_lost is not None:
                self._on_lost()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._stream.close()
        except (OSError, ValueError):
            pass


async def stream_chunks(stream: BinaryIO, queue_size: int = 64) -> AsyncIterator[bytes]:
    """What arrives on a blocking byte stream, chunk by chunk, until it ends.

    The reads run on a daemon thread (not an executor's: those are joined at interpreter exit, and a read of
    a pipe the client keeps open never returns) straight from the file descriptor (a buffered reader's lock,
    held by a blocked read, aborts the interpreter's shutdown), and wait while `queue_size` chunks are not
    yet handled.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
    descriptor = stream.fileno()

    def pump() -> None:
        while True:
            try:
                chunk = os.read(descriptor, READ_CHUNK)
            except (OSError, ValueError):
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except RuntimeError:  # the loop is gone: the server is exiting
                return
            if not chunk:
                return

    threading.Thread(target=pump, name="nextls: reading the client", daemon=True).start()
    while chunk := await queue.get():
        yield chunk


async def pump_messages(protocol: JsonRPCProtocol, chunks: AsyncIterator[bytes], stop: asyncio.Event) -> None:
    """Hand what arrives in `chunks` to `protocol` until the stream ends or `stop` is set."""
    connection = Connection(protocol)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            received = asyncio.ensure_future(anext(chunks))
            await asyncio.wait({received, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not received.done():
                received.cancel()
                return
            try:
                chunk = received.result()
            except StopAsyncIteration:
                return
            connection.receive(chunk)
    finally:
        stopped.cancel()


async def socket_chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await reader.read(READ_CHUNK):
        yield chunk
