"""SPDY/3.1 framing as kubectl's client-go speaks it: the header dictionary is SPDY/3's (1423 bytes, the adler32
client-go's zlib stream names), header blocks share one compression context per direction, and frames come out of
a byte stream fed in arbitrary pieces."""

from __future__ import annotations

import zlib

from kwire.agent.kubelet import spdy


def test_dictionary_is_spdy3s() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_syn_streams_and_data_round_trip_in_pieces() -> None:
    client, server = spdy.Headers(), spdy.Headers()
    wire = b""
    for sid, kind in ((1, "error"), (3, "data")):
        block = client.encode({"streamType": kind, "port": "8080", "requestID": "0"})
        wire += spdy.control(spdy.SYN_STREAM, sid.to_bytes(4, "big") + b"\0\0\0\0" + b"\0\0" + block)
    wire += spdy.data(3, b"GET / HTTP/1.1\r\n\r\n") + spdy.data(1, b"", fin=True)
    wire += spdy.control(spdy.PING, (7).to_bytes(4, "big"))
    parser, frames = spdy.Parser(), []
    for i in range(0, len(wire), 5):  # WebSocket messages split the byte stream anywhere
        frames += parser.feed(wire[i : i + 5])
    assert [(f.control, f.type, f.stream_id) for f in frames] == [
        (True, spdy.SYN_STREAM, 1),
        (True, spdy.SYN_STREAM, 3),
        (False, 0, 3),
        (False, 0, 1),
        (True, spdy.PING, 7),
    ]
    assert spdy.syn_stream_headers(frames[0], server) == {"streamtype": "error", "port": "8080", "requestid": "0"}
    assert spdy.syn_stream_headers(frames[1], server)["streamtype"] == "data"  # the second block needs the first
    assert frames[2].payload == b"GET / HTTP/1.1\r\n\r\n" and frames[3].flags & spdy.FLAG_FIN
