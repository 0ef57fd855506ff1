#!/usr/bin/env python3
"""Writes the hand-made seed corpus under fuzz/seeds/<target>/ (real protocol messages, so that the fuzzers start
from valid input). The structured targets (turn_engine, auth_token) take `arbitrary`-decoded input that is not worth writing by hand:
their seeds are a corpus grown by fuzzing from nothing and reduced to a set cover of its features, checked in as is:
    cd fuzz && target/x86_64-unknown-linux-gnu/release/T -set_cover_merge=1 -max_len=2048 seeds/T corpus/T"""
import json, os, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# signal_message: every method of SPEC.md in its ZLMediaKit shape, plus escapes, unicode and near misses.
call = {"class": "request", "method": "call", "transaction_id": "T1", "guest_id": "g1", "room_id": "cam",
        "type": "play", "vhost": "__defaultVhost__", "app": "live", "stream": "test", "sdp": "v=0\r\no=- 1 1 IN IP4 0\r\n"}
msgs = {
    "register": {"class": "request", "method": "register", "transaction_id": "r1", "room_id": "cam"},
    "register_assigned": {"class": "request", "method": "register", "transaction_id": "r2"},
    "unregister": {"class": "request", "method": "unregister", "transaction_id": "u1", "room_id": "cam"},
    "call": call,
    "accept": dict(call, **{"class": "accept"}),
    "reject": {"class": "reject", "method": "call", "transaction_id": "T1", "guest_id": "g1", "room_id": "cam",
               "reason": "busy"},
    "candidate": {"class": "indication", "method": "candidate", "transaction_id": "c1", "guest_id": "g1",
                  "room_id": "cam", "candidate": "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host",
                  "ufrag": "u", "pwd": "p"},
    "bye": {"class": "indication", "method": "bye", "transaction_id": "b1", "guest_id": "g1", "room_id": "cam",
            "reason": "hang up"},
    "push": dict(call, type="push"),
    "unicode": {"class": "request", "method": "register", "transaction_id": "\u00e9\u6f22\U0001F600",
                "room_id": "caf\u00e9"},
}
for name, m in msgs.items():
    put("signal_message", name, json.dumps(m))
put("signal_message", "escapes", r'{"class":"request","method":"register","transaction_id":"a\"b\\c\u0041","room_id":"r\ud83d\ude00"}')
put("signal_message", "numbers", '{"class":"request","method":"register","transaction_id":1,"room_id":[1]}')
put("signal_message", "nulls", '{"class":null,"method":"call","transaction_id":"","room_id":"x"}')
put("signal_message", "duplicate", '{"class":"request","class":"accept","method":"register","transaction_id":"d"}')
put("signal_message", "long_id", json.dumps({"class": "request", "method": "register", "transaction_id": "t",
                                             "room_id": "x" * 129}))

# ws_frames: [limit hi, limit lo, number of read sizes, read sizes..., masked client frames...]
def frame(op, payload, fin=True, mask=b"\x11\x22\x33\x44"):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def ws(name, frames, limit=4096, reads=(1, 3, 7)):
    put("ws_frames", name, struct.pack(">HB", limit, len(reads)) + bytes(reads) + b"".join(frames))

text = json.dumps(msgs["register"]).encode()
ws("text", [frame(1, text)])
ws("fragments", [frame(1, text[:10], fin=False), frame(9, b"ping"), frame(0, text[10:20], fin=False),
                 frame(0, text[20:])])
ws("control", [frame(9, b"hello"), frame(10, b""), frame(8, struct.pack(">H", 1000) + b"bye")])
ws("medium", [frame(1, b"x" * 300)], limit=1000, reads=(2, 2, 200))
ws("too_big", [frame(1, b"y" * 300)], limit=100, reads=(10,))
ws("huge_header", [bytes([0x81, 0xFF]) + struct.pack(">Q", 1 << 63) + b"\0\0\0\0"])
ws("unmasked", [bytes([0x81, 0x02]) + b"hi"])
ws("bad_utf8", [frame(1, b"\xff\xfe")])
ws("close_codes", [frame(8, struct.pack(">H", 1005)), frame(8, b"\x03")])

# http_head: upgrades as browsers, ZLMediaKit and our client send them, plain HTTP, and near misses.
key = "dGhlIHNhbXBsZSBub25jZQ=="
up = ("GET /?token=abc HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
put("http_head", "upgrade", up)
put("http_head", "upgrade_bearer", up.replace("?token=abc", "").replace("\r\n\r\n", "\r\nAuthorization: Bearer xyz\r\n\r\n"))
put("http_head", "upgrade_frames_after", up + "\x81\x80\0\0\0\0")
put("http_head", "upgrade_lf_only", up.replace("\r\n", "\n"))
put("http_head", "http", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
put("http_head", "post", "POST /api/rooms HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
put("http_head", "version", up.replace("Version: 13", "Version: 8"))
put("http_head", "bad_key", up.replace(key, "short"))
put("http_head", "http10", up.replace("HTTP/1.1", "HTTP/1.0"))
put("http_head", "many_headers", up.replace("\r\n\r\n", "\r\n" + "X-A: b\r\n" * 60 + "\r\n"))

# stun_message: real requests and answers, with and without integrity and fingerprint.
MAGIC = 0x2112A442
def attr(t, v):
    return struct.pack(">HH", t, len(v)) + v + b"\0" * (-len(v) % 4)

def stun(mtype, attrs, txid=b"fuzzseed0001", fingerprint=True):
    body = b"".join(attrs)
    if fingerprint:
        head = struct.pack(">HHI", mtype, len(body) + 8, MAGIC) + txid
        crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += attr(0x8028, struct.pack(">I", crc))
    return struct.pack(">HHI", mtype, len(body), MAGIC) + txid + body

xor_peer = struct.pack(">BBH", 0, 1, 4000 ^ (MAGIC >> 16)) + struct.pack(">I", 0xC6336407 ^ MAGIC)
put("stun_message", "binding", stun(0x0001, []))
put("stun_message", "binding_plain", stun(0x0001, [], fingerprint=False))
put("stun_message", "allocate", stun(0x0003, [attr(0x0019, b"\x11\0\0\0")]))
put("stun_message", "allocate_signed", stun(0x0003, [attr(0x0019, b"\x11\0\0\0"), attr(0x0006, b"1800000000:cam"),
                                                     attr(0x0014, b"switchboard"), attr(0x0015, b"0123456789abcdef"),
                                                     attr(0x0008, b"\0" * 20)]))
put("stun_message", "permission", stun(0x0008, [attr(0x0012, xor_peer)]))
put("stun_message", "channel_bind", stun(0x0009, [attr(0x000C, b"\x40\0\0\0"), attr(0x0012, xor_peer)]))
put("stun_message", "send", stun(0x0016, [attr(0x0012, xor_peer), attr(0x0013, b"hello")], fingerprint=False))
put("stun_message", "error_401", stun(0x0113, [attr(0x0009, b"\0\0\x04\x01Unauthorized"), attr(0x0014, b"r")]))
put("stun_message", "ice_check", stun(0x0001, [attr(0x0006, b"a:b"), attr(0x0024, b"\x6e\0\x1e\xff"),
                                               attr(0x8029, b"\0" * 8), attr(0x0008, b"\0" * 20)]))
put("stun_message", "sha256", stun(0x0004, [attr(0x000D, b"\0\0\x02\x58"), attr(0x001C, b"\0" * 32)]))

# auth_token and turn_engine take structured (arbitrary) input: their seeds are minimized fuzzing corpora.
