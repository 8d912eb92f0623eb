#!/usr/bin/python3
"""Drive a qdrouterd-style $management node the way qdmanage does (proton BlockingConnection +
SyncRequestResponse) and print what came back, as JSON, so Rust tests can compare the emulator with the
recorded qdrouterd 1.19.0 behaviour and prove interop with proton-c.

usage: emu_mgmt.py URL < requests.json
requests.json: [{"properties": {...}, "body": {...} | null, "body_pairs": [[k, v], ...] (optional, ordered),
                 "timeout": seconds (optional)}, ...]
Integers in "properties" named offset/count are sent as uint/ulong like qdmanage does.
output: {"container": ..., "properties": {...}, "reply_address": ..., "credit": <$management link credit>,
         "replies": [{"statusCode", "statusDescription", "codeType", "body", "bodyTypes", "bodyKeys",
                      "correlation_id", "to"} | {"timeout": true}]}
"""
import json
import sys

from proton import Message, Timeout, ulong, uint
from proton.utils import BlockingConnection, SyncRequestResponse


def jsonable(v):
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def main():
    url = sys.argv[1]
    requests = json.load(sys.stdin)
    conn = BlockingConnection(url, timeout=10)
    client = SyncRequestResponse(conn, "$management")
    out = {
        "container": conn.conn.remote_container,
        "properties": {str(k): jsonable(v) for k, v in (conn.conn.remote_properties or {}).items()},
        "reply_address": client.reply_to,
        "credit": client.sender.link.credit,
        "replies": [],
    }
    for r in requests:
        props = dict(r["properties"])
        if "offset" in props:
            props["offset"] = uint(props["offset"])
        if "count" in props:
            props["count"] = ulong(props["count"])
        client.connection.timeout = r.get("timeout", 10)
        try:
            # "body_pairs" keeps the attribute order (the router echoes it in CREATE replies).
            body = dict(r["body_pairs"]) if "body_pairs" in r else r.get("body")
            resp = client.call(Message(properties=props, body=body))
        except Timeout:
            out["replies"].append({"timeout": True})
            continue
        body = resp.body
        types = {}
        if isinstance(body, dict):
            types = {str(k): type(v).__name__ for k, v in body.items()}
        ap = resp.properties or {}
        out["replies"].append({
            "statusCode": ap.get("statusCode"),
            "codeType": type(ap.get("statusCode")).__name__,
            "statusDescription": ap.get("statusDescription"),
            "body": jsonable(body),
            "bodyTypes": types,
            "bodyKeys": [str(k) for k in body.keys()] if isinstance(body, dict) else None,
            "correlation_id": jsonable(resp.correlation_id),
            "to": resp.address,
        })
    conn.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
