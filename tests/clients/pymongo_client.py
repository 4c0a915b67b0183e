#!/usr/bin/env python3
"""pymongo client for the integration tests.

usage: pymongo_client.py SCENARIO URI [--ca CA_FILE] (--token JWT | --token-file FILE | --scram USER:PASS)
                         [--db DB] [--coll NAME]

Authenticates with MONGODB-OIDC (machine flow: OIDC_CALLBACK returning the
given token; a --token-file is re-read on every callback, so a test can rotate
it) or, to check the scenarios against a backend directly, with SCRAM-SHA-256
(--scram, authSource=admin). Prints exactly one JSON line on stdout. On any
error it prints {"error": msg, "code": code-or-null, "type": exception class}
and exits 1.

scenarios:
  ping   admin ping                                     -> {"ok": 1.0, "callbacks": n}
  crud   insert 25 docs, find with batch_size(4) (several getMore batches),
         aggregate $group, connectionStatus              -> {"inserted", "found", "getmores",
                                                            "groups", "users", "roles", "callbacks"}
  write  insert one document                            -> {"inserted_id": str}
  read   count the documents of the collection          -> {"count": n}
  status connectionStatus                               -> {"users", "roles"}
"""
import argparse
import json
import sys
import uuid


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["ping", "crud", "write", "read", "status"])
    p.add_argument("uri")
    p.add_argument("--ca")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--token")
    g.add_argument("--token-file")
    g.add_argument("--scram", metavar="USER:PASS")
    p.add_argument("--db", default="app")
    p.add_argument("--coll", default=None)
    p.add_argument("--timeout-ms", type=int, default=10000)
    a = p.parse_args()

    from pymongo import MongoClient, monitoring
    from pymongo.auth_oidc import OIDCCallback, OIDCCallbackContext, OIDCCallbackResult

    calls = {"callbacks": 0, "getmores": 0}

    class Token(OIDCCallback):
        def fetch(self, context: OIDCCallbackContext) -> OIDCCallbackResult:
            calls["callbacks"] += 1
            if a.token_file:
                with open(a.token_file) as f:
                    jwt = f.read().strip()
            else:
                jwt = a.token
            return OIDCCallbackResult(access_token=jwt, expires_in_seconds=3600)

    class GetMores(monitoring.CommandListener):
        def started(self, event):
            if event.command_name == "getMore":
                calls["getmores"] += 1

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    kw = dict(serverSelectionTimeoutMS=a.timeout_ms, connectTimeoutMS=a.timeout_ms,
              event_listeners=[GetMores()])
    if a.ca:
        kw.update(tls=True, tlsCAFile=a.ca)
    if a.scram:
        user, _, pwd = a.scram.partition(":")
        kw.update(username=user, password=pwd, authSource="admin", authMechanism="SCRAM-SHA-256")
    else:
        kw.update(authMechanism="MONGODB-OIDC", authMechanismProperties={"OIDC_CALLBACK": Token()})

    client = MongoClient(a.uri, **kw)
    try:
        db = client[a.db]
        coll = db[a.coll or "pymongo_" + uuid.uuid4().hex[:8]]
        out = {}
        if a.scenario == "ping":
            out["ok"] = client.admin.command("ping")["ok"]
        elif a.scenario == "crud":
            coll.delete_many({})
            res = coll.insert_many([{"i": i, "g": i % 3} for i in range(25)])
            out["inserted"] = len(res.inserted_ids)
            before = calls["getmores"]
            out["found"] = sum(1 for _ in coll.find({}).sort("i", 1).batch_size(4))
            out["getmores"] = calls["getmores"] - before
            groups = coll.aggregate([{"$group": {"_id": "$g", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}])
            out["groups"] = {str(d["_id"]): d["n"] for d in groups}
            out.update(status(client))
        elif a.scenario == "write":
            out["inserted_id"] = str(coll.insert_one({"x": 1}).inserted_id)
        elif a.scenario == "read":
            out["count"] = coll.count_documents({})
        elif a.scenario == "status":
            out.update(status(client))
        out["callbacks"] = calls["callbacks"]
        print(json.dumps(out, default=str), flush=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one JSON line
        print(json.dumps({"error": str(e), "code": getattr(e, "code", None), "type": type(e).__name__,
                          "callbacks": calls["callbacks"]}, default=str), flush=True)
        sys.exit(1)
    finally:
        client.close()


def status(client):
    info = client.admin.command("connectionStatus")["authInfo"]
    return {"users": info.get("authenticatedUsers", []), "roles": info.get("authenticatedUserRoles", [])}


if __name__ == "__main__":
    main()
