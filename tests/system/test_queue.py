"""Queues: round trip, FIFO, competing consumers, credit and drain, node
types chosen by capability or declaration, settlement modes, max-depth."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import unittest

from proton import Delivery, Link, Message, Transport
from proton.reactor import AtMostOnce, LinkOption
from proton.utils import BlockingConnection, LinkDetached

import hadron_test
from hadron_test import Broker, Caps, SharedBroker, WAIT, caps_of, quiet, receiver, send_wait, sync, take


class RcvSecond(LinkOption):
    """rcv-settle-mode second: the receiver settles only after the sender."""

    def apply(self, link):
        link.rcv_settle_mode = Link.RCV_SECOND


def settle(dlv, state=Delivery.ACCEPTED):
    dlv.update(state)
    dlv.settle()


def trace_frames(conn):
    """Record the connection's AMQP frames from now on (as proton logs them)."""
    frames = []
    conn.conn.transport.trace(Transport.TRACE_FRM)
    conn.conn.transport.tracer = lambda transport, line: frames.append(line)
    return frames


class QueueTest(SharedBroker):
    broker_args = dict(name="queue", config="""
        [queue declared.q]
        [topic declared.t]
        [queue small]
        max-depth = 2
        """)

    def assertEmpty(self, conn, address):
        """The queue holds nothing: a marker sent now is the next message out."""
        s = conn.create_sender(address, name="marker-sender-" + address)
        s.send(Message(body="marker"))
        r = receiver(conn, address, 1, name="marker-receiver-" + address)
        m = r.receive(timeout=WAIT)
        self.assertEqual(m.body, "marker")
        r.accept()
        r.close()
        s.close()

    def test_round_trip(self):
        """A message sent to a queue comes back with its body, properties and
        application properties; the first delivery says first-acquirer and
        delivery-count 0; once accepted it is gone."""
        c = self.connect()
        s = c.create_sender("rt")
        self.assertEqual(caps_of(s.link.remote_target), ["queue"])
        dlv = s.send(Message(body="hello", subject="greeting", id="m-1", durable=True,
                             properties={"k": 7}))
        self.assertEqual(dlv.remote_state, Delivery.ACCEPTED)
        r = receiver(c, "rt", 1)
        m, d = take(c, r)
        self.assertEqual(m.body, "hello")
        self.assertEqual(m.subject, "greeting")
        self.assertEqual(m.id, "m-1")
        self.assertEqual(m.properties, {"k": 7})
        self.assertTrue(m.durable)
        self.assertTrue(m.first_acquirer)
        self.assertEqual(m.delivery_count, 0)
        self.assertFalse(d.settled)
        settle(d)
        r.close()
        self.assertEmpty(c, "rt")

    def test_fifo(self):
        """Messages come out in the order they went in."""
        c = self.connect()
        s = c.create_sender("fifo")
        for i in range(30):
            s.send(Message(body=i))
        r = receiver(c, "fifo", 30)
        got = []
        for _ in range(30):
            m, d = take(c, r)
            got.append(m.body)
            settle(d)
        self.assertEqual(got, list(range(30)))

    def test_many_messages_beyond_credit_window(self):
        """More messages than the producer's credit window (1000) go through
        in order: the broker keeps topping up the producer's credit."""
        c = self.connect()
        s = c.create_sender("many")
        n = 2500
        dlvs = []
        for i in range(n):
            c.wait(lambda: s.link.credit > 0, timeout=WAIT, msg="no credit after %d" % i)
            dlvs.append(s.link.send(Message(body=i)))
        c.wait(lambda: all(d.settled for d in dlvs), timeout=3 * WAIT, msg="outcomes")
        self.assertEqual({d.remote_state for d in dlvs}, {Delivery.ACCEPTED})
        r = receiver(c, "many", n)
        got = []
        for _ in range(n):
            m, d = take(c, r)
            got.append(m.body)
            settle(d)
        self.assertEqual(got, list(range(n)))

    def test_competing_consumers_round_robin(self):
        """Two consumers with credit share a queue: each message goes to
        exactly one of them, in turn, and together they get all of them."""
        c = self.connect()
        r1 = receiver(c, "compete", 20, name="r1")
        r2 = receiver(c, "compete", 20, name="r2")
        sync(c)  # both flows are in before the first message
        p = self.connect()
        s = p.create_sender("compete")
        for i in range(10):
            s.send(Message(body=i))
        got1, got2 = [], []
        c.wait(lambda: r1.fetcher.has_message + r2.fetcher.has_message >= 10, timeout=WAIT)
        quiet(c)
        for r, got in ((r1, got1), (r2, got2)):
            while r.fetcher.has_message:
                m, d = take(c, r)
                got.append(m.body)
                settle(d)
        self.assertEqual(sorted(got1 + got2), list(range(10)), "every message exactly once")
        self.assertEqual(len(got1), 5, "round robin: %s / %s" % (got1, got2))
        self.assertEqual(len(got2), 5, "round robin: %s / %s" % (got1, got2))
        # In turn: each consumer sees every other message.
        self.assertEqual({got1[0] % 2, got2[0] % 2}, {0, 1})
        self.assertTrue(all(b - a == 2 for a, b in zip(got1, got1[1:])), got1)
        self.assertTrue(all(b - a == 2 for a, b in zip(got2, got2[1:])), got2)

    def test_consumer_out_of_credit_is_skipped(self):
        """A consumer that has used its credit is passed over: the others
        get the rest."""
        c = self.connect()
        small = receiver(c, "uneven", 2, name="small")
        big = receiver(c, "uneven", 20, name="big")
        sync(c)
        s = self.connect().create_sender("uneven")
        for i in range(10):
            s.send(Message(body=i))
        c.wait(lambda: small.fetcher.has_message + big.fetcher.has_message >= 10, timeout=WAIT)
        quiet(c)
        self.assertEqual(small.fetcher.has_message, 2)
        self.assertEqual(big.fetcher.has_message, 8)

    def test_credit_one_gets_exactly_one(self):
        """A consumer that grants credit 1 gets one message and no more; the
        rest stay available to other consumers."""
        c = self.connect()
        s = c.create_sender("credit1")
        for i in range(5):
            s.send(Message(body=i))
        r = receiver(c, "credit1", 0, name="one")
        r.link.flow(1)
        m, d = take(c, r)
        self.assertEqual(m.body, 0)
        quiet(c)
        self.assertEqual(r.fetcher.has_message, 0, "more than the credit was sent")
        self.assertEqual(r.link.credit, 0)
        # The first message is still unsettled; the other four wait.
        other = receiver(c, "credit1", 10, name="other")
        rest = []
        for _ in range(4):
            m2, d2 = take(c, other)
            rest.append(m2.body)
            settle(d2)
        self.assertEqual(rest, [1, 2, 3, 4])
        settle(d)
        # More credit on the first link: nothing is left for it.
        r.link.drain(3)
        c.wait(lambda: not r.link.draining(), timeout=WAIT)
        self.assertEqual(r.fetcher.has_message, 0)

    def test_drain_empty_queue(self):
        """Draining a consumer on an empty queue returns all the credit:
        the broker answers with credit 0 and the drained amount."""
        c = self.connect()
        r = receiver(c, "drain.empty", 0)
        r.link.drain(5)
        c.wait(lambda: not r.link.draining(), timeout=WAIT, msg="drain never completed")
        self.assertEqual(r.link.credit, 0)
        self.assertEqual(r.link.drained(), 5)
        self.assertEqual(r.fetcher.has_message, 0)

    def test_drain_short_queue(self):
        """Draining with more credit than messages: the messages arrive, the
        rest of the credit comes back as drained."""
        c = self.connect()
        s = c.create_sender("drain.short")
        s.send(Message(body="a"))
        s.send(Message(body="b"))
        r = receiver(c, "drain.short", 0)
        r.link.drain(5)
        # The transport may have read the whole answer before the messages
        # are dispatched one by one: wait for both.
        c.wait(lambda: r.fetcher.has_message >= 2 and not r.link.draining(), timeout=WAIT,
               msg="drain never completed")
        quiet(c)
        self.assertEqual(r.fetcher.has_message, 2)
        self.assertEqual(r.link.credit, 0)
        self.assertEqual(r.link.drained(), 3)
        for body in ("a", "b"):
            m, d = take(c, r)
            self.assertEqual(m.body, body)
            settle(d)

    def test_capability_chooses_topic(self):
        """A new address attached with capability "topic" becomes a topic:
        the reply echoes "topic" and two subscribers each get the message."""
        c = self.connect()
        r1 = receiver(c, "captopic", 5, name="t1", options=Caps("topic"))
        r2 = receiver(c, "captopic", 5, name="t2", options=Caps("topic"))
        self.assertEqual(caps_of(r1.link.remote_source), ["topic"])
        s = c.create_sender("captopic", options=Caps("topic"))
        self.assertEqual(caps_of(s.link.remote_target), ["topic"])
        s.send(Message(body="fan"))
        for r in (r1, r2):
            m, d = take(c, r)
            self.assertEqual(m.body, "fan")
            settle(d)

    def test_capability_chooses_queue_over_prefix(self):
        """Capability "queue" on an address with the topic prefix makes a
        queue: the reply echoes "queue" and two consumers compete."""
        c = self.connect()
        r1 = receiver(c, "topic.butqueue", 5, name="q1", options=Caps("queue"))
        self.assertEqual(caps_of(r1.link.remote_source), ["queue"])
        s = c.create_sender("topic.butqueue")
        self.assertEqual(caps_of(s.link.remote_target), ["queue"])
        r2 = receiver(c, "topic.butqueue", 5, name="q2")
        sync(c)
        s.send(Message(body=1))
        s.send(Message(body=2))
        c.wait(lambda: r1.fetcher.has_message + r2.fetcher.has_message >= 2, timeout=WAIT)
        quiet(c)
        self.assertEqual(r1.fetcher.has_message + r2.fetcher.has_message, 2,
                         "a queue hands each message to one consumer")

    def test_prefix_makes_topic(self):
        """Without a capability, an address starting with "topic." is a topic."""
        c = self.connect()
        r = receiver(c, "topic.plain", 1)
        self.assertEqual(caps_of(r.link.remote_source), ["topic"])

    def test_declared_nodes(self):
        """[queue X] and [topic X] nodes exist with their type: the reply
        says so without the client asking."""
        c = self.connect()
        r = receiver(c, "declared.q", 1, name="dq")
        self.assertEqual(caps_of(r.link.remote_source), ["queue"])
        r = receiver(c, "declared.t", 1, name="dt")
        self.assertEqual(caps_of(r.link.remote_source), ["topic"])
        s = c.create_sender("declared.t")
        self.assertEqual(caps_of(s.link.remote_target), ["topic"])

    def test_capability_contradicting_node_refused(self):
        """Asking for a topic where a queue exists (and the other way round)
        is refused with amqp:precondition-failed, for receivers and senders."""
        c = self.connect()
        c.create_sender("existing.q")  # auto-created as a queue
        with self.assertRaises(LinkDetached) as cm:
            receiver(c, "existing.q", 1, name="bad-r", options=Caps("topic"))
        self.assertEqual(cm.exception.condition, "amqp:precondition-failed")
        with self.assertRaises(LinkDetached) as cm:
            c.create_sender("existing.q", name="bad-s", options=Caps("topic"))
        self.assertEqual(cm.exception.condition, "amqp:precondition-failed")
        with self.assertRaises(LinkDetached) as cm:
            receiver(c, "declared.t", 1, name="bad-t", options=Caps("queue"))
        self.assertEqual(cm.exception.condition, "amqp:precondition-failed")
        # The connection is still usable.
        s = c.create_sender("existing.q", name="good-s", options=Caps("queue"))
        self.assertEqual(caps_of(s.link.remote_target), ["queue"])

    def test_presettled_producer(self):
        """A presettled transfer is enqueued and gets no disposition back;
        an unsettled one sent after it does."""
        c = self.connect()
        frames = trace_frames(c)
        s = c.create_sender("presettled", options=AtMostOnce())
        self.assertEqual(s.link.remote_snd_settle_mode, Link.SND_SETTLED)
        c.wait(lambda: s.link.credit > 0, timeout=WAIT)
        s.link.send(Message(body="fire-and-forget"))
        sync(c)  # the transfer is out
        consumer = self.connect()
        r = receiver(consumer, "presettled", 1)
        m, d = take(consumer, r)
        self.assertEqual(m.body, "fire-and-forget")
        settle(d)
        # The broker answers in order: the outcome of a later unsettled
        # transfer shows that it had its chance to answer the first.
        s2 = c.create_sender("presettled", name="unsettled")
        self.assertEqual(send_wait(c, s2, Message(body="acked")).remote_state, Delivery.ACCEPTED)
        incoming = [f for f in frames if "<- @disposition" in f]
        self.assertEqual(len(incoming), 1, "\n".join(incoming))
        self.assertIn("first=0x1", incoming[0])

    def test_rcv_settle_second_producer(self):
        """With rcv-settle-mode second the broker sends accepted but does not
        settle until the producer settles; the message is enqueued."""
        c = self.connect()
        s = c.create_sender("second.p", options=RcvSecond())
        self.assertEqual(s.link.remote_rcv_settle_mode, Link.RCV_SECOND)
        dlv = send_wait(c, s, Message(body="two-step"))
        self.assertEqual(dlv.remote_state, Delivery.ACCEPTED)
        quiet(c)
        self.assertFalse(dlv.settled, "the broker settled before the producer did")
        dlv.settle()
        r = receiver(c, "second.p", 1)
        m, d = take(c, r)
        self.assertEqual(m.body, "two-step")
        settle(d)

    def test_rcv_settle_second_consumer(self):
        """A consumer in rcv-settle-mode second sends accepted unsettled; the
        broker settles, then the consumer settles, and the message is gone."""
        c = self.connect()
        s = c.create_sender("second.c")
        s.send(Message(body="x"))
        r = receiver(c, "second.c", 1, options=RcvSecond())
        self.assertEqual(r.link.remote_rcv_settle_mode, Link.RCV_SECOND)
        m, d = take(c, r)
        self.assertEqual(m.body, "x")
        d.update(Delivery.ACCEPTED)
        c.wait(lambda: d.settled, timeout=WAIT, msg="broker never settled")
        d.settle()
        r.close()
        self.assertEmpty(c, "second.c")

    def test_at_most_once_consumer(self):
        """A consumer with snd-settle-mode settled gets presettled messages;
        they are gone from the queue and not redelivered after it leaves."""
        c = self.connect()
        s = c.create_sender("amo")
        s.send(Message(body="once"))
        r = receiver(c, "amo", 1, options=AtMostOnce())
        self.assertEqual(r.link.remote_snd_settle_mode, Link.SND_SETTLED)
        m, d = take(c, r)
        self.assertEqual(m.body, "once")
        self.assertTrue(d.settled, "an at-most-once delivery must arrive settled")
        r.close()
        self.assertEmpty(c, "amo")

    def test_max_depth_node(self):
        """A queue at its max-depth rejects new messages with
        amqp:resource-limit-exceeded; consuming one makes room again."""
        c = self.connect()
        s = c.create_sender("small")
        for i in range(2):
            self.assertEqual(send_wait(c, s, Message(body=i)).remote_state, Delivery.ACCEPTED)
        dlv = send_wait(c, s, Message(body="too many"))
        self.assertEqual(dlv.remote_state, Delivery.REJECTED)
        self.assertEqual(dlv.remote.condition.name, "amqp:resource-limit-exceeded")
        dlv.settle()
        r = receiver(c, "small", 1)
        m, d = take(c, r)
        self.assertEqual(m.body, 0)
        settle(d)
        r.close()
        dlv = send_wait(c, s, Message(body="room again"))
        self.assertEqual(dlv.remote_state, Delivery.ACCEPTED)
        r = receiver(c, "small", 2, name="drain-small")
        self.assertEqual([take(c, r)[0].body for _ in range(2)], [1, "room again"])


class BrokerMaxDepthTest(unittest.TestCase):
    def test_max_depth_broker(self):
        """[broker] max-depth applies to auto-created queues."""
        with Broker(name="depth", broker="max-depth = 1\n") as b:
            c = BlockingConnection(b.url(), timeout=WAIT)
            try:
                s = c.create_sender("anyq")
                self.assertEqual(send_wait(c, s, Message(body=1)).remote_state, Delivery.ACCEPTED)
                dlv = send_wait(c, s, Message(body=2))
                self.assertEqual(dlv.remote_state, Delivery.REJECTED)
                self.assertEqual(dlv.remote.condition.name, "amqp:resource-limit-exceeded")
            finally:
                c.close()


if __name__ == "__main__":
    hadron_test.main()
