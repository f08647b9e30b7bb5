"""DNS wire format, the parts the server needs: query parsing, the fast-path cache key, response encoding.

Names are handled as tuples of lower-cased labels (bytes, no root label): `("kubernetes", "default", ...)` as
`(b"kubernetes", b"default", b"svc", b"cluster", b"local")`. Comparing tuples is exact and case-insensitive by
construction, and a label that contains a dot byte cannot be confused with two labels.

Responses are encoded here rather than by dnspython: the owner name of every record equal to the question's
name is written as a pointer to the question (offset 12), so a cached response answers any client that asks the
same question in any letter case, keeping that client's case; and the encoder is what the precomputed wire
responses of the fast path are made of. dnspython parses upstream answers (off the hot path).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Hashable
from dataclasses import dataclass, field

Labels = tuple[bytes, ...]

# Types
A = 1
NS = 2
CNAME = 5
SOA = 6
PTR = 12
MX = 15
TXT = 16
AAAA = 28
SRV = 33
OPT = 41
IXFR = 251
AXFR = 252
ANY = 255
CLASS_IN = 1
CLASS_ANY = 255

# Rcodes
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16

RCODE_NAMES = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    SERVFAIL: "SERVFAIL",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    BADVERS: "BADVERS",
}

# CoreDNS's `type` label: these types by name, anything else "other".
TYPE_NAMES = {
    A: "A",
    NS: "NS",
    CNAME: "CNAME",
    SOA: "SOA",
    PTR: "PTR",
    MX: "MX",
    TXT: "TXT",
    AAAA: "AAAA",
    SRV: "SRV",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    50: "NSEC3",
    64: "SVCB",
    65: "HTTPS",
    IXFR: "IXFR",
    AXFR: "AXFR",
    ANY: "ANY",
}

# The UDP payload size we advertise in our OPT records (the DNS flag day 2020 value, as CoreDNS's bufsize).
OUR_UDP_SIZE = 1232
MAX_UDP_NO_EDNS = 512


def type_label(qtype: int) -> str:
    return TYPE_NAMES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))


# -- names ---------------------------------------------------------------------------------------------------


def labels_of(name: str) -> Labels:
    """'Kubernetes.default.svc.cluster.local.' -> lower-cased label tuple; ValueError for an invalid name."""
    name = name.strip()
    if name in ("", "."):
        return ()
    if name.endswith("."):
        name = name[:-1]
    out = []
    for part in name.split("."):
        try:
            b = part.lower().encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"invalid DNS name {name!r}: not ASCII") from None
        if not b or len(b) > 63:
            raise ValueError(f"invalid DNS name {name!r}: empty or over-long label")
        out.append(b)
    if sum(len(b) + 1 for b in out) + 1 > 255:
        raise ValueError(f"invalid DNS name {name!r}: longer than 255 octets")
    return tuple(out)


def name_text(labels: Labels) -> str:
    """Presentation form with the trailing dot; bytes outside printable ASCII and specials are escaped."""
    if not labels:
        return "."
    parts = []
    for lab in labels:
        s = []
        for c in lab:
            if c in b'.\\"();@$':
                s.append("\\" + chr(c))
            elif 0x21 <= c <= 0x7E:
                s.append(chr(c))
            else:
                s.append(f"\\{c:03d}")
        parts.append("".join(s))
    return ".".join(parts) + "."


def name_wire(labels: Labels) -> bytes:
    return b"".join(bytes((len(lab),)) + lab for lab in labels) + b"\x00"


def is_subdomain(labels: Labels, zone: Labels) -> bool:
    n = len(zone)
    return len(labels) >= n and (n == 0 or labels[-n:] == zone)


def reverse_labels(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Labels:
    if ip.version == 4:
        return tuple(str(b).encode() for b in reversed(ip.packed)) + (b"in-addr", b"arpa")
    nibbles = ip.packed.hex()
    return tuple(c.encode() for c in reversed(nibbles)) + (b"ip6", b"arpa")


IN_ADDR_ARPA: Labels = (b"in-addr", b"arpa")
IP6_ARPA: Labels = (b"ip6", b"arpa")


def ip_from_reverse(labels: Labels) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of a complete reverse name (4 octets under in-addr.arpa, 32 nibbles under ip6.arpa)."""
    if labels[-2:] == IN_ADDR_ARPA and len(labels) == 6:
        octets = []
        for lab in reversed(labels[:4]):
            if not lab.isdigit() or len(lab) > 3 or (len(lab) > 1 and lab[:1] == b"0"):
                return None
            v = int(lab)
            if v > 255:
                return None
            octets.append(v)
        return ipaddress.IPv4Address(bytes(octets))
    if labels[-2:] == IP6_ARPA and len(labels) == 34:
        nib = b"".join(reversed(labels[:32]))
        if len(nib) != 32:
            return None
        try:
            return ipaddress.IPv6Address(bytes.fromhex(nib.decode("ascii")))
        except ValueError:
            return None
    return None


# -- records -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameRdata:
    """Rdata that is a single domain name (CNAME, PTR, NS): written with compression."""

    target: Labels


@dataclass(frozen=True, slots=True)
class SrvRdata:
    priority: int
    weight: int
    port: int
    target: Labels  # never compressed (RFC 2782)


@dataclass(frozen=True, slots=True)
class SoaRdata:
    mname: Labels
    rname: Labels
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


Rdata = bytes | NameRdata | SrvRdata | SoaRdata


@dataclass(frozen=True, slots=True)
class RR:
    name: Labels
    rtype: int
    ttl: int
    rdata: Rdata
    rclass: int = CLASS_IN

    def with_ttl(self, ttl: int) -> RR:
        return RR(self.name, self.rtype, ttl, self.rdata, self.rclass)

    def with_name(self, name: Labels) -> RR:
        return RR(name, self.rtype, self.ttl, self.rdata, self.rclass)


def a_record(name: Labels, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, ttl: int) -> RR:
    return RR(name, A if ip.version == 4 else AAAA, ttl, ip.packed)


def txt_rdata(*strings: str) -> bytes:
    out = b""
    for s in strings:
        b = s.encode()
        while True:
            chunk, b = b[:255], b[255:]
            out += bytes((len(chunk),)) + chunk
            if not b:
                break
    return out


@dataclass(slots=True)
class Answer:
    """What a source (cluster records, hosts, the forwarder) answers for one question."""

    rcode: int = NOERROR
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    aa: bool = True
    plugin: str = "kubernetes"
    # A CNAME target outside the cluster to resolve further (ExternalName Services).
    chase: Labels | None = None
    # Monotonic time after which the answer must be recomputed (0: valid until the data changes).
    expires: float = 0.0
    # "success"/"denial" when the answer came out of the forward cache.
    cache: str | None = None
    # "success"/"denial" when the answer (fresh from upstream) was put in the forward cache: repeats are hits.
    cached_as: str | None = None
    # What the answer depends on (records.py's change tags): its precomputed response is dropped when one changes.
    deps: tuple[Hashable, ...] = ()


# -- queries -------------------------------------------------------------------------------------------------


class Query:
    """A parsed query. `qname_end` is the offset just past the question name's root label."""

    __slots__ = (
        "id",
        "flags",
        "labels",
        "qname_end",
        "qtype",
        "qclass",
        "edns",
        "udp_size",
        "do",
        "edns_version",
        "plain",
    )

    def __init__(self) -> None:
        self.id = 0
        self.flags = 0
        self.labels: Labels = ()
        self.qname_end = 12
        self.qtype = 0
        self.qclass = 0
        self.edns = False
        self.udp_size = MAX_UDP_NO_EDNS
        self.do = False
        self.edns_version = 0
        # One question, no answer/authority records, at most the OPT record: the shape the fast path caches.
        self.plain = False

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def cd(self) -> bool:
        return bool(self.flags & 0x0010)

    def max_udp(self) -> int:
        if not self.edns:
            return MAX_UDP_NO_EDNS
        return max(MAX_UDP_NO_EDNS, min(self.udp_size, 65535))


@dataclass(frozen=True, slots=True)
class Reject:
    """A query answered with a bare header: FORMERR, NOTIMP (or BADVERS, which needs an OPT record)."""

    id: int
    flags: int
    rcode: int
    opcode: int = 0
    edns: bool = False


class _Malformed(Exception):
    pass


def _skip_name(data: bytes, off: int) -> int:
    n = len(data)
    hops = 0
    while True:
        if off >= n:
            raise _Malformed
        b = data[off]
        if b == 0:
            return off + 1
        kind = b & 0xC0
        if kind == 0xC0:
            if off + 2 > n:
                raise _Malformed
            return off + 2
        if kind:
            raise _Malformed
        off += b + 1
        hops += 1
        if hops > 127:
            raise _Malformed


def parse_query(data: bytes) -> Query | Reject | None:
    """Parse a query as miekg/dns (CoreDNS's server) accepts it: None = drop silently (shorter than a header, or
    a response), Reject = answer with FORMERR/NOTIMP/BADVERS, Query = answer it."""
    n = len(data)
    if n < 12:
        return None
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if flags & 0x8000:
        return None
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        return Reject(qid, flags, NOTIMP, opcode)
    if qd != 1 or an > 1 or ns > 1 or ar > 2:
        return Reject(qid, flags, FORMERR)
    q = Query()
    q.id = qid
    q.flags = flags
    try:
        # Question name: plain labels only (a pointer could only point into the header).
        off = 12
        labels = []
        total = 1
        while True:
            if off >= n:
                raise _Malformed
            ln = data[off]
            if ln == 0:
                off += 1
                break
            if ln & 0xC0:
                raise _Malformed
            lab = data[off + 1 : off + 1 + ln]
            if len(lab) != ln:
                raise _Malformed
            total += ln + 1
            if total > 255:
                raise _Malformed
            labels.append(lab.lower())
            off += ln + 1
        if off + 4 > n:
            raise _Malformed
        q.labels = tuple(labels)
        q.qname_end = off
        q.qtype, q.qclass = struct.unpack_from("!HH", data, off)
        off += 4
        opt_seen = False
        for section, count in ((1, an), (2, ns), (3, ar)):
            for _ in range(count):
                name_start = off
                off = _skip_name(data, off)
                if off + 10 > n:
                    raise _Malformed
                rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
                off += 10
                if off + rdlen > n:
                    raise _Malformed
                if rtype == OPT:
                    if section != 3 or opt_seen or data[name_start] != 0:
                        raise _Malformed
                    opt_seen = True
                    q.edns = True
                    q.udp_size = rclass
                    q.edns_version = (ttl >> 16) & 0xFF
                    q.do = bool(ttl & 0x8000)
                off += rdlen
    except (_Malformed, struct.error):
        return Reject(qid, flags, FORMERR)
    if q.edns and q.edns_version != 0:
        return Reject(qid, flags, BADVERS, edns=True)
    q.plain = an == 0 and ns == 0 and ar == (1 if q.edns else 0)
    return q


def fast_key(data: bytes) -> tuple[bytes, int] | None:
    """The fast path's cache key of a plain query, and the offset just past its question name.

    Key = everything after the ID with the question name lower-cased and, with EDNS, the OPT record's options
    left out (its rdlength counted as 0): flags, counts, name, qtype, qclass, and the OPT record's UDP size and
    extended flags (DO). So for a lower-case query without EDNS options the key is exactly `data[2:]`, which
    is all the server's hot loop looks up. None when the query is not of the plain shape."""
    n = len(data)
    if n < 17 or data[2] & 0xF8:
        return None
    end = data.find(b"\x00", 12) + 1
    if end <= 0:
        return None
    qend = end + 4
    if qend == n:
        return data[2:12] + data[12:end].lower() + data[end:qend], end
    if (
        n - qend >= 11
        and data[qend] == 0
        and data[qend + 1] == 0
        and data[qend + 2] == OPT
        and n - qend == 11 + (data[qend + 9] << 8 | data[qend + 10])
    ):
        return data[2:12] + data[12:end].lower() + data[end : qend + 9] + b"\x00\x00", end
    return None


# -- responses -----------------------------------------------------------------------------------------------


class _Writer:
    __slots__ = ("buf", "names")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.names: dict[Labels, int] = {}

    def name(self, labels: Labels, compress: bool = True) -> None:
        buf = self.buf
        names = self.names
        for i in range(len(labels)):
            suffix = labels[i:]
            if compress:
                ptr = names.get(suffix)
                if ptr is not None:
                    buf += struct.pack("!H", 0xC000 | ptr)
                    return
            pos = len(buf)
            if pos < 0x3FFF and suffix not in names:
                names[suffix] = pos
            lab = labels[i]
            buf.append(len(lab))
            buf += lab
        buf.append(0)

    def rr(self, rr: RR) -> None:
        buf = self.buf
        self.name(rr.name)
        buf += struct.pack("!HHI", rr.rtype, rr.rclass, rr.ttl & 0xFFFFFFFF)
        start = len(buf)
        buf += b"\x00\x00"
        rd = rr.rdata
        if isinstance(rd, bytes):
            buf += rd
        elif isinstance(rd, NameRdata):
            self.name(rd.target)
        elif isinstance(rd, SrvRdata):
            buf += struct.pack("!HHH", rd.priority, rd.weight, rd.port)
            self.name(rd.target, compress=False)
        elif isinstance(rd, SoaRdata):
            self.name(rd.mname)
            self.name(rd.rname)
            buf += struct.pack("!IIIII", rd.serial, rd.refresh, rd.retry, rd.expire, rd.minimum)
        struct.pack_into("!H", buf, start, len(buf) - start - 2)


def _flags(q_flags: int, rcode: int, aa: bool, tc: bool) -> int:
    # QR, opcode QUERY, AA, TC, RD (copied), RA, CD (copied), rcode.
    return 0x8000 | (0x0400 if aa else 0) | (0x0200 if tc else 0) | (q_flags & 0x0110) | 0x0080 | (rcode & 0xF)


def _opt(rcode: int, do: bool) -> bytes:
    ttl = ((rcode >> 4) << 24) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", OPT, OUR_UDP_SIZE, ttl, 0)


def encode_response(data: bytes, q: Query, ans: Answer, max_size: int) -> bytes:
    """The response to `q` (whose wire form is `data`; its question section is copied byte for byte, so the
    client sees its own letter case). Larger than `max_size`: the question only, with TC set."""
    w = _Writer()
    rcode = ans.rcode
    qname_end = q.qname_end
    ar_count = len(ans.additional) + (1 if q.edns else 0)
    w.buf += struct.pack(
        "!HHHHHH",
        q.id,
        _flags(q.flags, rcode, ans.aa, False),
        1,
        len(ans.answer),
        len(ans.authority),
        ar_count,
    )
    w.buf += data[12 : qname_end + 4]
    # The question's name and its suffixes, for compression (lower-cased keys; the bytes keep the client's case).
    off = 12
    for i in range(len(q.labels)):
        w.names[q.labels[i:]] = off
        off += len(q.labels[i]) + 1
    for section in (ans.answer, ans.authority, ans.additional):
        for rr in section:
            w.rr(rr)
    if q.edns:
        w.buf += _opt(rcode, q.do)
    if len(w.buf) <= max_size:
        return bytes(w.buf)
    head = struct.pack("!HHHHHH", q.id, _flags(q.flags, rcode, ans.aa, True), 1, 0, 0, 1 if q.edns else 0) + bytes(
        data[12 : qname_end + 4]
    )
    return head + (_opt(rcode, q.do) if q.edns else b"")


def encode_reject(r: Reject) -> bytes:
    """FORMERR/NOTIMP/BADVERS: a bare header (miekg/dns drops the sections of a rejected query)."""
    if r.rcode == NOTIMP:
        flags = 0x8000 | (r.opcode << 11) | (r.flags & 0x0110) | 0x0080 | NOTIMP
    else:
        flags = _flags(r.flags, r.rcode, False, False)
    if r.edns:
        return struct.pack("!HHHHHH", r.id, flags, 0, 0, 0, 1) + _opt(r.rcode, False)
    return struct.pack("!HHHHHH", r.id, flags, 0, 0, 0, 0)


def servfail_for(data: bytes, rcode: int = SERVFAIL) -> bytes | None:
    """A bare SERVFAIL (or `rcode`) for whatever query `data` is, if it has a header (something unexpected
    failed, or the server is overloaded)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    return struct.pack("!HHHHHH", qid, _flags(flags, rcode, False, False), 0, 0, 0, 0)


def build_query(
    qid: int,
    labels: Labels,
    qtype: int,
    qclass: int = CLASS_IN,
    *,
    do: bool = False,
    cd: bool = False,
    qname_wire: bytes | None = None,
    edns: bool = True,
) -> bytes:
    """A recursive query (RD) for the forwarder, with EDNS (our UDP size) unless `edns` is False."""
    flags = 0x0100 | (0x0010 if cd else 0)
    out = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    out += qname_wire if qname_wire is not None else name_wire(labels)
    out += struct.pack("!HH", qtype, qclass)
    if edns:
        out += b"\x00" + struct.pack("!HHIH", OPT, OUR_UDP_SIZE, 0x8000 if do else 0, 0)
    return out
