#!/usr/bin/python3
"""Replay Artemis management requests with proton (as the transcript was recorded) and print each reply in
the transcript's format, so Rust tests can compare an emulator with
docs/reference/artemis-2.21/management-transcript.txt line by line.

usage: broker_transcript.py URL USER PASSWORD < requests.txt
  requests.txt: one request per line, the left-hand side of a transcript line, e.g.
      broker.createQueue(["addr.three","q.three","ANYCAST"])
      queue.q.one.getMessageCount([])
  output: one line per request: '<request> -> props={...} body=<repr>' (exit 1 on a correlation mismatch)
usage: broker_transcript.py --auth URL MECHS [USER PASSWORD]
  output: 'OPEN' if the connection and links open and a getVersion succeeds, else 'REFUSED <error text>'
"""
import sys

from proton import Message, ulong
from proton.utils import BlockingConnection

MGMT = "activemq.management"


def split(request):
    head, _, rest = request.partition("(")
    resource, _, operation = head.rpartition(".")
    return resource, operation, rest[: rest.rindex(")")]


def open_links(conn):
    receiver = conn.create_receiver(None, dynamic=True, credit=10)
    sender = conn.create_sender(MGMT)
    return sender, receiver, receiver.remote_source.address


def call(sender, receiver, reply_to, cid, resource, operation, args):
    msg = Message(
        reply_to=reply_to,
        correlation_id=ulong(cid),
        properties={"_AMQ_ResourceName": resource, "_AMQ_OperationName": operation},
        body=args,
    )
    sender.send(msg, timeout=10)
    return receiver.receive(timeout=10)


def replay(url, user, password):
    conn = BlockingConnection(url, timeout=10, user=user, password=password, allowed_mechs="PLAIN")
    sender, receiver, reply_to = open_links(conn)
    for cid, line in enumerate(l.rstrip("\n") for l in sys.stdin):
        if not line:
            continue
        resource, operation, args = split(line)
        reply = call(sender, receiver, reply_to, cid + 1, resource, operation, args)
        if reply.correlation_id != cid + 1:
            print(f"correlation-id {reply.correlation_id!r} != {cid + 1}", file=sys.stderr)
            sys.exit(1)
        print(f"{line} -> props={reply.properties!r} body={reply.body!r}", flush=True)
    conn.close()


def auth(url, mechs, user=None, password=None):
    try:
        kwargs = {"allowed_mechs": mechs}
        if user is not None:
            kwargs.update(user=user, password=password)
        conn = BlockingConnection(url, timeout=10, **kwargs)
        sender, receiver, reply_to = open_links(conn)
        reply = call(sender, receiver, reply_to, 1, "broker", "getVersion", "[]")
        print("OPEN" if reply.properties.get("_AMQ_OperationSucceeded") else "FAILED")
        conn.close()
    except Exception as e:  # the refusal is the expected outcome
        print(f"REFUSED {e}")


if __name__ == "__main__":
    if sys.argv[1] == "--auth":
        auth(*sys.argv[2:])
    else:
        replay(*sys.argv[1:4])
