"""SPDY/3.1 framing, the part port-forward needs (what moby/spdystream's `spdy` package is to the kubelet).

`kubectl port-forward` (client-go's portforward over `SPDY/3.1+portforward.k8s.io`) speaks SPDY/3.1 inside the
WebSocket: frames are parsed from the concatenated binary messages (`Parser`) and written as bytes (`control`,
`data`, `Headers.encode`). Header blocks are zlib streams primed with SPDY/3's dictionary, one compression context
per direction for the whole connection, flushed with Z_SYNC_FLUSH after each block (so blocks must be decoded and
encoded in wire order). Flow control (WINDOW_UPDATE) is not enforced by client-go's SPDY stack and not by this one.

Hand-written: no maintained Python SPDY library exists (SPDY was superseded by HTTP/2); the framing is ~100 lines.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR = 1
RST_REFUSED_STREAM = 3
MAX_FRAME = 1 << 24  # a frame's length field has 24 bits
MAX_HEADER_BLOCK = 1 << 20  # a decoded header block larger than this is refused

_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges age "
    "allow authorization cache-control connection content-base content-encoding content-language content-length "
    "content-location content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location max-forwards pragma "
    "proxy-authenticate proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
    "user-agent vary via warning www-authenticate method get status"
).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
# SPDY/3's header compression dictionary (draft 3, section 2.6.10.1): length-prefixed words, then a literal.
DICTIONARY = b"".join(len(w).to_bytes(4, "big") + w.encode() for w in _WORDS) + _TAIL.encode()


class ProtocolError(Exception):
    """The peer sent something that is not SPDY/3."""


@dataclass(frozen=True)
class Frame:
    control: bool
    type: int  # control frame type; 0 for data
    flags: int
    stream_id: int  # data frames; for control frames the stream id the payload starts with (0 if none)
    payload: bytes


class Parser:
    """Frames out of a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while len(self._buf) >= 8:
            length = int.from_bytes(self._buf[5:8], "big")
            if len(self._buf) < 8 + length:
                break
            head, payload = bytes(self._buf[:8]), bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            if head[0] & 0x80:
                version = int.from_bytes(head[0:2], "big") & 0x7FFF
                if version != VERSION:
                    raise ProtocolError(f"unsupported SPDY version {version}")
                ftype = int.from_bytes(head[2:4], "big")
                sid = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF if len(payload) >= 4 else 0
                out.append(Frame(True, ftype, head[4], sid, payload))
            else:
                out.append(Frame(False, 0, head[4], int.from_bytes(head[0:4], "big") & 0x7FFFFFFF, payload))
        return out


class Headers:
    """One direction's header compression context."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, zdict=DICTIONARY)

    def decode(self, block: bytes) -> dict[str, str]:
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise ProtocolError(f"header block: {exc}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError("header block too large")
        out: dict[str, str] = {}
        try:
            count, pos = int.from_bytes(raw[0:4], "big"), 4
            for _ in range(count):
                n = int.from_bytes(raw[pos : pos + 4], "big")
                name = raw[pos + 4 : pos + 4 + n].decode()
                pos += 4 + n
                v = int.from_bytes(raw[pos : pos + 4], "big")
                value = raw[pos + 4 : pos + 4 + v].decode()
                pos += 4 + v
                out[name.lower()] = value.split("\x00")[0]
        except (UnicodeDecodeError, IndexError):
            raise ProtocolError("malformed header block") from None
        return out

    def encode(self, headers: dict[str, str]) -> bytes:
        raw = len(headers).to_bytes(4, "big")
        for name, value in headers.items():
            n, v = name.lower().encode(), value.encode()
            raw += len(n).to_bytes(4, "big") + n + len(v).to_bytes(4, "big") + v
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)


def control(ftype: int, payload: bytes, *, flags: int = 0) -> bytes:
    return (0x8000 | VERSION).to_bytes(2, "big") + ftype.to_bytes(2, "big") + bytes([flags]) + _len(payload) + payload


def data(stream_id: int, payload: bytes, *, fin: bool = False) -> bytes:
    return stream_id.to_bytes(4, "big") + bytes([FLAG_FIN if fin else 0]) + _len(payload) + payload


def _len(payload: bytes) -> bytes:
    if len(payload) >= MAX_FRAME:
        raise ValueError("frame too large")
    return len(payload).to_bytes(3, "big")


def syn_stream_headers(frame: Frame, headers: Headers) -> dict[str, str]:
    """The headers of a SYN_STREAM (stream id, associated id, priority and slot come first)."""
    return headers.decode(frame.payload[10:])
