#!/usr/bin/env python3
"""A cursor that other connections try to continue (tests/pool.rs).

usage: pool_cursor.py URI --ca CA_FILE --token JWT --coll NAME [--db DB]

Talks with the test over stdin/stdout, one JSON line each step:
1. opens find({}) sorted by i with batch_size(2) and takes the first batch:
   prints {"cursor_id": "ID", "first": [i, ...]};
2. waits for a line on stdin, then iterates the rest of that cursor:
   prints {"rest": [i, ...]};
3. opens a second cursor the same way and takes its first batch only:
   prints {"held_cursor_id": "ID"}, then sleeps until killed (SIGKILL: no
   killCursors is ever sent for it).
On an error it prints {"error", "code", "type"} and exits 1.
"""
import json
import sys
import time

import oidc_client


def main():
    p = oidc_client.parser()
    p.add_argument("--coll", required=True)
    a = p.parse_args()

    client = oidc_client.connect(a, serverSelectionTimeoutMS=20000)

    def say(obj):
        print(json.dumps(obj), flush=True)

    try:
        coll = client[a.db][a.coll]
        cur = coll.find({}, {"_id": 0, "i": 1}).sort("i", 1).batch_size(2)
        first = [next(cur)["i"], next(cur)["i"]]
        say({"cursor_id": str(cur.cursor_id), "first": first})
        sys.stdin.readline()
        say({"rest": [d["i"] for d in cur]})
        held = coll.find({}, {"_id": 0, "i": 1}).sort("i", 1).batch_size(2)
        next(held)
        say({"held_cursor_id": str(held.cursor_id)})
        time.sleep(300)
    except Exception as e:  # noqa: BLE001
        say({"error": str(e), "code": getattr(e, "code", None), "type": type(e).__name__})
        sys.exit(1)


if __name__ == "__main__":
    main()
