"""Broker-wide behaviour not owned by a more specific test file: worker
threads, and how a refused attach looks on the wire."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker  # noqa: E402

from proton import Message  # noqa: E402
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import Container  # noqa: E402


class Workers(unittest.TestCase):
    def test_configured_worker_count(self):
        """[broker] workers = 3 runs three proactor threads, and they serve traffic."""
        with Broker(broker="workers = 3\n") as b:
            b.wait_log(r"broker, started: hadron \S+, 3 worker threads")
            from proton.utils import BlockingConnection
            conns = [BlockingConnection(b.url(), timeout=10) for _ in range(4)]
            for i, c in enumerate(conns):
                c.create_sender("w.q").send(Message(body=i))
            r = conns[0].create_receiver("w.q", credit=10)
            got = sorted(r.receive(timeout=5).body for _ in range(4))
            r.accept()
            self.assertEqual([0, 1, 2, 3], got)
            for c in conns:
                c.close()

    def test_default_is_one_per_core(self):
        """Without a workers key the broker runs one thread per online CPU."""
        with Broker() as b:
            b.wait_log(r"broker, started: hadron \S+, %d worker threads" % os.cpu_count())


class RefusalProbe(MessagingHandler):
    """Attach a sender and a receiver to a refused address; record what the
    broker's answering attach held and the detach condition."""

    def __init__(self, url, address):
        super().__init__(prefetch=0)
        self.url, self.address, self.seen = url, address, {}

    def on_start(self, event):
        c = event.container
        conn = c.connect(self.url, reconnect=False)
        self.sender = c.create_sender(conn, self.address, name="s")
        self.receiver = c.create_receiver(conn, self.address, name="r")
        c.schedule(10, self)

    def on_timer_task(self, event):
        event.container.stop()

    def _record(self, link):
        # remote_target/remote_source are the broker's termini; a null one has
        # type UNSPECIFIED.
        term = link.remote_target if link.is_sender else link.remote_source
        cond = link.remote_condition
        self.seen[link.name] = (term.type, cond.name if cond else None)
        if len(self.seen) == 2:
            link.connection.close()

    def on_link_remote_close(self, event):
        self._record(event.link)

    def on_connection_closed(self, event):
        event.container.stop()


class Refusal(unittest.TestCase):
    def test_refused_attach_has_null_terminus(self):
        """A refused link is answered with a null source/target, then detached
        with the condition (AMQP 1.0 section 2.6.3)."""
        from proton import Terminus
        with Broker(broker="auto-create = no\n") as b:
            probe = RefusalProbe(b.url(), "no.such.address")
            Container(probe).run()
            self.assertEqual({"s": (Terminus.UNSPECIFIED, "amqp:not-found"),
                              "r": (Terminus.UNSPECIFIED, "amqp:not-found")}, probe.seen)


if __name__ == "__main__":
    hadron_test.main()
