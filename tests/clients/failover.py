#!/usr/bin/env python3
"""A write/read loop through several proxies listed in one URI.

usage: failover.py URI --ca CA_FILE --token JWT --seconds N [--db DB]

Inserts documents {_id: i, run: RUN} one at a time (retryWrites=true, the
default) and reads each back, for N seconds, then counts what is found. Every
exception that reaches the loop is recorded. Prints one JSON line:
{"acknowledged": n, "found": n, "missing": [ids], "errors": [text], "reads": n}
"""
import json
import time
import uuid

import oidc_client


def main():
    p = oidc_client.parser()
    p.add_argument("--seconds", type=float, required=True)
    a = p.parse_args()

    client = oidc_client.connect(a, retryWrites=True, retryReads=True, heartbeatFrequencyMS=500,
                                 serverSelectionTimeoutMS=10000)
    run = uuid.uuid4().hex
    coll = client[a.db]["failover_" + run[:8]]
    acknowledged, errors, reads = [], [], 0
    deadline = time.monotonic() + a.seconds
    i = 0
    while time.monotonic() < deadline:
        try:
            coll.insert_one({"_id": i, "run": run})
            acknowledged.append(i)
            if coll.find_one({"_id": i}) is not None:
                reads += 1
        except Exception as e:  # noqa: BLE001 - what reaches the application is the result
            errors.append(f"{type(e).__name__}: {e}")
        i += 1
        time.sleep(0.01)
    found = set()
    try:
        found = {d["_id"] for d in coll.find({"run": run}, {"_id": 1})}
    except Exception as e:  # noqa: BLE001
        errors.append(f"final read: {type(e).__name__}: {e}")
    missing = [x for x in acknowledged if x not in found]
    print(json.dumps({"acknowledged": len(acknowledged), "found": len(found), "missing": missing[:20],
                      "errors": errors[:20], "reads": reads}), flush=True)
    client.close()


if __name__ == "__main__":
    main()
