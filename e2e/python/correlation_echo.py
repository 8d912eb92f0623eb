#!/usr/bin/python3
"""Send management requests with correlation-ids of each AMQP type to a qdrouterd-style $management node
with proton-c (the engine qdrouterd is built on, which decodes any correlation-id type) and print, as JSON,
the type and value each reply's correlation-id came back with: what docs/reference/qdrouterd-1.19.0/
python-agent-and-mesh.txt §1 recorded from the real router, for the Rust tests to compare the emulator with.

usage: correlation_echo.py URL
output: [{"entity": "connector"|"address", "operation": "QUERY"|"CREATE"|"DELETE", "sent": "ulong"|"string"|"uuid"|"binary",
          "type": <python type name of the echoed id or "NoneType">, "value": <repr>, "status": <statusCode>}, ...]
"""
import json
import sys
import uuid

from proton import Message, ulong, uint
from proton.utils import BlockingConnection

CONNECTOR = "org.apache.qpid.dispatch.connector"
ADDRESS = "org.apache.qpid.dispatch.router.config.address"


def ids():
    yield "ulong", ulong(7)
    yield "string", "7"
    yield "uuid", uuid.UUID(int=7)
    yield "binary", b"\x07"


def main():
    url = sys.argv[1]
    conn = BlockingConnection(url, timeout=10)
    receiver = conn.create_receiver(None, dynamic=True)
    reply_to = receiver.remote_source.address
    sender = conn.create_sender("$management")
    out = []
    n = 0
    for entity, full in (("connector", CONNECTOR), ("address", ADDRESS)):
        for sent, cid in ids():
            steps = [
                ("QUERY", {"operation": "QUERY", "type": "org.amqp.management", "name": "self",
                           "entityType": full, "offset": uint(0), "count": ulong(500)},
                 {"attributeNames": ["name"]}),
            ]
            n += 1
            name = "echo-%s-%d" % (entity, n)
            if entity == "connector":
                body = {"name": name, "host": "127.0.0.1", "port": "1", "role": "route-container"}
            else:
                body = {"name": name, "prefix": name, "distribution": "balanced"}
            steps.append(("CREATE", {"operation": "CREATE", "type": full, "name": name}, body))
            steps.append(("DELETE", {"operation": "DELETE", "type": full, "name": name}, {}))
            for operation, props, body in steps:
                sender.send(Message(properties=props, body=body, reply_to=reply_to, correlation_id=cid))
                # pre-settled: nothing to accept (accept() would raise)
                reply = receiver.receive(timeout=10)
                got = reply.correlation_id
                out.append({
                    "entity": entity,
                    "operation": operation,
                    "sent": sent,
                    "type": type(got).__name__,
                    "value": repr(got),
                    "status": (reply.properties or {}).get("statusCode"),
                })
    conn.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
