"""Authentication and encryption against a real hadrond: SASL ANONYMOUS,
PLAIN and EXTERNAL, TLS with and without client certificates, and several
listeners (plain, TLS, IPv6) in one broker."""

import os
import re
import shutil
import socket
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, SLOW, raw_socket, round_trip, run_hadrond, write_file# noqa: E402
import certs  # noqa: E402

from proton import ConnectionException, Data, Described, Message, SSLDomain, symbol, ulong  # noqa: E402
from proton.utils import BlockingConnection  # noqa: E402

PLAIN_KW = dict(allowed_mechs="PLAIN", allow_insecure_mechs=True)


def failure(url, **kw):
    """Try to connect and attach; return the error text (None if it worked)."""
    try:
        c = BlockingConnection(url, timeout=10 * SLOW, **kw)
        try:
            c.create_sender("sasl.q")
        finally:
            c.close()
    except ConnectionException as e:
        return str(e)
    return None


def tls_client(ca=None, cert=None, key=None):
    """A client TLS domain that verifies the server's name against `ca`."""
    d = SSLDomain(SSLDomain.MODE_CLIENT)
    if ca:
        d.set_trusted_ca_db(ca)
        d.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    else:
        d.set_peer_authentication(SSLDomain.ANONYMOUS_PEER)
    if cert:
        d.set_credentials(cert, key, None)
    return d


def tls_kw(domain, **kw):
    # Proton checks the server name against DNS names only; the certificate
    # is for "localhost", so name it while connecting to 127.0.0.1.
    return dict(ssl_domain=domain, virtual_host="localhost", **kw)


# ---- raw SASL, to see exactly what the broker answers ---------------------------

def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("socket closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def read_sasl_frame(s):
    size, doff, ftype, _ = struct.unpack(">IBBH", read_exact(s, 8))
    body = read_exact(s, size - 8)[doff * 4 - 8:]
    d = Data()
    d.decode(body)
    d.rewind()
    d.next()
    return d.get_object()


def sasl_frame(descriptor, fields):
    d = Data()
    d.put_object(Described(ulong(descriptor), fields))
    body = d.encode()
    return struct.pack(">IBBH", 8 + len(body), 2, 1, 0) + body


def raw_sasl_init(port, mechanism, response=b""):
    """Offer `mechanism` by hand; return (mechanisms offered, outcome code)."""
    s = raw_socket(port, timeout=10)
    try:
        s.sendall(b"AMQP\x03\x01\x00\x00")
        hdr = read_exact(s, 8)
        assert hdr == b"AMQP\x03\x01\x00\x00", hdr
        mechs = read_sasl_frame(s)
        assert mechs.descriptor == 0x40, mechs
        offered = mechs.value[0]
        offered = getattr(offered, "elements", offered)  # an Array, or a lone symbol
        offered = [str(m) for m in (offered if isinstance(offered, (list, tuple)) else [offered])]
        s.sendall(sasl_frame(0x41, [symbol(mechanism), response, None]))
        outcome = read_sasl_frame(s)
        assert outcome.descriptor == 0x44, outcome
        return offered, outcome.value[0]
    finally:
        s.close()


def has_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
        return True
    except OSError:
        return False


class Sasl(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="hadron-sasl-")
        code, out, err = run_hadrond(["--hash-password", "bob"], input="b0b-secret\n")
        assert code == 0, err
        cls.users = write_file(cls.tmp, "users", out)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def broker(self):
        """Listener 'open' takes ANONYMOUS, listener 'secure' only PLAIN."""
        return Broker(broker="users-file = %s\n" % self.users, listeners=False, config="""\
            [listener open]
            host = 127.0.0.1
            port = 0
            sasl-mechanisms = ANONYMOUS
            [listener secure]
            host = 127.0.0.1
            port = 0
            sasl-mechanisms = PLAIN
            plain-over-cleartext = yes
            """)

    def test_anonymous_allowed(self):
        """An ANONYMOUS listener serves SASL ANONYMOUS clients and clients that skip SASL."""
        with self.broker() as b:
            round_trip(b.url("open"), allowed_mechs="ANONYMOUS")
            round_trip(b.url("open"), sasl_enabled=False)
            b.wait_log(r"open: user 'anonymous' via ANONYMOUS")
            b.wait_log(r"open: user 'anonymous', container")

    def test_plain_only_refuses_anonymous(self):
        """A PLAIN-only listener offers only PLAIN and fails a forced ANONYMOUS init."""
        with self.broker() as b:
            err = failure(b.url("secure"), allowed_mechs="ANONYMOUS")
            self.assertIsNotNone(err, "anonymous client got in")
            self.assertIn("amqp:unauthorized-access", err)
            offered, code = raw_sasl_init(b.ports["secure"], "ANONYMOUS")
            self.assertEqual(offered, ["PLAIN"])
            self.assertEqual(code, 1, "sasl-outcome code (1 = auth failed)")
            b.wait_log(r"authentication failed \(ANONYMOUS\): mechanism not offered")
            self.assertNotIn("open: user 'anonymous'", b.log())
            # The other listener is unaffected.
            round_trip(b.url("open"))

    def test_plain_only_refuses_non_sasl(self):
        """A client that skips SASL on a PLAIN-only listener is refused with amqp:unauthorized-access."""
        with self.broker() as b:
            err = failure(b.url("secure"), sasl_enabled=False)
            self.assertIsNotNone(err, "non-SASL client got in")
            self.assertNotIn("open: user", b.log())
            self.assertIn("amqp:unauthorized-access", err)
            b.wait_log(r"refused: amqp:unauthorized-access")

    def test_plain_good_password(self):
        """PLAIN with the right password opens the connection as that user."""
        with self.broker() as b:
            round_trip(b.url("secure"), user="bob", password="b0b-secret", **PLAIN_KW)
            b.wait_log(r"open: user 'bob' via PLAIN")

    def test_plain_refused(self):
        """Wrong password or unknown user: amqp:unauthorized-access; the log names the user and why."""
        with self.broker() as b:
            for user, pw in (("bob", "Xq7-not-bobs"), ("mallory", "b0b-secret")):
                with self.subTest(user=user):
                    err = failure(b.url("secure"), user=user, password=pw, **PLAIN_KW)
                    self.assertIsNotNone(err)
                    self.assertIn("amqp:unauthorized-access", err)
                    b.wait_log(r"authentication failed \(PLAIN, user '%s'\): unknown user or wrong password"
                               % user)
            self.assertNotIn("open: user", b.log())
            self.assertNotIn("b0b-secret", b.log())
            self.assertNotIn("Xq7-not-bobs", b.log())
            # Refusals leave the broker serving.
            round_trip(b.url("secure"), user="bob", password="b0b-secret", **PLAIN_KW)


class Tls(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="hadron-tls-")
        cls.c = certs.make_certs(os.path.join(cls.tmp, "certs"))
        code, out, err = run_hadrond(["--hash-password", "bob"], input="b0b-secret\n")
        assert code == 0, err
        cls.users = write_file(cls.tmp, "users", out)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def tls_listener(self, name, extra=""):
        return "[listener %s]\nhost = 127.0.0.1\nport = 0\ntls-cert = %s\ntls-key = %s\n%s\n" % (
            name, self.c.server, self.c.server_key, extra)

    def test_server_certificate(self):
        """A TLS listener presents its certificate: a client trusting the CA connects, others do not."""
        c = self.c
        with Broker(listeners=False, config=self.tls_listener("tls")) as b:
            b.wait_log(r"listener 'tls', listening on 127\.0\.0\.1:\d+ \(TLS\)")
            url = b.url("tls", scheme="amqps")
            round_trip(url, **tls_kw(tls_client(ca=c.ca)))
            err = failure(url, **tls_kw(tls_client(ca=c.rogue_ca)))
            self.assertIsNotNone(err, "client trusting another CA accepted the server")
            self.assertIn("certificate verify failed", err)
            # A cleartext client cannot talk to a TLS listener.
            self.assertIsNotNone(failure(b.url("tls")))
            round_trip(url, **tls_kw(tls_client(ca=c.ca)))

    def test_plain_over_tls(self):
        """PLAIN needs no plain-over-cleartext on a TLS listener; wrong passwords still fail."""
        c = self.c
        with Broker(broker="users-file = %s\n" % self.users, listeners=False,
                    config=self.tls_listener("tls", "sasl-mechanisms = PLAIN\n")) as b:
            url = b.url("tls", scheme="amqps")
            round_trip(url, user="bob", password="b0b-secret", allowed_mechs="PLAIN",
                       **tls_kw(tls_client(ca=c.ca)))
            b.wait_log(r"open: user 'bob' via PLAIN")
            err = failure(url, user="bob", password="nope", allowed_mechs="PLAIN",
                          **tls_kw(tls_client(ca=c.ca)))
            self.assertIn("amqp:unauthorized-access", err or "connected")

    def mtls_broker(self):
        return Broker(listeners=False, config=self.tls_listener(
            "mtls", "tls-ca = %s\ntls-client-auth = required\nsasl-mechanisms = EXTERNAL\n" % self.c.ca))

    def test_mutual_tls_external(self):
        """Mutual TLS with EXTERNAL: the connection's user is the client certificate's subject."""
        c = self.c
        with self.mtls_broker() as b:
            round_trip(b.url("mtls", scheme="amqps"), allowed_mechs="EXTERNAL",
                       **tls_kw(tls_client(ca=c.ca, cert=c.alice, key=c.alice_key)))
            b.wait_log(r"open: user '[^']*CN=alice[^']*' via EXTERNAL")

    def test_mutual_tls_refuses_bad_clients(self):
        """Without a client certificate, or with one from an unknown CA, the TLS handshake fails."""
        c = self.c
        with self.mtls_broker() as b:
            url = b.url("mtls", scheme="amqps")
            for label, cert, key in (("no certificate", None, None),
                                     ("unknown CA", c.mallory, c.mallory_key)):
                with self.subTest(label):
                    before = len(re.findall(r"closed: .*SSL", b.log()))
                    err = failure(url, allowed_mechs="EXTERNAL",
                                  **tls_kw(tls_client(ca=c.ca, cert=cert, key=key)))
                    self.assertIsNotNone(err, "handshake succeeded")
                    b.wait_log(r"closed: .*SSL", count=before + 1)
            self.assertRegex(b.log(), r"peer did not return a certificate")
            self.assertRegex(b.log(), r"certificate verify failed")
            self.assertNotIn("open: user", b.log())
            round_trip(url, allowed_mechs="EXTERNAL",
                       **tls_kw(tls_client(ca=c.ca, cert=c.alice, key=c.alice_key)))

    def test_plain_and_tls_listeners(self):
        """A cleartext and a TLS listener in one broker reach the same queues."""
        c = self.c
        cfg = "[listener plain]\nhost = 127.0.0.1\nport = 0\n" + self.tls_listener("tls")
        with Broker(listeners=False, config=cfg) as b:
            self.assertNotEqual(b.ports["plain"], b.ports["tls"])
            tls = tls_kw(tls_client(ca=c.ca))
            round_trip(b.url("plain"))
            round_trip(b.url("tls", scheme="amqps"), **tls)
            # Sent in clear, received over TLS: one broker behind both.
            s = BlockingConnection(b.url("plain"), timeout=10 * SLOW)
            s.create_sender("both.q").send(Message(body="across"))
            s.close()
            r = BlockingConnection(b.url("tls", scheme="amqps"), timeout=10 * SLOW, **tls)
            rcv = r.create_receiver("both.q")
            self.assertEqual(rcv.receive(timeout=10 * SLOW).body, "across")
            rcv.accept()
            r.close()

    @unittest.skipUnless(has_ipv6_loopback(), "this machine has no IPv6 loopback (::1)")
    def test_ipv6_listener(self):
        """A [::1] listener next to 127.0.0.1 ones, plain and TLS, all serving at once."""
        c = self.c
        cfg = ("[listener v4]\nhost = 127.0.0.1\nport = 0\n"
               "[listener v6]\nhost = ::1\nport = 0\n" + self.tls_listener("tls"))
        with Broker(listeners=False, config=cfg) as b:
            b.wait_log(r"listener 'v6', listening on \[::1\]:\d+")
            round_trip("amqp://[::1]:%d" % b.ports["v6"])
            round_trip(b.url("v4"))
            round_trip(b.url("tls", scheme="amqps"), **tls_kw(tls_client(ca=c.ca)))
            b.wait_log(r"connection \d+ from \[?::1\]?:\d+, open")


if __name__ == "__main__":
    hadron_test.main()
