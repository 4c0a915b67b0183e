#!/usr/bin/env python3
"""Leaves a transaction open and waits to be killed (tests/pool.rs).

usage: pool_hold.py URI --ca CA_FILE --token JWT --coll NAME --id ID [--db DB]

Starts a transaction, updates document {_id: ID} inside it (set holder to
"victim"), prints "ready" and sleeps; the test kills it with SIGKILL, so
neither pymongo nor the interpreter can end the transaction. On an error it
prints {"error", "code", "type"} and exits 1.
"""
import json
import sys
import time

import oidc_client


def main():
    p = oidc_client.parser()
    p.add_argument("--coll", required=True)
    p.add_argument("--id", required=True)
    a = p.parse_args()

    client = oidc_client.connect(a, serverSelectionTimeoutMS=20000)
    try:
        coll = client[a.db][a.coll]
        s = client.start_session()
        s.start_transaction()
        res = coll.update_one({"_id": a.id}, {"$set": {"holder": "victim"}}, session=s)
        if res.modified_count != 1:
            raise RuntimeError(f"the update inside the transaction matched {res.matched_count} documents")
        print("ready", flush=True)
        time.sleep(300)
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": str(e), "code": getattr(e, "code", None), "type": type(e).__name__},
                         default=str), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
