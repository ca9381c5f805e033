#!/usr/bin/env python3
"""An example verifier for the dazaar `exec` plugin (docs/exec-plugin.md).

Buyers are valid as a JSON file of paid buyers says; the file is re-read whenever it
changes, so a seller (or a script of theirs) can add a buyer while selling:

    {
      "buyers": {
        "<buyer key, 64 hex>": {"paid_until_ms": 1700000600000},
        "<buyer key>": {"grant": "free"},
        "<buyer key>": {"grant": "once", "seller": "<seller key: only this product>"}
      }
    }

A buyer with `paid_until_ms` in the future gets a time grant for what is left; `grant`
"free" or "once" gives that kind of access; `seller` (optional) limits an entry to one
product. Anyone else is refused with a reason.

Run it by hand to see the protocol (one JSON request per line on stdin):

    echo '{"id":1,"op":"describe"}' | python3 examples/verifier.py --paid paid.json

Standard library only. Logs go to stderr (the plugin forwards them to the seller's log);
stdout carries protocol answers and nothing else.
"""

import argparse
import json
import os
import sys

MAX_FILE = 16 * 1024 * 1024


def log(*parts):
    print("verifier.py:", *parts, file=sys.stderr, flush=True)


class PaidFile:
    """The paid-buyers file, re-read when its size or modification time changes."""

    def __init__(self, path):
        self.path = path
        self.stamp = None
        self.buyers = {}

    def current(self):
        try:
            st = os.stat(self.path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp != self.stamp:
            self.stamp = stamp
            self.buyers = self.read() if stamp is not None else {}
        return self.buyers

    def read(self):
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(MAX_FILE).decode("utf-8"))
            buyers = data.get("buyers", {})
            if not isinstance(buyers, dict):
                raise ValueError("buyers is not an object")
            log("read", len(buyers), "buyers from", self.path)
            return {k.lower(): v for k, v in buyers.items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError) as e:
            # Fail closed: a file that cannot be read grants nothing.
            log("cannot read", self.path, ":", e)
            return {}


def validate(paid, req):
    buyer = str(req.get("buyer", "")).lower()
    seller = str(req.get("seller", "")).lower()
    now_ms = req.get("now_ms", 0)
    entry = paid.current().get(buyer)
    if entry is None:
        return {"valid": False, "reason": "no payment recorded for this buyer"}
    if "seller" in entry and str(entry["seller"]).lower() != seller:
        return {"valid": False, "reason": "no payment recorded for this product"}
    kind = entry.get("grant")
    if kind in ("free", "once"):
        return {"valid": True, "grant": {"type": kind}}
    until = entry.get("paid_until_ms")
    if isinstance(until, int) and until > now_ms:
        return {"valid": True, "grant": {"type": "time", "remaining": until - now_ms}}
    return {"valid": False, "reason": "the paid time has run out"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paid", required=True, help="the JSON file of paid buyers")
    ap.add_argument("--method", default="exec", help="the card method served")
    ap.add_argument("--currency", action="append", default=[],
                    help="a card currency served (repeat; none: any)")
    ap.add_argument("--pid-file", help="write this process's id there")
    args = ap.parse_args()
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(str(os.getpid()))
    paid = PaidFile(args.paid)
    log("started, pid", os.getpid())

    # One request per line; the answer carries the request's id. The loop ends when the
    # plugin closes stdin (the seller stopped or restarts the verifier).
    for line in sys.stdin:
        try:
            req = json.loads(line)
            rid = req["id"]
        except (ValueError, KeyError, TypeError):
            log("ignored a line that is not a request")
            continue
        op = req.get("op")
        if op == "describe":
            answer = {"name": "paid-file", "version": "1.0", "methods": [args.method],
                      "currencies": args.currency}
        elif op == "validate":
            answer = validate(paid, req)
        elif op == "user_message":
            answer = {"reply": None}  # no messages handled
        elif op == "payment_request":
            terms = req.get("terms", {})
            answer = {"instructions": {
                "memo": "dazaar: %s %s" % (req.get("seller"), req.get("buyer")),
                "amount": req.get("amount"),
                "currency": terms.get("currency"),
                "note": "pay the seller, quoting the memo; they add you to the paid file",
            }}
        else:
            answer = {"error": "unknown op %r" % (op,)}
        answer["id"] = rid
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
