"""Anonymous relay (routing by 'to'), dynamic (temporary) queues and
browsing receivers."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from proton import Delivery, Message
from proton.reactor import Copy
from proton.utils import LinkDetached

import hadron_test
from hadron_test import SharedBroker, quiet, receiver, send_wait, take


def accept(dlv):
    dlv.update(Delivery.ACCEPTED)
    dlv.settle()


class RelayTest(SharedBroker):
    """auto-create = no: only declared nodes exist."""

    broker_args = dict(name="relay", broker="auto-create = no\n", config="""
        [queue relay.a]
        [queue relay.b]
        [topic relay.t]
        [queue relay.full]
        max-depth = 1
        """)

    def test_offers_anonymous_relay(self):
        """The broker's open frame offers ANONYMOUS-RELAY."""
        c = self.connect()
        caps = [str(x) for x in (c.conn.remote_offered_capabilities or [])]
        self.assertIn("ANONYMOUS-RELAY", caps)

    def test_routes_by_to(self):
        """One sender with a null target reaches each node its messages'
        'to' names, queues and topics alike."""
        c = self.connect()
        ra = receiver(c, "relay.a", 5, name="ra")
        rb = receiver(c, "relay.b", 5, name="rb")
        t1 = receiver(c, "relay.t", 5, name="t1")
        t2 = receiver(c, "relay.t", 5, name="t2")
        s = c.create_sender(None)
        self.assertIsNone(s.link.remote_target.address)
        for to, body in (("relay.a", "to-a"), ("relay.b", "to-b"), ("relay.t", "to-t"),
                         ("relay.a", "to-a-2")):
            self.assertEqual(send_wait(c, s, Message(address=to, body=body)).remote_state,
                             Delivery.ACCEPTED)
        for r, expected in ((ra, ["to-a", "to-a-2"]), (rb, ["to-b"]), (t1, ["to-t"]),
                            (t2, ["to-t"])):
            got = []
            for _ in expected:
                m, d = take(c, r)
                got.append(m.body)
                accept(d)
            self.assertEqual(got, expected)
        quiet(c)
        self.assertEqual([r.fetcher.has_message for r in (ra, rb, t1, t2)], [0, 0, 0, 0])

    def test_no_to_rejected(self):
        """A message without 'to' on a relay link is rejected with
        amqp:precondition-failed; the link keeps working."""
        c = self.connect()
        s = c.create_sender(None)
        dlv = send_wait(c, s, Message(body="nowhere"))
        self.assertEqual(dlv.remote_state, Delivery.REJECTED)
        self.assertEqual(dlv.remote.condition.name, "amqp:precondition-failed")
        dlv.settle()
        dlv = send_wait(c, s, Message(address="relay.b", body="somewhere"))
        self.assertEqual(dlv.remote_state, Delivery.ACCEPTED)
        r = receiver(c, "relay.b", 1)
        m, d = take(c, r)
        self.assertEqual(m.body, "somewhere")
        accept(d)

    def test_relay_to_full_queue(self):
        """A relayed message to a queue at max-depth is rejected with
        amqp:resource-limit-exceeded."""
        c = self.connect()
        s = c.create_sender(None)
        self.assertEqual(send_wait(c, s, Message(address="relay.full", body=1)).remote_state,
                         Delivery.ACCEPTED)
        dlv = send_wait(c, s, Message(address="relay.full", body=2))
        self.assertEqual(dlv.remote_state, Delivery.REJECTED)
        self.assertEqual(dlv.remote.condition.name, "amqp:resource-limit-exceeded")

    def test_unknown_address_rejected(self):
        """With auto-create = no, a relayed message to an unknown address
        is rejected with amqp:not-found, and no node appears."""
        c = self.connect()
        s = c.create_sender(None)
        dlv = send_wait(c, s, Message(address="relay.unknown", body="lost"))
        self.assertEqual(dlv.remote_state, Delivery.REJECTED)
        self.assertEqual(dlv.remote.condition.name, "amqp:not-found")
        dlv.settle()
        with self.assertRaises(LinkDetached) as cm:
            receiver(c, "relay.unknown", 1)
        self.assertEqual(cm.exception.condition, "amqp:not-found")

    def test_attach_unknown_refused(self):
        """With auto-create = no, attaching to an unknown address is refused
        with amqp:not-found (senders and receivers)."""
        c = self.connect()
        with self.assertRaises(LinkDetached) as cm:
            c.create_sender("nope.s")
        self.assertEqual(cm.exception.condition, "amqp:not-found")
        with self.assertRaises(LinkDetached) as cm:
            receiver(c, "nope.r", 1)
        self.assertEqual(cm.exception.condition, "amqp:not-found")


class DynamicTest(SharedBroker):
    """auto-create = yes (the default): temporary names still never come back."""

    broker_args = dict(name="dynamic", config="[queue svc]\n")

    def test_dynamic_name(self):
        """A dynamic receiver gets a temporary queue named $tmp.<hex>.<n>
        in the attach reply; two get different names."""
        c = self.connect()
        r1 = receiver(c, None, 1, dynamic=True, name="d1")
        r2 = receiver(c, None, 1, dynamic=True, name="d2")
        a1, a2 = r1.link.remote_source.address, r2.link.remote_source.address
        self.assertRegex(a1, r"^\$tmp\.[0-9a-f]+\.[0-9]+$")
        self.assertRegex(a2, r"^\$tmp\.[0-9a-f]+\.[0-9]+$")
        self.assertNotEqual(a1, a2)

    def test_request_reply(self):
        """Request/reply: the requester's dynamic queue is the reply-to; a
        service answers through the anonymous relay."""
        client = self.connect()
        replies = receiver(client, None, 5, dynamic=True)
        reply_to = replies.link.remote_source.address
        client.create_sender("svc").send(Message(body="ping", reply_to=reply_to,
                                                 correlation_id="c-1"))
        service = self.connect()
        requests = receiver(service, "svc", 1)
        req, d = take(service, requests)
        accept(d)
        self.assertEqual(req.reply_to, reply_to)
        dlv = send_wait(service, service.create_sender(None),
                        Message(address=req.reply_to, correlation_id=req.correlation_id,
                                body=req.body.replace("ping", "pong")))
        self.assertEqual(dlv.remote_state, Delivery.ACCEPTED)
        m, d = take(client, replies)
        self.assertEqual((m.body, m.correlation_id), ("pong", "c-1"))
        accept(d)

    def test_temporary_queue_gone_after_detach(self):
        """Once its link detaches, a temporary queue is gone: relayed messages
        to its name are rejected amqp:not-found and attaching to the name is
        refused; the name is not auto-created again."""
        c = self.connect()
        r = receiver(c, None, 1, dynamic=True)
        name = r.link.remote_source.address
        s = c.create_sender(None)
        self.assertEqual(send_wait(c, s, Message(address=name, body="while-alive")).remote_state,
                         Delivery.ACCEPTED)
        r.close()
        dlv = send_wait(c, s, Message(address=name, body="after"))
        self.assertEqual(dlv.remote_state, Delivery.REJECTED)
        self.assertEqual(dlv.remote.condition.name, "amqp:not-found")
        dlv.settle()
        with self.assertRaises(LinkDetached) as cm:
            receiver(c, name, 1, name="reattach")
        self.assertEqual(cm.exception.condition, "amqp:not-found")
        with self.assertRaises(LinkDetached) as cm:
            c.create_sender(name, name="resend")
        self.assertEqual(cm.exception.condition, "amqp:not-found")

    def test_temporary_queue_reachable_by_name(self):
        """Other links can send to a temporary queue by name while it lives
        (that is how replies reach it)."""
        c = self.connect()
        r = receiver(c, None, 2, dynamic=True)
        name = r.link.remote_source.address
        other = self.connect()
        other.create_sender(name).send(Message(body="direct"))
        m, d = take(c, r)
        self.assertEqual(m.body, "direct")
        accept(d)


class BrowseTest(SharedBroker):
    broker_args = dict(name="browse")

    def put(self, address, *bodies):
        c = self.connect()
        s = c.create_sender(address)
        for b in bodies:
            s.send(Message(body=b))
        s.close()

    def test_browse_then_consume(self):
        """A browser sees every available message once, in order, without
        consuming them; a normal consumer then gets all of them as first
        deliveries."""
        self.put("browse.q", 1, 2, 3)
        c = self.connect()
        b = receiver(c, "browse.q", 10, options=Copy(), name="browser")
        seen = []
        for _ in range(3):
            m, d = take(c, b)
            seen.append(m.body)
            accept(d)
        quiet(c)
        self.assertEqual(b.fetcher.has_message, 0, "a browser saw a message twice")
        self.assertEqual(seen, [1, 2, 3])
        r = receiver(c, "browse.q", 10, name="consumer")
        got = []
        for _ in range(3):
            m, d = take(c, r)
            got.append((m.body, m.delivery_count, m.first_acquirer))
            accept(d)
        self.assertEqual(got, [(1, 0, True), (2, 0, True), (3, 0, True)])

    def test_browser_sees_later_messages(self):
        """A browser with credit left sees messages that arrive after it
        attached, and the messages stay for consumers."""
        c = self.connect()
        b = receiver(c, "browse.later", 10, options=Copy(), name="browser")
        self.put("browse.later", "late")
        m, d = take(c, b)
        self.assertEqual(m.body, "late")
        accept(d)
        r = receiver(c, "browse.later", 1, name="consumer")
        m, d = take(c, r)
        self.assertEqual(m.body, "late")
        accept(d)

    def test_browser_reject_does_not_dead_letter(self):
        """A browser does not own what it sees: rejecting or releasing a
        copy leaves the message in the queue and sends nothing to DLQ."""
        self.put("browse.rej", "keep")
        c = self.connect()
        b = receiver(c, "browse.rej", 10, options=Copy(), name="browser")
        m, d = take(c, b)
        d.update(Delivery.REJECTED)
        d.settle()
        b.close()
        r = receiver(c, "browse.rej", 1, name="consumer")
        m, d = take(c, r)
        self.assertEqual((m.body, m.delivery_count), ("keep", 0))
        accept(d)
        self.put("DLQ", "marker")
        dlq = receiver(c, "DLQ", 1, name="dlq")
        m, d = take(c, dlq)
        self.assertEqual(m.body, "marker", "a browser's reject reached DLQ")
        accept(d)

    def test_browser_skips_expired(self):
        """A browser does not see messages whose ttl has passed."""
        c = self.connect()
        s = c.create_sender("browse.ttl")
        s.send(Message(body="stale", ttl=0.1))
        s.send(Message(body="fresh"))
        time.sleep(0.3)
        b = receiver(c, "browse.ttl", 10, options=Copy(), name="browser")
        m, d = take(c, b)
        self.assertEqual(m.body, "fresh")
        quiet(c)
        self.assertEqual(b.fetcher.has_message, 0)

    def test_browser_does_not_block_consumers(self):
        """Copies held unsettled by a browser do not keep the messages from
        consumers."""
        self.put("browse.hold", "x", "y")
        c = self.connect()
        b = receiver(c, "browse.hold", 10, options=Copy(), name="browser")
        take(c, b)
        take(c, b)
        r = receiver(c, "browse.hold", 10, name="consumer")
        got = []
        for _ in range(2):
            m, d = take(c, r)
            got.append(m.body)
            accept(d)
        self.assertEqual(got, ["x", "y"])


if __name__ == "__main__":
    hadron_test.main()
