#!/usr/bin/env python3
"""pymongo's with_transaction through a small backend pool while other
clients keep it busy (tests/pool.rs).

usage: pool_txn.py URI --ca CA_FILE --token JWT --coll NAME [--busy N] [--txns N] [--db DB]

Starts N busy threads, each with a MongoClient of its own (so each is a
connection of its own to the proxy) running finds in a loop, then runs
--txns transactions with ClientSession.with_transaction: each inserts two
documents, increments a counter and reads its own write inside the
transaction. One more transaction raises inside its callback and must leave
nothing behind. Then the busy threads stop and everything is read back
outside any transaction. Prints one JSON line:
{"committed", "docs", "counter", "read_own_writes", "aborted_visible",
 "busy_finds", "busy_errors"}; on an exception {"error", "code", "type"}
and exit code 1.
"""
import json
import sys
import threading

import oidc_client


class Abort(Exception):
    pass


def main():
    p = oidc_client.parser()
    p.add_argument("--coll", required=True)
    p.add_argument("--busy", type=int, default=4)
    p.add_argument("--txns", type=int, default=5)
    a = p.parse_args()

    def client():
        return oidc_client.connect(a, serverSelectionTimeoutMS=20000, maxPoolSize=1)

    main_client = client()
    coll = main_client[a.db][a.coll]
    stop = threading.Event()
    finds = [0] * a.busy
    busy_errors = []
    started = threading.Barrier(a.busy + 1)

    def busy(n):
        c = client()
        try:
            bc = c[a.db][a.coll]
            bc.find_one({})  # signed in before the transactions start
            started.wait()
            while not stop.is_set():
                list(bc.find({}).limit(5))
                finds[n] += 1
        except Exception as e:  # noqa: BLE001 - reported in the result
            busy_errors.append(f"{type(e).__name__}: {e}")
            try:
                started.abort()
            except Exception:  # noqa: BLE001
                pass
        finally:
            c.close()

    try:
        coll.insert_one({"_id": "py-counter", "n": 0})
        threads = [threading.Thread(target=busy, args=(n,), daemon=True) for n in range(a.busy)]
        for t in threads:
            t.start()
        started.wait(timeout=60)

        read_own_writes = 0
        for t in range(a.txns):
            def body(s, t=t):
                coll.insert_one({"_id": f"py-{t}-a", "t": t}, session=s)
                coll.insert_one({"_id": f"py-{t}-b", "t": t}, session=s)
                coll.update_one({"_id": "py-counter"}, {"$inc": {"n": 1}}, session=s)
                return coll.find_one({"_id": f"py-{t}-a"}, session=s) is not None

            with main_client.start_session() as s:
                if s.with_transaction(body):
                    read_own_writes += 1

        def aborted(s):
            coll.insert_one({"_id": "py-aborted"}, session=s)
            raise Abort()

        with main_client.start_session() as s:
            try:
                s.with_transaction(aborted)
            except Abort:
                pass

        stop.set()
        for t in threads:
            t.join(timeout=60)
        out = {
            "committed": a.txns,
            "docs": coll.count_documents({"_id": {"$regex": "^py-[0-9]"}}),
            "counter": coll.find_one({"_id": "py-counter"})["n"],
            "read_own_writes": read_own_writes,
            "aborted_visible": coll.find_one({"_id": "py-aborted"}) is not None,
            "busy_finds": finds,
            "busy_errors": busy_errors[:10],
        }
        print(json.dumps(out), flush=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one JSON line
        stop.set()
        print(json.dumps({"error": str(e), "code": getattr(e, "code", None), "type": type(e).__name__,
                          "busy_errors": busy_errors[:10]}, default=str), flush=True)
        sys.exit(1)
    finally:
        main_client.close()


if __name__ == "__main__":
    main()
