#!/usr/bin/python3
"""Proton (python3-qpid-proton) interop client for config-service, driven by
agents/config-service/tests/proton_interop.rs.

Usage: cs_interop.py URL ADDRESSES_DIR [USER PASSWORD]
  - attaches to v1/addresses and maas, checks subject, content type and body;
  - attaches to an unknown source and expects amqp:not-found naming it;
  - rewrites ADDRESSES_DIR the kubelet way (via the helper below) and expects a new full snapshot;
  - with USER/PASSWORD: PLAIN with the right password works, a wrong one is rejected.
Prints one line "OK ..." per check; exits 0 when all pass, 77 when proton is missing.
"""
import json
import os
import sys
import time

try:
    import proton  # noqa: F401
except ImportError as e:  # pragma: no cover
    print("SKIP: cannot import proton: %s" % e)
    sys.exit(77)
from proton import ConnectionException  # noqa: E402
from proton.utils import BlockingConnection, LinkDetached  # noqa: E402


def kubelet_write(d, files):
    """Write files into d the way the kubelet's atomic writer does (timestamped dir, ..data swap)."""
    ts = os.path.join(d, "..%d_%d" % (time.time_ns(), os.getpid()))
    os.mkdir(ts)
    for k, v in files.items():
        with open(os.path.join(ts, k), "w") as f:
            f.write(v)
    old = os.readlink(os.path.join(d, "..data")) if os.path.islink(os.path.join(d, "..data")) else None
    tmp = os.path.join(d, "..data_tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.basename(ts), tmp)
    os.rename(tmp, os.path.join(d, "..data"))
    for k in files:
        p = os.path.join(d, k)
        if not os.path.lexists(p):
            os.symlink(os.path.join("..data", k), p)
    if old and old != os.path.basename(ts):
        import shutil
        shutil.rmtree(os.path.join(d, old), ignore_errors=True)


def connect(url, user=None, password=None):
    if user is None:
        return BlockingConnection(url, timeout=10, allowed_mechs="ANONYMOUS")
    return BlockingConnection(url, timeout=10, allowed_mechs="PLAIN", user=user, password=password)


def check_snapshot(msg, subject):
    assert msg.subject == subject, "subject %r != %r" % (msg.subject, subject)
    assert msg.content_type == "application/json", "content type %r" % msg.content_type
    assert isinstance(msg.body, str), "body is %r, not an AMQP string" % type(msg.body)
    return json.loads(msg.body)


def main():
    url, addr_dir = sys.argv[1], sys.argv[2]
    user = sys.argv[3] if len(sys.argv) > 3 else None
    password = sys.argv[4] if len(sys.argv) > 4 else None

    if user is not None:
        try:
            c = connect(url, user, password + "-wrong")
            c.close()
            raise AssertionError("wrong password accepted")
        except ConnectionException as e:
            print("OK PLAIN wrong password rejected: %s" % e)

    conn = connect(url, user, password)
    if user is not None:
        print("OK PLAIN accepted for %s" % user)

    rcv = conn.create_receiver("v1/addresses", credit=10)
    body = check_snapshot(rcv.receive(timeout=10), "enmasse.io/v1/AddressList")
    assert body["kind"] == "AddressList", body
    assert [i["spec"]["address"] for i in body["items"]] == ["q1"], body
    assert body["items"][0]["spec"]["type"] == "queue", body
    print("OK v1/addresses snapshot")

    maas = conn.create_receiver("maas", credit=10)
    body = check_snapshot(maas.receive(timeout=10), "maas.io/v1/AddressConfig")
    assert body == {"q1": {"store_and_forward": True, "multicast": False, "flavor": "vanilla-queue"}}, body
    print("OK maas snapshot")

    try:
        bad = conn.create_receiver("no/such/source", credit=10)
        bad.receive(timeout=5)
        raise AssertionError("unknown source was not refused")
    except LinkDetached as e:
        cond = e.link.remote_condition
        assert cond is not None and cond.name == "amqp:not-found", cond
        assert "no/such/source" in (cond.description or ""), cond
        print("OK unknown source: %s %s" % (cond.name, cond.description))

    kubelet_write(addr_dir, {
        "json": json.dumps({
            "q1": {"store_and_forward": True, "multicast": False, "flavor": "vanilla-queue"},
            "t1": {"store_and_forward": False, "multicast": True},
        }),
        "flavor.json": json.dumps({"vanilla-queue": {"type": "queue", "templateName": "queue-persisted"}}),
    })
    body = check_snapshot(rcv.receive(timeout=10), "enmasse.io/v1/AddressList")
    names = sorted(i["spec"]["address"] for i in body["items"])
    assert names == ["q1", "t1"], body
    print("OK new full snapshot after a kubelet-style edit")
    conn.close()
    print("ALL OK")


if __name__ == "__main__":
    main()
