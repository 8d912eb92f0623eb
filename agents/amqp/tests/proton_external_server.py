"""A python3-qpid-proton AMQP server accepting only SASL EXTERNAL over TLS with client-certificate
verification, for agents/amqp/tests/sasl_external.rs.

Usage: proton_external_server.py CERT KEY CA
  Listens on a free port of 127.0.0.1 and prints "READY <port>". Any receiving link gets one message:
  "<sasl mechanism> <authenticated user>" (proton's user for EXTERNAL is the certificate's subject).
"""
import socket
import sys
from proton import Message, SSLDomain
from proton.handlers import MessagingHandler
from proton.reactor import Container

cert, key, ca = sys.argv[1:4]

class Server(MessagingHandler):
    def __init__(self, port):
        super().__init__()
        self.port = port
    def on_start(self, event):
        domain = SSLDomain(SSLDomain.MODE_SERVER)
        domain.set_credentials(cert, key, None)
        domain.set_trusted_ca_db(ca)
        domain.set_peer_authentication(SSLDomain.VERIFY_PEER, ca)
        event.container.listen("amqps://127.0.0.1:%d" % self.port, ssl_domain=domain)
        print("READY %d" % self.port, flush=True)
    def on_connection_bound(self, event):
        sasl = event.transport.sasl()
        sasl.allowed_mechs("EXTERNAL")
    def on_link_opening(self, event):
        if event.link.is_sender:
            event.link.source.address = event.link.remote_source.address
    def on_sendable(self, event):
        t = event.connection.transport
        event.sender.send(Message(body="%s %s" % (t.sasl().mech, t.user)))
        event.sender.close()

s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
Container(Server(port)).run()
