#!/usr/bin/env python3
"""Slow operations and exhaust cursors at once through a small backend pool
(tests/pool.rs).

usage: pool_slow.py URI --ca CA_FILE --token JWT --coll NAME [--slow N] [--exhaust N]
                    [--docs N] [--await-ms MS] [--db DB]

Fills NAME with --docs documents and NAME_capped (a capped collection) with
one. Then, all started together, each thread with a MongoClient (so a
connection) of its own:
- --slow threads tail NAME_capped with a TAILABLE_AWAIT cursor and wait for
  data twice: each empty getMore keeps the server busy for --await-ms;
- --exhaust threads read NAME with an EXHAUST cursor in batches of 5.
Threads that do not finish within 90 s are reported as stuck. Prints one
JSON line: {"exhaust": [count, ...], "waits_ms": [[ms, ms], ...], "errors": [...],
"stuck": n, "elapsed_ms": ms}; exit code 1 on an error.
"""
import json
import sys
import threading
import time

import oidc_client


def main():
    p = oidc_client.parser()
    p.add_argument("--coll", required=True)
    p.add_argument("--slow", type=int, default=4)
    p.add_argument("--exhaust", type=int, default=2)
    p.add_argument("--docs", type=int, default=200)
    p.add_argument("--await-ms", type=int, default=1000)
    a = p.parse_args()

    from pymongo import CursorType

    def client():
        return oidc_client.connect(a, serverSelectionTimeoutMS=20000, maxPoolSize=1)

    setup = client()
    db = setup[a.db]
    try:
        db[a.coll].insert_many([{"i": i} for i in range(a.docs)])
        db.create_collection(a.coll + "_capped", capped=True, size=1 << 20)
        db[a.coll + "_capped"].insert_one({"x": 1})
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": str(e), "code": getattr(e, "code", None), "type": type(e).__name__}), flush=True)
        sys.exit(1)

    n = a.slow + a.exhaust
    start = threading.Barrier(n)
    exhaust = [None] * a.exhaust
    waits = [None] * a.slow
    errors = []

    def slow(k):
        c = client()
        try:
            capped = c[a.db][a.coll + "_capped"]
            capped.find_one({})  # signed in before the start
            start.wait(timeout=60)
            cur = capped.find({}, cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(a.await_ms)
            next(cur)
            ms = []
            for _ in range(2):
                t0 = time.monotonic()
                if next(cur, None) is not None:
                    raise RuntimeError("the capped collection got a document nobody inserted")
                ms.append(round((time.monotonic() - t0) * 1000))
            cur.close()
            waits[k] = ms
        except Exception as e:  # noqa: BLE001
            errors.append(f"slow {k}: {type(e).__name__}: {e}")
        finally:
            c.close()

    def exh(k):
        c = client()
        try:
            coll = c[a.db][a.coll]
            coll.find_one({})
            start.wait(timeout=60)
            exhaust[k] = sum(1 for _ in coll.find({}, cursor_type=CursorType.EXHAUST, batch_size=5))
        except Exception as e:  # noqa: BLE001
            errors.append(f"exhaust {k}: {type(e).__name__}: {e}")
        finally:
            c.close()

    threads = [threading.Thread(target=slow, args=(k,), daemon=True) for k in range(a.slow)]
    threads += [threading.Thread(target=exh, args=(k,), daemon=True) for k in range(a.exhaust)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    deadline = t0 + 90
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = sum(1 for t in threads if t.is_alive())
    print(json.dumps({"exhaust": exhaust, "waits_ms": waits, "errors": errors[:20], "stuck": stuck,
                      "elapsed_ms": round((time.monotonic() - t0) * 1000)}), flush=True)
    setup.close()
    if errors or stuck:
        sys.exit(1)


if __name__ == "__main__":
    main()
