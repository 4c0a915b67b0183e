#!/usr/bin/env python3
"""Summarises a pytest JUnit XML report as one JSON line.

usage: junit_summary.py RESULTS.xml

Prints {"passed": [id], "failed": [{"id", "message"}], "skipped": [{"id", "reason"}],
"seconds": total}, where id is "file-stem::Class::test" (the file stem is
prefixed with "async/" for pymongo's test/asynchronous/ modules).
"""
import json
import sys
import xml.etree.ElementTree as ET


def test_id(case):
    # classname is the dotted module path plus the class: test.asynchronous.test_auth_oidc.TestX
    parts = case.get("classname", "").split(".")
    cls = parts[-1] if parts else ""
    module = parts[-2] if len(parts) > 1 else ""
    prefix = "async/" if "asynchronous" in parts else ""
    return f"{prefix}{module}::{cls}::{case.get('name', '')}"


def main():
    root = ET.parse(sys.argv[1]).getroot()
    out = {"passed": [], "failed": [], "skipped": [], "seconds": 0.0}
    for suite in root.iter("testsuite"):
        out["seconds"] += float(suite.get("time", "0") or 0)
    for case in root.iter("testcase"):
        tid = test_id(case)
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            message = (failure.get("message") or "") + "\n" + (failure.text or "")
            out["failed"].append({"id": tid, "message": message[-3000:]})
        elif skipped is not None:
            out["skipped"].append({"id": tid, "reason": skipped.get("message") or ""})
        else:
            out["passed"].append(tid)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
