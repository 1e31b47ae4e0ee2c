"""hadrond under valgrind memcheck: a short but varied workload, then SIGTERM;
valgrind must report no errors and no definitely or indirectly lost bytes."""

import os
import re
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, SANITIZED, raw_socket  # noqa: E402
import certs  # noqa: E402

from proton import Delivery, Message, SSLDomain, Timeout  # noqa: E402
from proton.utils import BlockingConnection, SendException  # noqa: E402

VALGRIND = shutil.which("valgrind")
# valgrind runs hadrond some 20-50 times slower.
T = 60


def connect(url, **kw):
    return BlockingConnection(url, timeout=T, **kw)


def skip_reason():
    if SANITIZED:
        return "HADRON_SANITIZE=1: ASan and valgrind do not mix"
    if not VALGRIND:
        return "valgrind is not installed"
    return None


@unittest.skipIf(skip_reason(), skip_reason() or "")
class Valgrind(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="hadron-vg-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.c = certs.make_certs(os.path.join(self.tmp, "certs"))

    def test_workload_is_clean(self):
        """Queues, topics, rejects, dead letters, dynamic nodes, relay, TLS, junk and a reload leak nothing."""
        vg_log = os.path.join(self.tmp, "valgrind.log")
        b = Broker(
            broker="workers = 2\nmax-deliveries = 3\ndrain-timeout = 5s\n",
            config="[listener tls]\nhost = 127.0.0.1\nport = 0\ntls-cert = %s\ntls-key = %s\n"
                   "[queue vg.declared]\n[module route]\nrule = vg.fan.# topic\n"
                   % (self.c.server, self.c.server_key),
            wrapper=[VALGRIND, "--leak-check=full", "--show-leak-kinds=definite,indirect",
                     "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=97",
                     "--num-callers=30", "--log-file=" + vg_log])
        b.start(timeout=120)
        try:
            self.workload(b)
            code = b.stop(timeout=150, expect_code=None)
        except BaseException:
            b.kill()
            sys.stderr.write("---- hadrond log ----\n%s\n" % b.log())
            if os.path.exists(vg_log):
                sys.stderr.write("---- valgrind log ----\n%s\n" % open(vg_log).read())
            raise
        with open(vg_log) as f:
            report = f.read()
        self.assertIn("broker, stopped", b.log())
        summary = re.search(r"ERROR SUMMARY: (\d+) errors", report)
        self.assertIsNotNone(summary, "no valgrind summary:\n" + report)
        self.assertEqual(summary.group(1), "0", report)
        for kind in ("definitely", "indirectly"):
            m = re.search(r"%s lost: ([\d,]+) bytes" % kind, report)
            if m:  # absent when every block was freed
                self.assertEqual(m.group(1), "0", report)
        self.assertEqual(code, 0, "exit code (97 = valgrind found errors):\n" + report)

    def workload(self, b):
        # Queue traffic with competing consumers.
        c = connect(b.url())
        snd = c.create_sender("vg.q")
        for i in range(20):
            snd.send(Message(body="q%d" % i, durable=bool(i % 2), ttl=60 if i % 3 else 0))
        r1 = c.create_receiver("vg.q", credit=5, name="r1")
        r2 = c.create_receiver("vg.q", credit=5, name="r2")
        # Prefetch decides the split between them, so take from whichever has one.
        got = 0
        deadline = time.time() + T
        while got < 20 and time.time() < deadline:
            for r in (r1, r2):
                try:
                    r.receive(timeout=0.5)
                except Timeout:
                    continue
                r.accept()
                got += 1
        self.assertEqual(got, 20)
        r1.close()
        r2.close()

        # A topic decided by the route module, with two subscribers.
        s1 = c.create_receiver("vg.fan.news", name="s1")
        s2 = c.create_receiver("vg.fan.news", name="s2")
        c.create_sender("vg.fan.news").send(Message(body="fan"))
        self.assertEqual(s1.receive(timeout=T).body, "fan")
        s1.accept()
        self.assertEqual(s2.receive(timeout=T).body, "fan")
        s2.accept()

        # Rejected by the consumer -> dead letter; released until max-deliveries -> dead letter.
        ds = c.create_sender("vg.declared")
        ds.send(Message(body="bad"))
        ds.send(Message(body="worse"))
        ds.close()
        rr = c.create_receiver("vg.declared", name="rr")
        self.assertEqual(rr.receive(timeout=T).body, "bad")
        rr.reject()
        rr.close()
        for i in range(3):
            rc = connect(b.url())  # a dropped link puts the message back, delivery-count + 1
            rx = rc.create_receiver("vg.declared", name="rx%d" % i)
            self.assertEqual(rx.receive(timeout=T).body, "worse")
            rc.close()
        dlq = c.create_receiver("DLQ", credit=5, name="dlq")
        bodies = set()
        for i in range(2):
            bodies.add(dlq.receive(timeout=T).body)
            dlq.accept()
        self.assertEqual(bodies, {"bad", "worse"})

        # A dynamic queue reached through the anonymous relay; a relay message without 'to'.
        dyn = c.create_receiver(None, dynamic=True, name="dyn")
        addr = dyn.link.remote_source.address
        relay = c.create_sender(None)
        relay.send(Message(address=addr, body="to the temp queue"))
        self.assertEqual(dyn.receive(timeout=T).body, "to the temp queue")
        dyn.accept()
        with self.assertRaises(SendException) as cm:
            relay.send(Message(body="nowhere"))
        self.assertEqual(cm.exception.state, Delivery.REJECTED)
        dyn.close()
        c.close()

        # TLS.
        d = SSLDomain(SSLDomain.MODE_CLIENT)
        d.set_trusted_ca_db(self.c.ca)
        d.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
        t = connect(b.url("tls", scheme="amqps"), ssl_domain=d, virtual_host="localhost")
        t.create_sender("vg.tls").send(Message(body="secret"))
        tr = t.create_receiver("vg.tls")
        self.assertEqual(tr.receive(timeout=T).body, "secret")
        tr.accept()
        t.close()

        # Junk and an abrupt drop, an unfinished frame, then a reload.
        for payload in (b"GET / HTTP/1.0\r\n\r\n", b"AMQP\x00\x01\x00\x00\x00\x00\x01\x00\x02\x00"):
            s = raw_socket(b.port, timeout=T)
            s.sendall(payload)
            time.sleep(0.5)
            s.close()
        b.reload()
        b.wait_log(r"config, reloaded from", timeout=T)

        # A client still connected at SIGTERM is drained, not leaked.
        self.last = connect(b.url())
        self.last.create_sender("vg.q").send(Message(body="left behind"))
        self.addCleanup(self.close_last)

    def close_last(self):
        try:
            self.last.close()
        except Exception:
            pass


if __name__ == "__main__":
    hadron_test.main()
