#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

Seeds come from the spec's vectors (testdata/vectors.json), the BOLT #11 examples, and
the shapes the EOS and Stripe mocks in tests/src answer with. Files are named by content
hash, as libFuzzer names what it adds, so re-running is idempotent. Inputs the fuzzer
found (crashes, slow inputs) are added by hand with a descriptive name.
"""
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


vectors = json.load(open(os.path.join(ROOT, "testdata", "vectors.json")))["groups"]

# ---- wire_frames: [chunk][limit][type] rest ------------------------------------------
stream = b""
for v in vectors["wire_messages"]["vectors"]:
    out = v["outputs"]
    t = v["inputs"].get("typeId", 0) or 0
    body = bytes.fromhex(out.get("body", "") or "")
    frame = bytes.fromhex(out["frames"].get("channel1") or out["frames"].get("any"))
    stream += frame
    put("wire_frames", bytes([63, 0, t]) + frame)
    put("wire_frames", bytes([5, 1, t]) + body)
put("wire_frames", bytes([7, 0, 0]) + stream)
# A NoisePayload body.
put("wire_frames", bytes([63, 0, 0]) + b"\x0a\x18" + bytes(range(24)))

# ---- bitfield_rle: [align][max] rle ----------------------------------------------------
for v in vectors["wire_messages"]["vectors"]:
    bitfield = v["inputs"].get("fields", {}).get("bitfield")
    if v["inputs"].get("type") == "Have" and bitfield:
        put("bitfield_rle", bytes([3, 255]) + bytes.fromhex(bitfield))
put("bitfield_rle", bytes([3, 255]) + varint(2 * 3) + b"\xe0\x01\xff")  # literal
put("bitfield_rle", bytes([0, 4]) + varint(4 * 100 + 2 + 1) + varint(4 * 7 + 1))  # runs
put("bitfield_rle", bytes([7, 1]) + varint(4 * (1 << 40) + 3))  # huge run: bounded
put("bitfield_rle", bytes([1, 16]) + b"\xff\xff\x00\x00\x00\x00\x00\x01\x80")

# ---- noise_handshake: [mode] ... -------------------------------------------------------
payload = b"\x0a\x18" + bytes(range(24))
# Raw: an X25519 ephemeral key and a payload, as message 1 is framed.
m1 = bytes(range(32)) + payload
put("noise_handshake", bytes([0, 63]) + varint(len(m1)) + m1)
put("noise_handshake", bytes([2, 1]) + varint(len(m1)) + m1 + b"\x00" * 8)
put("noise_handshake", bytes([0, 63]) + b"\xff\xff\x7f")  # too long
# Structured: a peer's message 2 (shape odd) or 3 (shape even) with this payload.
for shape in (0, 1, 2, 3, 0x2A):
    put("noise_handshake", bytes([1, shape]) + payload)
put("noise_handshake", bytes([1, 1]) + b"\x0a\x10" + bytes(16))  # short nonce
put("noise_handshake", bytes([1, 0]))  # empty payload

# ---- ext_payloads: [which] payload (ALL order: one-time-feed, seller-id, valid, invalid,
# terms-of-use, user-message) -----------------------------------------------------------
put("ext_payloads", bytes([0]) + bytes(range(32)))
put("ext_payloads", bytes([1]) + bytes(range(32)))
put("ext_payloads", bytes([2]) + b'{"type":"time","remaining":600000}')
put("ext_payloads", bytes([2]) + b'{"free":true}')
put("ext_payloads", bytes([3]) + b'{"error":"no payment recorded for this buyer"}')
put("ext_payloads", bytes([4]) + "No redistribution. \u00e9\u2603".encode())
put("ext_payloads", bytes([5]) + b'{"name":"lnd","message":{"request":"invoice","amount":"1000"}}')
put("ext_payloads", bytes([5]) + b'{"name":"stripe","message":"not json {"}')

# ---- wire_session: ops `op len arg` ----------------------------------------------------
def op(code, arg=b""):
    return bytes([code, len(arg)]) + arg

names = sorted(["dazaar/invalid", "dazaar/one-time-feed", "dazaar/seller-id",
                "dazaar/terms-of-use", "dazaar/user-message", "dazaar/valid"])
um = names.index("dazaar/user-message")
seq = op(2, b"\x00") + op(1, b"\x01") + op(3, bytes([um]) + b'{"name":"lnd","message":{"x":1}}')
put("wire_session", seq)
put("wire_session", op(1, b"\x01") + op(5, bytes([0x12]) + b"\x08\x01\x10\x01") + op(4, b"\x0a"))
put("wire_session", op(1, b"\x11") + op(1, b"\x09"))  # no capability; unknown key
put("wire_session", op(2, b"\x01") + op(3, bytes([names.index("dazaar/valid")]) + b'{"free":true}'))
for v in vectors["wire_messages"]["vectors"]:
    if "channel1" in v["outputs"]["frames"]:
        f = bytes.fromhex(v["outputs"]["frames"]["channel1"])
        if len(f) < 250:
            put("wire_session", op(1, b"\x01") + op(0, f))
put("wire_session", op(0, b"\x00\x00\x00") + op(4, b"\xff") + op(4, b"\xff"))

# ---- card ----------------------------------------------------------------------------
key = "ab2fca32898322c208fb2dab5048bd43c355c6430f588897cb574961cfa9806f"
put("card", json.dumps({"id": key, "sellerKey": key, "name": "BTC/USD order book",
                        "description": "Order book", "keywords": ["btc"], "payment": []}))
put("card", json.dumps({"id": key, "name": "paid", "payment": [
    {"method": "Lightning", "currency": "SATS", "amount": "1000", "unit": "seconds",
     "interval": "600", "minSeconds": 2, "paymentDelay": 5000, "payTo": "node"},
    {"method": "EOS", "currency": "EOS", "amount": 0.1, "unit": "hours", "interval": 1}]}))
put("card", json.dumps({"sellerKey": key}))
put("card", '{"id": "zz"}')

# ---- config_toml -----------------------------------------------------------------------
full = open(os.path.join(ROOT, "tests", "tests", "config.rs")).read()
start = full.index('const FULL: &str = r#"') + len('const FULL: &str = r#"')
put("config_toml", full[start:full.index('"#;', start)])
put("config_toml", 'data_dir = "d"\nlisten = "127.0.0.1:0"\n[[sell]]\nfeed = "f"\nname = "n"\n')
put("config_toml", 'listen = "nope"\n[discovery]\ndht = 1\n')
put("config_toml", '[[sell]]\nfeed = "f"\nname = "n"\n[[sell.payment]]\nplugin = "free"\namount = "x"\n')

# ---- bolt11: [mode | hrp << 2] ... -----------------------------------------------------
lnd = open(os.path.join(ROOT, "plugins", "lnd", "src", "bolt11.rs")).read()
invoices = []
for line in lnd.splitlines():
    line = line.strip()
    if line.startswith("const ") and ': &str = "' in line and "ln" in line.lower():
        invoices.append(line.split('"')[1])
CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
for inv in invoices:
    put("bolt11", b"\x00" + inv.encode())
for inv in invoices[:3]:
    data = inv[inv.rindex("1") + 1:]
    words = bytes(CHARSET.index(c) for c in data)
    put("bolt11", b"\x01" + words[:-6])                 # re-checksummed
    put("bolt11", b"\x02" + words[:-(104 + 6)])         # re-signed (hrp lnbc)

# ---- eos_responses ---------------------------------------------------------------------
data = {"from": "buyer1111111", "to": "seller111111", "quantity": "1.0000 EOS",
        "memo": "dazaar: ab2fca32 buyer"}
v1 = {"global_action_seq": 500000, "account_action_seq": 0, "block_num": 12,
      "block_time": "2019-04-01T12:00:00.500",
      "action_trace": {"receipt": {"receiver": "seller111111", "global_sequence": 500000},
                       "receiver": "seller111111",
                       "act": {"account": "eosio.token", "name": "transfer", "data": data,
                               "hex_data": "00"},
                       "trx_id": "00" * 32, "block_num": 12,
                       "block_time": "2019-04-01T12:00:00.500"}}
v2 = {"@timestamp": "2019-04-01T12:00:00.000", "timestamp": "2019-04-01T12:00:00.000",
      "block_num": 12, "trx_id": "00" * 32,
      "act": {"account": "eosio.token", "name": "transfer",
              "data": dict(data, amount=1.0, symbol="EOS")},
      "global_sequence": 500000, "action_ordinal": 1}
put("eos_responses", json.dumps({"actions": [v1], "last_irreversible_block": 10}))
put("eos_responses", json.dumps({"query_time_ms": 1.5, "cached": False, "lib": 10,
                                 "total": {"value": 1}, "actions": [v2]}))
put("eos_responses", json.dumps({"chain_id": "aa" * 32, "head_block_num": 100,
                                 "head_block_time": "2024-01-01T00:00:00.000",
                                 "last_irreversible_block_num": 90,
                                 "last_irreversible_block_id": "00000059" + "ab" * 28}))
put("eos_responses", json.dumps({"code": 500, "message": "Internal Service Error",
                                 "error": {"what": "x"}}))
put("eos_responses", "18446744073709551615.0000 EOS")

# ---- stripe: [even] response | [odd] header \n body ------------------------------------
seller, buyer = key, "cd" * 32
pi = {"id": "pi_mock1", "object": "payment_intent", "amount": 500, "amount_received": 500,
      "currency": "usd", "created": 1700000000, "status": "succeeded", "livemode": False,
      "metadata": {"dazaar_seller": seller, "dazaar_buyer": buyer},
      "latest_charge": {"id": "ch_1", "object": "charge", "amount_refunded": 100,
                        "refunded": False, "disputed": False}}
cs = {"id": "cs_test_mock1", "object": "checkout.session", "mode": "payment",
      "payment_status": "paid", "status": "complete", "amount_total": 500, "currency": "eur",
      "created": 1700000000, "payment_intent": "pi_for_cs",
      "metadata": {"dazaar_seller": seller, "dazaar_buyer": buyer}}
put("stripe", b"\x00" + json.dumps({"object": "list", "url": "/v1/payment_intents",
                                    "data": [pi], "has_more": False}).encode())
put("stripe", b"\x00" + json.dumps({"object": "search_result", "data": [cs, pi],
                                    "has_more": True, "next_page": "abc"}).encode())
put("stripe", b"\x00" + json.dumps({"error": {"type": "invalid_request_error",
                                              "message": "Invalid integer: unit_amount"}}).encode())
import hmac
for ev in ({"type": "checkout.session.completed", "data": {"object": cs}},
           {"type": "charge.refunded", "data": {"object": {"object": "charge",
                                                          "payment_intent": "pi_mock1"}}}):
    body = json.dumps(ev).encode()
    sig = hmac.new(b"whsec_fuzz", b"1700000000." + body, hashlib.sha256).hexdigest()
    put("stripe", b"\x01" + f"t=1700000000,v1={sig}".encode() + b"\n" + body)
put("stripe", b"\x01t=abc,v1=zz\n{}")

print("corpus written to", CORPUS, file=sys.stderr)
