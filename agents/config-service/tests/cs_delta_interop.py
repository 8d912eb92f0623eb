#!/usr/bin/python3
"""Proton (python3-qpid-proton) client of config-service's incremental mode, driven by
agents/config-service/tests/proton_interop.rs.

Usage: cs_delta_interop.py URL ADDRESSES_DIR
  - attaches to v1/addresses with source capability maas:delta and checks the answer grants it;
  - gets the full snapshot with application property maas:generation;
  - adds one address the kubelet way and expects a maas.io/v1/AddressDelta with exactly that address upserted,
    maas:generation = previous + 1 and maas:follows = previous;
  - attaches a plain receiver alongside and expects full snapshots without application properties.
Prints one line "OK ..." per check; exits 0 when all pass, 77 when proton is missing.
"""
import json
import os
import sys

try:
    import proton  # noqa: F401
except ImportError as e:  # pragma: no cover
    print("SKIP: cannot import proton: %s" % e)
    sys.exit(77)
from proton import Data, symbol  # noqa: E402
from proton.reactor import LinkOption  # noqa: E402
from proton.utils import BlockingConnection  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "e2e", "python"))
from cs_interop import kubelet_write  # noqa: E402

DELTA = "maas:delta"


class DeltaCapability(LinkOption):
    """Asks for incremental mode: the source capability maas:delta (an array of one symbol)."""

    def apply(self, link):
        caps = link.source.capabilities
        caps.put_array(False, Data.SYMBOL)
        caps.enter()
        caps.put_symbol(symbol(DELTA))
        caps.exit()


def granted(receiver):
    caps = receiver.link.remote_source.capabilities
    caps.rewind()
    out = []
    while caps.next():
        value = caps.get_object()
        if isinstance(value, (list, tuple)) or hasattr(value, "elements"):
            out.extend(str(v) for v in getattr(value, "elements", value))
        else:
            out.append(str(value))
    return out


FLAVORS = '{"vanilla-queue": {"type": "queue", "templateName": "queue-persisted"}}'
Q1 = {"store_and_forward": True, "multicast": False, "flavor": "vanilla-queue"}


def main():
    url, addr_dir = sys.argv[1], sys.argv[2]
    conn = BlockingConnection(url, timeout=10, allowed_mechs="ANONYMOUS")

    delta = conn.create_receiver("v1/addresses", credit=10, name="delta", options=DeltaCapability())
    caps = granted(delta)
    assert caps == [DELTA], "capabilities granted: %r" % caps
    print("OK maas:delta granted in the attach")
    plain = conn.create_receiver("v1/addresses", credit=10, name="plain")
    assert granted(plain) == [], granted(plain)

    full = delta.receive(timeout=10)
    assert full.subject == "enmasse.io/v1/AddressList", full.subject
    assert full.content_type == "application/json", full.content_type
    g0 = full.properties["maas:generation"]
    assert isinstance(g0, int) and g0 >= 1, full.properties
    names = sorted(i["spec"]["address"] for i in json.loads(full.body)["items"])
    assert names == ["q1"], names
    print("OK full snapshot with maas:generation %d" % g0)
    p0 = plain.receive(timeout=10)
    assert not p0.properties, "plain snapshot has properties %r" % p0.properties
    assert p0.body == full.body
    print("OK plain receiver: the same body, no application properties")

    kubelet_write(addr_dir, {
        "json": json.dumps({"q1": Q1, "b1": {"store_and_forward": False, "multicast": True}}),
        "flavor.json": FLAVORS,
    })
    m = delta.receive(timeout=10)
    assert m.subject == "maas.io/v1/AddressDelta", m.subject
    assert m.content_type == "application/json", m.content_type
    assert isinstance(m.body, str), type(m.body)
    assert m.properties["maas:generation"] == g0 + 1, m.properties
    assert m.properties["maas:follows"] == g0, m.properties
    body = json.loads(m.body)
    assert body["kind"] == "AddressDelta", body
    assert (body["generation"], body["follows"]) == (g0 + 1, g0), body
    assert [i["spec"]["address"] for i in body["upserted"]] == ["b1"], body
    assert body["upserted"][0]["spec"]["type"] == "broadcast", body
    assert body["removed"] == [], body
    print("OK delta: b1 upserted, generation %d follows %d" % (g0 + 1, g0))
    p1 = plain.receive(timeout=10)
    assert p1.subject == "enmasse.io/v1/AddressList" and not p1.properties, (p1.subject, p1.properties)
    assert len(json.loads(p1.body)["items"]) == 2
    print("OK plain receiver: a new full snapshot")
    conn.close()
    print("ALL OK")


if __name__ == "__main__":
    main()
