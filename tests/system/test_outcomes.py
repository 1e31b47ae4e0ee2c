"""Delivery outcomes on a queue: accepted, released, modified (failed,
undeliverable-here, annotations), rejected; and what happens to unsettled
messages when their link or connection goes away."""

import os
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from proton import Delivery, Message, symbol
from proton.utils import BlockingConnection

import hadron_test
from hadron_test import SharedBroker, WAIT, quiet, receiver, sync, take


def settle(dlv, state=Delivery.ACCEPTED, failed=False, undeliverable=False, annotations=None):
    if state == Delivery.MODIFIED:
        dlv.local.failed = failed
        dlv.local.undeliverable = undeliverable
        if annotations is not None:
            dlv.local.annotations = annotations
    dlv.update(state)
    dlv.settle()


class OutcomeTest(SharedBroker):
    broker_args = dict(name="outcomes", config="""
        [queue rej]
        dead-letter-address = rej.dlq
        """)

    def put(self, address, *messages):
        c = self.connect()
        s = c.create_sender(address)
        for m in messages:
            self.assertEqual(s.send(m).remote_state, Delivery.ACCEPTED)
        s.close()

    def next_body(self, address):
        """Consume (accept) the next message of address on a fresh link."""
        c = self.connect()
        r = receiver(c, address, 1)
        m, d = take(c, r)
        settle(d)
        r.close()
        return m

    def test_accepted_removes(self):
        """An accepted message is gone: the next one out is the one sent
        after it."""
        self.put("acc", Message(body="first"), Message(body="second"))
        c = self.connect()
        r = receiver(c, "acc", 1)
        m, d = take(c, r)
        self.assertEqual(m.body, "first")
        self.assertTrue(m.first_acquirer)
        settle(d, Delivery.ACCEPTED)
        r.close()
        self.assertEqual(self.next_body("acc").body, "second")

    def test_released(self):
        """A released message goes back to the head of the queue with its
        delivery-count unchanged and first-acquirer false next time."""
        self.put("rel", Message(body="a"), Message(body="b"))
        c = self.connect()
        r = receiver(c, "rel", 1)
        m, d = take(c, r)
        self.assertEqual((m.body, m.delivery_count, m.first_acquirer), ("a", 0, True))
        settle(d, Delivery.RELEASED)
        sync(c)  # proton would send the flow below before the disposition
        r.link.flow(1)
        m, d = take(c, r)
        self.assertEqual(m.body, "a", "a released message keeps its place")
        self.assertEqual(m.delivery_count, 0)
        self.assertFalse(m.first_acquirer)
        settle(d)
        r.link.flow(1)
        m, d = take(c, r)
        self.assertEqual((m.body, m.first_acquirer), ("b", True))
        settle(d)

    def test_modified_delivery_failed(self):
        """modified with delivery-failed counts an attempt: delivery-count
        goes up by one each time."""
        self.put("modfail", Message(body="x"))
        c = self.connect()
        r = receiver(c, "modfail", 0)
        for expected in (0, 1, 2):
            r.link.flow(1)
            m, d = take(c, r)
            self.assertEqual(m.delivery_count, expected)
            self.assertEqual(m.first_acquirer, expected == 0)
            settle(d, Delivery.MODIFIED, failed=True)
        r.link.flow(1)
        m, d = take(c, r)
        self.assertEqual(m.delivery_count, 3)
        settle(d)

    def test_modified_not_failed(self):
        """modified without delivery-failed does not count an attempt."""
        self.put("modok", Message(body="x"))
        c = self.connect()
        r = receiver(c, "modok", 0)
        r.link.flow(1)
        m, d = take(c, r)
        settle(d, Delivery.MODIFIED)
        r.link.flow(1)
        m, d = take(c, r)
        self.assertEqual(m.delivery_count, 0)
        self.assertFalse(m.first_acquirer)
        settle(d)

    def test_modified_undeliverable_here(self):
        """modified with undeliverable-here: the message is never offered to
        that link again, even while it has credit, and goes to another
        consumer; later messages still reach the first link."""
        self.put("undeliv", Message(body="picky"))
        c = self.connect()
        a = receiver(c, "undeliv", 10, name="a")
        b = receiver(c, "undeliv", 0, name="b")
        m, d = take(c, a)
        self.assertEqual(m.body, "picky")
        settle(d, Delivery.MODIFIED, undeliverable=True)
        quiet(c)
        self.assertEqual(a.fetcher.has_message, 0, "offered again to the link that refused it")
        b.link.flow(1)
        m, d = take(c, b)
        self.assertEqual(m.body, "picky")
        self.assertEqual(m.delivery_count, 0)
        self.assertFalse(m.first_acquirer)
        # Back to the queue once more: still not for a, so b gets it again.
        settle(d, Delivery.RELEASED)
        self.put("undeliv", Message(body="later"))
        m2, d2 = take(c, a)
        self.assertEqual(m2.body, "later", "a link must still get the messages it may take")
        settle(d2)
        quiet(c)
        self.assertEqual(a.fetcher.has_message, 0)
        b.link.flow(1)
        m, d = take(c, b)
        self.assertEqual(m.body, "picky")
        settle(d)

    def test_modified_annotations_merged(self):
        """modified with message-annotations: the next delivery carries the
        message's own annotations merged with them (new values win)."""
        self.put("modann", Message(body="x", annotations={symbol("x-opt-keep"): 1,
                                                           symbol("x-opt-change"): "old"}))
        c = self.connect()
        r = receiver(c, "modann", 0)
        r.link.flow(1)
        m, d = take(c, r)
        self.assertEqual(m.annotations, {"x-opt-keep": 1, "x-opt-change": "old"})
        settle(d, Delivery.MODIFIED,
               annotations={symbol("x-opt-change"): "new", symbol("x-opt-added"): 3})
        r.link.flow(1)
        m, d = take(c, r)
        self.assertEqual(m.annotations, {"x-opt-keep": 1, "x-opt-change": "new", "x-opt-added": 3})
        self.assertEqual(m.body, "x")
        settle(d)

    def test_modified_annotations_added(self):
        """modified with message-annotations on a message that had none: the
        next delivery carries exactly those, and the rest is unchanged."""
        self.put("modann.new", Message(body="plain", subject="s", properties={"p": 1}))
        c = self.connect()
        r = receiver(c, "modann.new", 0)
        r.link.flow(1)
        m, d = take(c, r)
        self.assertIsNone(m.annotations)
        settle(d, Delivery.MODIFIED, annotations={symbol("x-opt-note"): "seen"})
        r.link.flow(1)
        m, d = take(c, r)
        self.assertEqual(m.annotations, {"x-opt-note": "seen"})
        self.assertEqual((m.body, m.subject, m.properties), ("plain", "s", {"p": 1}))
        settle(d)

    def test_rejected_moves_to_dead_letter_queue(self):
        """A rejected message leaves its queue and lands in the dead-letter
        address, marked as rejected."""
        self.put("rej", Message(body="bad"), Message(body="good"))
        c = self.connect()
        r = receiver(c, "rej", 1)
        m, d = take(c, r)
        self.assertEqual(m.body, "bad")
        settle(d, Delivery.REJECTED)
        r.close()
        self.assertEqual(self.next_body("rej").body, "good")
        dead = self.next_body("rej.dlq")
        self.assertEqual(dead.body, "bad")
        self.assertEqual(dead.annotations.get("x-opt-dead-letter-reason"), "rejected")
        self.assertEqual(dead.annotations.get("x-opt-original-address"), "rej")

    def test_rejected_default_dlq(self):
        """Without a per-node setting, rejected messages go to "DLQ"."""
        self.put("rej.default", Message(body="to-dlq"))
        c = self.connect()
        r = receiver(c, "rej.default", 1)
        m, d = take(c, r)
        settle(d, Delivery.REJECTED)
        sync(c)
        dead = self.next_body("DLQ")
        self.assertEqual(dead.body, "to-dlq")
        self.assertEqual(dead.annotations.get("x-opt-original-address"), "rej.default")

    def test_link_detach_redelivers(self):
        """Unsettled messages of a detached link come back with
        delivery-count + 1 and first-acquirer false, in order."""
        self.put("detach", Message(body=1), Message(body=2))
        c = self.connect()
        r = receiver(c, "detach", 2)
        for body in (1, 2):
            m, d = take(c, r)
            self.assertEqual((m.body, m.delivery_count, m.first_acquirer), (body, 0, True))
        r.close()
        r2 = receiver(c, "detach", 2, name="again")
        for body in (1, 2):
            m, d = take(c, r2)
            self.assertEqual((m.body, m.delivery_count, m.first_acquirer), (body, 1, False))
            settle(d)

    def test_connection_close_redelivers(self):
        """Closing the connection with unsettled messages puts them back
        with delivery-count + 1."""
        self.put("connclose", Message(body="held"))
        c = BlockingConnection(self.broker.url(), timeout=WAIT)
        r = receiver(c, "connclose", 1)
        m, d = take(c, r)
        self.assertTrue(m.first_acquirer)
        c.close()
        m = self.next_body("connclose")
        self.assertEqual((m.body, m.delivery_count, m.first_acquirer), ("held", 1, False))

    def test_waiting_consumer_gets_redelivery(self):
        """A consumer already waiting with credit gets the messages another
        consumer's connection left unsettled, as redeliveries."""
        self.put("handover", Message(body="h1"), Message(body="h2"))
        waiting = self.connect()
        w = receiver(waiting, "handover", 0)
        c = BlockingConnection(self.broker.url(), timeout=WAIT)
        r = receiver(c, "handover", 2)
        self.assertEqual([take(c, r)[0].body for _ in range(2)], ["h1", "h2"])
        w.link.flow(10)
        sync(waiting)  # the credit is in while the messages are still taken
        c.close()
        got = []
        for _ in range(2):
            m, d = take(waiting, w)
            got.append((m.body, m.delivery_count, m.first_acquirer))
            settle(d)
        self.assertEqual(got, [("h1", 1, False), ("h2", 1, False)])

    def test_connection_drop_redelivers(self):
        """A client that dies (socket closed, no AMQP close) with an
        unsettled message: the message comes back with delivery-count + 1
        and first-acquirer false."""
        self.put("conndrop", Message(body="orphan"))
        child = textwrap.dedent("""
            import os, sys
            from proton.utils import BlockingConnection
            c = BlockingConnection(sys.argv[1], timeout=%r)
            r = c.create_receiver("conndrop", credit=1)
            m = r.receive()
            print(m.body, m.first_acquirer, flush=True)
            os._exit(0)
            """ % WAIT)
        out = subprocess.run([sys.executable, "-c", child, self.broker.url()], capture_output=True,
                             text=True, timeout=3 * WAIT)
        self.assertEqual(out.stdout.strip(), "orphan True", out.stderr)
        m = self.next_body("conndrop")
        self.assertEqual((m.body, m.delivery_count, m.first_acquirer), ("orphan", 1, False))


if __name__ == "__main__":
    hadron_test.main()
