#!/usr/bin/python3
"""A `$management` responder that behaves like qdrouterd 1.19 AND checks the wire types of every
request against what qdmanage sends (docs/reference/qdrouterd-1.19.0/frames.txt,
mgmt-transcript.txt). Used by agents/amqp/tests/proton_interop.rs to prove the Rust client is
interoperable with python3-qpid-proton, not just with fe2o3.

Usage: mgmt_responder.py PORT [--preload N] [--tls CERT_PEM KEY_PEM]
  PORT 0 picks a free port. Prints "READY <port>" on stdout once listening (127.0.0.1 only).
  --tls serves TLS (directly on the socket, like qdrouterd's sslProfile) with that certificate.
  --preload N stores N router.config.address entities (pre-00000 ...) so QUERY paging is exercised.

Behaviour (like the real router):
  - a receiver with a dynamic source gets an address amqp:/_topo/0/Router.A/temp.<random>;
  - replies are pre-settled, sent to the request's reply-to, correlation-id echoed, application
    properties statusCode (int32) and statusDescription (str);
  - CREATE 201 / READ 200 / DELETE 204 / QUERY 200 with {attributeNames, results} paged by
    offset/count; 400 on a duplicate name, a duplicate prefix, a missing prefix, an unknown (or
    short) type; 404 'Not Found' for a missing entity; UPDATE is never answered;
    GET-OPERATIONS / GET-TYPES / GET-MGMT-NODES answered.
Checks (any mismatch => 400 'request mismatch: ...', counted):
  - application property keys and operation/type/name values are exactly str (not symbol);
  - reply_to is the dynamic address handed out on this connection; correlation_id present;
  - body is an amqp-value dict with str keys; READ/DELETE body {}; CREATE body holds name;
  - QUERY: type org.amqp.management, name self, entityType str, offset uint, count ulong,
    body {attributeNames: [str...]}.
Custom operation MAAS-MISMATCHES (type org.amqp.management, name self) answers 200 with
{count, details} so a test can assert zero mismatches.
"""

import random
import socket
import string
import sys

from proton import Message, SSLDomain, int32, symbol, uint, ulong
from proton.handlers import MessagingHandler
from proton.reactor import Container

MGMT = "$management"
NODE_TYPE = "org.amqp.management"
ADDRESS = "org.apache.qpid.dispatch.router.config.address"
LINK_ROUTE = "org.apache.qpid.dispatch.router.config.linkRoute"
AUTO_LINK = "org.apache.qpid.dispatch.router.config.autoLink"
CONNECTOR = "org.apache.qpid.dispatch.connector"
LISTENER = "org.apache.qpid.dispatch.listener"
TYPES = [LISTENER, CONNECTOR, ADDRESS, LINK_ROUTE, AUTO_LINK]
ADDRESS_ATTRS = ["name", "identity", "type", "prefix", "distribution", "waypoint",
                 "ingressPhase", "egressPhase", "pattern", "priority", "fallback"]


def exact(value, typ):
    return type(value) is typ


class Responder(MessagingHandler):
    def __init__(self, port, preload, tls=None):
        super().__init__(prefetch=250, auto_accept=True)
        self.port = port
        self.tls = tls
        self.store = {t: {} for t in TYPES}   # type -> name -> entity (insertion ordered)
        self.identity = 0
        self.mismatches = []
        self.reply_links = {}                 # dynamic address -> sender link
        self.requests = 0
        self.seen_ids = {}                    # reply-to address -> correlation ids seen
        for i in range(preload):
            self._store(ADDRESS, "pre-%05d" % i, {"prefix": "pre-%05d" % i, "distribution": "balanced"})

    # ---------------------------------------------------------------- plumbing
    def on_start(self, event):
        if self.tls:
            domain = SSLDomain(SSLDomain.MODE_SERVER)
            domain.set_credentials(self.tls[0], self.tls[1], None)
            event.container.listen("amqps://127.0.0.1:%d" % self.port, ssl_domain=domain)
        else:
            event.container.listen("127.0.0.1:%d" % self.port)
        print("READY %d" % self.port, flush=True)

    def on_connection_opening(self, event):
        # What qdrouterd announces in its open frame.
        event.connection.container = "Router.A"
        event.connection.properties = {symbol("product"): "qpid-dispatch-router",
                                       symbol("version"): "1.19.0"}

    def on_link_opening(self, event):
        link = event.link
        if link.is_sender:
            if link.remote_source is not None and link.remote_source.dynamic:
                suffix = "".join(random.choice(string.ascii_letters + string.digits + "_") for _ in range(15))
                address = "amqp:/_topo/0/Router.A/temp." + suffix
                link.source.address = address
                self.reply_links[address] = link
            else:
                link.source.address = link.remote_source.address
        else:
            link.target.address = link.remote_target.address

    def on_link_closing(self, event):
        self._forget(event.link)

    def on_connection_closing(self, event):
        for address, link in list(self.reply_links.items()):
            if link.connection == event.connection:
                del self.reply_links[address]

    def on_transport_closed(self, event):
        conn = event.connection
        for address, link in list(self.reply_links.items()):
            if conn is None or link.connection == conn:
                del self.reply_links[address]

    def _forget(self, link):
        for address, l in list(self.reply_links.items()):
            if l == link:
                del self.reply_links[address]

    def _reply(self, request, code, description, body):
        link = self.reply_links.get(request.reply_to)
        if link is None:
            return  # nowhere to answer (the real router drops it too)
        msg = Message(address=request.reply_to, correlation_id=request.correlation_id,
                      properties={"statusDescription": description, "statusCode": int32(code)},
                      body=body)
        delivery = link.send(msg)
        delivery.settle()  # pre-settled, like the router

    def _mismatch(self, request, what):
        self.mismatches.append(what)
        self._reply(request, 400, "request mismatch: " + what, None)

    # ---------------------------------------------------------------- checks
    def _check(self, event, m):
        link = event.link
        if link.target is None or link.target.address != MGMT:
            return "request arrived on a link whose target is %r, not $management" % (
                link.target.address if link.target else None)
        if m.correlation_id is None:
            return "correlation_id missing"
        cid = m.correlation_id
        # A string, as qdmanage sends ("1", "2", ...): the only type besides binary that both of
        # qdrouterd's management agents echo unchanged (python-agent-and-mesh.txt section 1).
        if not exact(cid, str):
            return "correlation_id %r has type %s (want str, as qdmanage sends)" % (cid, type(cid).__name__)
        seen = self.seen_ids.setdefault(m.reply_to, set())
        if cid in seen:
            return "correlation_id %r reused on this connection" % (cid,)
        seen.add(cid)
        if m.reply_to is None:
            return "reply_to missing"
        reply_link = self.reply_links.get(m.reply_to)
        if reply_link is None or reply_link.connection != event.connection:
            return "reply_to %r is not the dynamic address handed out on this connection" % m.reply_to
        props = m.properties
        if not isinstance(props, dict):
            return "application properties missing"
        for k in props:
            if not exact(k, str):
                return "application property key %r has type %s (want str)" % (k, type(k).__name__)
        for k in ("operation", "type", "name"):
            if k not in props:
                return "application property %r missing" % k
            if not exact(props[k], str):
                return "application property %r=%r has type %s (want str)" % (k, props[k], type(props[k]).__name__)
        body = m.body
        if not exact(body, dict):
            return "body is %s, want an amqp-value map" % type(body).__name__
        bad = self._bad_keys(body)
        if bad:
            return bad
        op = props["operation"]
        if op == "QUERY":
            if props["type"] != NODE_TYPE:
                return "QUERY type %r, want %r" % (props["type"], NODE_TYPE)
            if props["name"] != "self":
                return "QUERY name %r, want 'self'" % props["name"]
            if not exact(props.get("entityType"), str):
                return "QUERY entityType %r is not str" % (props.get("entityType"),)
            if "offset" in props and not exact(props["offset"], uint):
                return "QUERY offset %r has type %s (want uint)" % (props["offset"], type(props["offset"]).__name__)
            if "count" in props and not exact(props["count"], ulong):
                return "QUERY count %r has type %s (want ulong)" % (props["count"], type(props["count"]).__name__)
            names = body.get("attributeNames")
            if not exact(names, list) or not all(exact(n, str) for n in names):
                return "QUERY body attributeNames %r is not a list of str" % (names,)
            if set(body) != {"attributeNames"}:
                return "QUERY body has keys %r, want only attributeNames" % sorted(body)
        elif op in ("READ", "DELETE"):
            if body != {}:
                return "%s body %r, want {}" % (op, body)
        elif op in ("CREATE", "UPDATE"):
            if body.get("name") != props["name"]:
                return "%s body name %r differs from property name %r" % (op, body.get("name"), props["name"])
        return None

    def _bad_keys(self, value, path="body"):
        if isinstance(value, dict):
            for k, v in value.items():
                if not exact(k, str):
                    return "%s key %r has type %s (want str)" % (path, k, type(k).__name__)
                bad = self._bad_keys(v, "%s.%s" % (path, k))
                if bad:
                    return bad
        elif isinstance(value, list):
            for i, v in enumerate(value):
                bad = self._bad_keys(v, "%s[%d]" % (path, i))
                if bad:
                    return bad
        elif isinstance(value, symbol):
            return "%s value %r is a symbol (want str)" % (path, value)
        return None

    # ---------------------------------------------------------------- the agent
    def on_message(self, event):
        m = event.message
        self.requests += 1
        problem = self._check(event, m)
        if problem:
            self._mismatch(m, problem)
            return
        props = m.properties
        op, typ, name, body = props["operation"], props["type"], props["name"], m.body
        if op == "UPDATE":
            return  # the real router never answers UPDATE
        if typ == NODE_TYPE:
            self._node_op(m, op, props, body)
            return
        if typ not in self.store:
            self._reply(m, 400, "No such entity type '%s'" % typ, {})
            return
        table = self.store[typ]
        if op == "CREATE":
            attrs = dict(body)
            attrs.pop("name", None)
            if name in table:
                self._reply(m, 400, "Name conflicts with an existing entity", None)
            elif typ == ADDRESS and "prefix" not in attrs and "pattern" not in attrs:
                self._reply(m, 400, "Either a 'prefix' or 'pattern' attribute must be provided", None)
            elif typ == ADDRESS and "prefix" in attrs and any(
                    e.get("prefix") == attrs["prefix"] for e in table.values()):
                self._reply(m, 400, "Already exists", None)
            elif typ == LINK_ROUTE and "direction" not in attrs:
                self._reply(m, 400, "No 'direction' attribute provided - it is mandatory", None)
            elif typ == AUTO_LINK and ("address" not in attrs or "direction" not in attrs):
                self._reply(m, 400, "address and direction fields are mandatory", None)
            else:
                self._reply(m, 201, "Created", self._store(typ, name, attrs))
        elif op == "READ":
            if name in table:
                self._reply(m, 200, "OK", table[name])
            else:
                self._reply(m, 404, "Not Found", {})
        elif op == "DELETE":
            if name in table:
                del table[name]
                self._reply(m, 204, "No Content", {})
            else:
                self._reply(m, 404, "Not Found", {})
        else:
            self._reply(m, 404, "No entity with name=%s" % name, {})

    def _store(self, typ, name, attrs):
        self.identity += 1
        entity = {"name": name, "identity": str(self.identity), "type": typ}
        if typ == ADDRESS:
            entity.update({"prefix": None, "distribution": "balanced", "waypoint": False,
                           "ingressPhase": int32(0), "egressPhase": int32(0), "pattern": None,
                           "priority": int32(-1), "fallback": False})
            known = {k: v for k, v in attrs.items() if k in ADDRESS_ATTRS}  # unknown ones ignored
            if known.get("distribution") not in ("balanced", "closest", "multicast"):
                known["distribution"] = "balanced"  # stored as balanced, like the router
            entity.update(known)
        else:
            entity.update(attrs)
        self.store[typ][name] = entity
        return entity

    def _node_op(self, m, op, props, body):
        if op == "QUERY":
            typ = props["entityType"]
            if typ not in self.store:
                self._reply(m, 400, "No such entity type '%s'" % typ, {})
                return
            names = list(body.get("attributeNames") or [])
            entities = list(self.store[typ].values())
            if not names:
                names = list(ADDRESS_ATTRS) if typ == ADDRESS else sorted({k for e in entities for k in e})
            offset = int(props.get("offset", 0))
            count = int(props["count"]) if "count" in props else len(entities)
            rows = [[e.get(n) for n in names] for e in entities[offset:offset + count]]
            self._reply(m, 200, "OK", {"attributeNames": names, "results": rows})
        elif op == "GET-MGMT-NODES":
            self._reply(m, 200, "OK", ["amqp:/_topo/0/Router.A/$management"])
        elif op == "GET-OPERATIONS":
            self._reply(m, 200, "OK", {t: ["CREATE", "DELETE", "READ"] for t in TYPES})
        elif op == "GET-TYPES":
            self._reply(m, 200, "OK", {t: ["org.apache.qpid.dispatch.configurationEntity",
                                           "org.apache.qpid.dispatch.entity"] for t in TYPES})
        elif op == "MAAS-MISMATCHES":
            self._reply(m, 200, "OK", {"count": len(self.mismatches), "details": self.mismatches[-20:],
                                       "requests": self.requests})
        else:
            self._reply(m, 400, "Unsupported operation '%s'" % op, {})


def main():
    args = sys.argv[1:]
    if not args:
        print("usage: mgmt_responder.py PORT [--preload N] [--tls CERT KEY]", file=sys.stderr)
        return 2
    port = int(args[0])
    preload = 0
    if "--preload" in args:
        preload = int(args[args.index("--preload") + 1])
    tls = None
    if "--tls" in args:
        i = args.index("--tls")
        tls = (args[i + 1], args[i + 2])
    if port == 0:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    Container(Responder(port, preload, tls)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
