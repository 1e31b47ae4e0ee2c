"""Dead letters (rejected and poison messages) and message expiry (header
ttl, absolute-expiry-time, expiry-address)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import unittest

from proton import Condition, Delivery, Message, symbol
from proton.utils import BlockingConnection

import hadron_test
from hadron_test import Broker, WAIT, passed, receiver, sync, take


class DeadLetterBase(unittest.TestCase):
    """One broker per test: each test looks at the shared DLQ or the log."""

    broker_conf = {}

    def setUp(self):
        self.broker = Broker(name="dlq", **self.broker_conf)
        self.addCleanup(self.broker.kill)  # also when start-up fails
        self.broker.start()
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            try:
                c.close()
            except Exception:
                pass
        if passed(self):
            self.broker.stop()
            self.broker.cleanup()
        else:
            self.broker.kill()
            sys.stderr.write("---- hadrond log (%s) ----\n%s\n" % (self.broker.log_path,
                                                                   self.broker.log()))

    def connect(self):
        c = BlockingConnection(self.broker.url(), timeout=WAIT)
        self.conns.append(c)
        return c

    def put(self, address, *messages):
        c = self.connect()
        s = c.create_sender(address, name="put-%s" % address)
        for m in messages:
            self.assertEqual(s.send(m).remote_state, Delivery.ACCEPTED)
        s.close()

    def get(self, address, timeout=WAIT):
        """Consume (accept) the next message of address."""
        c = self.connect()
        r = receiver(c, address, 1)
        m, d = take(c, r, timeout=timeout)
        d.update(Delivery.ACCEPTED)
        d.settle()
        r.close()
        return m

    def assertNext(self, address, body):
        """The next message of address is `body` (a marker sent just now
        proves that nothing else was waiting before it)."""
        self.put(address, Message(body="marker"))
        self.assertEqual(self.get(address).body, body)

    def assertEmpty(self, address):
        self.put(address, Message(body="marker"))
        self.assertEqual(self.get(address).body, "marker")

    def fail_deliveries(self, address, times):
        """Receive the message `times` times, answering modified with
        delivery-failed; returns the delivery-counts seen."""
        c = self.connect()
        r = receiver(c, address, 0)
        seen = []
        for _ in range(times):
            r.link.flow(1)
            m, d = take(c, r)
            seen.append(m.delivery_count)
            d.local.failed = True
            d.update(Delivery.MODIFIED)
            d.settle()
        r.close()
        return seen


class PoisonTest(DeadLetterBase):
    broker_conf = dict(config="""
        [queue three]
        max-deliveries = 3
        dead-letter-address = three.dead
        """)

    def test_default_max_deliveries(self):
        """With the default max-deliveries (10), a message that failed ten
        times moves to DLQ annotated with the reason, a description and
        where it came from; it starts there afresh (delivery-count 0)."""
        self.put("poison", Message(body="p", id="poison-1", properties={"k": "v"}))
        self.assertEqual(self.fail_deliveries("poison", 10), list(range(10)))
        self.assertEmpty("poison")
        dead = self.get("DLQ")
        self.assertEqual((dead.body, dead.id, dead.properties), ("p", "poison-1", {"k": "v"}))
        self.assertEqual(dead.annotations["x-opt-dead-letter-reason"], "max-deliveries")
        self.assertEqual(dead.annotations["x-opt-original-address"], "poison")
        self.assertIn("10", dead.annotations.get("x-opt-dead-letter-description", ""))
        self.assertEqual(dead.delivery_count, 0)
        self.assertTrue(dead.first_acquirer)

    def test_nine_failures_not_yet_dead(self):
        """Nine failures are not enough: the message is still in its queue."""
        self.put("almost", Message(body="a"))
        self.fail_deliveries("almost", 9)
        m = self.get("almost")
        self.assertEqual((m.body, m.delivery_count), ("a", 9))

    def test_released_is_not_a_failure(self):
        """Releasing does not count toward max-deliveries: after more
        releases than max-deliveries the message is still in its queue."""
        self.put("three", Message(body="patient"))
        c = self.connect()
        r = receiver(c, "three", 0)
        for _ in range(5):
            r.link.flow(1)
            m, d = take(c, r)
            self.assertEqual(m.delivery_count, 0)
            d.update(Delivery.RELEASED)
            d.settle()
        r.close()
        self.assertEqual(self.get("three").body, "patient")
        self.assertEmpty("three.dead")

    def test_max_deliveries_with_modified_annotations(self):
        """A message dead-lettered for max-deliveries carries the annotations
        consumers added with modified, next to the dead-letter ones."""
        self.put("three", Message(body="annotated"))
        c = self.connect()
        r = receiver(c, "three", 0)
        for i in range(3):
            r.link.flow(1)
            m, d = take(c, r)
            d.local.failed = True
            d.local.annotations = {symbol("x-opt-attempt"): i}
            d.update(Delivery.MODIFIED)
            d.settle()
        r.close()
        dead = self.get("three.dead")
        self.assertEqual(dead.annotations["x-opt-attempt"], 2)
        self.assertEqual(dead.annotations["x-opt-dead-letter-reason"], "max-deliveries")

    def test_configured_max_deliveries_by_detach(self):
        """max-deliveries = 3 on a node: a consumer detaching with the
        message unsettled counts as a failure; after the third the message
        is in the node's dead-letter address, not in DLQ."""
        self.put("three", Message(body="crashy"))
        for attempt in range(3):
            c = self.connect()
            r = receiver(c, "three", 1, name="attempt-%d" % attempt)
            m, d = take(c, r)
            self.assertEqual((m.body, m.delivery_count), ("crashy", attempt))
            r.close()
        dead = self.get("three.dead")
        self.assertEqual(dead.body, "crashy")
        self.assertEqual(dead.annotations["x-opt-dead-letter-reason"], "max-deliveries")
        self.assertEqual(dead.annotations["x-opt-original-address"], "three")
        self.assertEmpty("three")
        self.assertEmpty("DLQ")

    def test_rejected_with_condition(self):
        """A message rejected with an error condition moves to DLQ with
        reason "rejected", description "<condition>: <description>" and
        the original address; its bare message and its own annotations are
        unchanged."""
        original = Message(body={"order": 17}, id="r-1", subject="subj", content_type="text/x",
                           correlation_id="corr", reply_to="back", user_id=b"anonymous",
                           properties={"a": 1, "b": "two"}, durable=True, priority=7,
                           annotations={symbol("x-opt-mine"): "kept"})
        self.put("rejq", original)
        c = self.connect()
        r = receiver(c, "rejq", 1)
        m, d = take(c, r)
        d.local.condition = Condition("app:invalid-order", "field 'qty' missing")
        d.update(Delivery.REJECTED)
        d.settle()
        sync(c)
        dead = self.get("DLQ")
        self.assertEqual(dead.annotations["x-opt-dead-letter-reason"], "rejected")
        self.assertEqual(dead.annotations["x-opt-dead-letter-description"],
                         "app:invalid-order: field 'qty' missing")
        self.assertEqual(dead.annotations["x-opt-original-address"], "rejq")
        self.assertEqual(dead.annotations["x-opt-mine"], "kept")
        for field in ("body", "id", "subject", "content_type", "correlation_id", "reply_to",
                      "user_id", "properties", "durable", "priority"):
            self.assertEqual(getattr(dead, field), getattr(original, field), field)
        self.assertEmpty("rejq")


class NodeDeadLetterTest(DeadLetterBase):
    broker_conf = dict(broker="dead-letter-address = global.dead\n", config="""
        [queue own]
        dead-letter-address = own.dead
        """)

    def reject_one(self, address):
        c = self.connect()
        r = receiver(c, address, 1)
        m, d = take(c, r)
        d.update(Delivery.REJECTED)
        d.settle()
        sync(c)
        return m

    def test_per_node_dead_letter_address(self):
        """A node's own dead-letter-address wins over [broker]'s; other
        queues use the [broker] one."""
        self.put("own", Message(body="mine"))
        self.reject_one("own")
        self.put("other", Message(body="theirs"))
        self.reject_one("other")
        self.assertEqual(self.get("own.dead").body, "mine")
        self.assertEqual(self.get("global.dead").body, "theirs")
        self.assertEmpty("own.dead")
        self.assertEmpty("global.dead")
        self.assertEmpty("DLQ")

    def test_dead_letter_copy_does_not_expire(self):
        """A dead-lettered message loses its expiry: it stays in the
        dead-letter queue after its ttl has passed."""
        c = self.connect()
        # Waiting with credit: the message is handed over on arrival, so
        # its short ttl cannot run out before the consumer rejects it.
        r = receiver(c, "own", 1)
        sync(c)
        self.put("own", Message(body="short-lived", ttl=0.3))
        m, d = take(c, r)
        self.assertEqual(m.body, "short-lived")
        d.update(Delivery.REJECTED)
        d.settle()
        sync(c)
        time.sleep(0.6)
        self.assertEqual(self.get("own.dead").body, "short-lived")


class NoDeadLetterTest(DeadLetterBase):
    broker_conf = dict(broker="dead-letter-address =\nmax-deliveries = 2\n")

    def test_rejected_dropped_with_warning(self):
        """With no dead-letter address a rejected message is dropped and
        counted in a warning line; it is not redelivered."""
        self.put("nodla", Message(body="doomed"), Message(body="next"))
        c = self.connect()
        r = receiver(c, "nodla", 1)
        m, d = take(c, r)
        self.assertEqual(m.body, "doomed")
        d.update(Delivery.REJECTED)
        d.settle()
        sync(c)
        self.broker.wait_log(r"queue 'nodla', 1 messages discarded", timeout=5)
        self.assertNext("nodla", "next")
        self.assertEmpty("DLQ")

    def test_poison_dropped_with_warning(self):
        """With no dead-letter address a message over max-deliveries is
        dropped and counted in a warning line."""
        self.put("nodla.poison", Message(body="doomed"))
        self.assertEqual(self.fail_deliveries("nodla.poison", 2), [0, 1])
        self.broker.wait_log(r"queue 'nodla.poison', 1 messages discarded", timeout=5)
        self.assertEmpty("nodla.poison")


class ExpiryTest(DeadLetterBase):
    broker_conf = dict(config="""
        [queue exq]
        expiry-address = exq.expired
        """)

    def test_header_ttl_expires(self):
        """A message whose ttl passes while it waits is never delivered; it
        is dropped and counted in the log.  A message with a long ttl is
        delivered with its ttl in the header."""
        self.put("ttlq", Message(body="short", ttl=0.2), Message(body="long", ttl=60))
        self.broker.wait_log(
            r"queue 'ttlq', 1 expired messages dropped \(no expiry-address; 1 in all\)", timeout=5)
        m = self.get("ttlq")
        self.assertEqual(m.body, "long")
        self.assertAlmostEqual(m.ttl, 60, places=3)
        self.assertEmpty("ttlq")

    def test_expired_not_delivered_to_new_consumer(self):
        """A consumer attaching after the ttl has passed does not get the
        message, whether or not the periodic sweep has run yet."""
        self.put("ttl.attach", Message(body="stale", ttl=0.1), Message(body="fresh"))
        time.sleep(0.3)
        self.assertEqual(self.get("ttl.attach").body, "fresh")
        self.broker.wait_log(r"queue 'ttl.attach', 1 expired messages dropped", timeout=5)

    def test_released_message_expires(self):
        """A message released back to its queue still expires on time."""
        c = self.connect()
        # Waiting with credit: "brief" is handed over on arrival, before
        # its ttl can run out.
        r = receiver(c, "ttl.rel", 1)
        sync(c)
        self.put("ttl.rel", Message(body="brief", ttl=0.3), Message(body="stays"))
        m, d = take(c, r)
        self.assertEqual(m.body, "brief")
        d.update(Delivery.RELEASED)
        d.settle()
        r.close()
        time.sleep(0.6)
        self.assertEqual(self.get("ttl.rel").body, "stays")

    def test_topic_subscription_expiry(self):
        """Copies waiting in a topic subscription expire too."""
        c = self.connect()
        r = receiver(c, "topic.ttl", 0)
        c.create_sender("topic.ttl").send(Message(body="old news", ttl=0.1))
        time.sleep(0.3)
        c.create_sender("topic.ttl", name="second").send(Message(body="news"))
        r.link.flow(5)
        m, d = take(c, r)
        self.assertEqual(m.body, "news")

    def test_absolute_expiry_time(self):
        """properties.absolute-expiry-time is honoured like ttl."""
        self.put("abs", Message(body="abs-short", expiry_time=time.time() + 0.2),
               Message(body="abs-long", expiry_time=time.time() + 60))
        self.broker.wait_log(r"queue 'abs', 1 expired messages dropped", timeout=5)
        m = self.get("abs")
        self.assertEqual(m.body, "abs-long")
        self.assertEmpty("abs")

    def test_absolute_expiry_in_the_past(self):
        """A message that arrives already expired is never delivered."""
        self.put("abs.past", Message(body="late", expiry_time=time.time() - 60))
        self.assertEmpty("abs.past")

    def test_expiry_address(self):
        """With an expiry-address the expired message moves there, annotated
        with its original address and when it expired; nothing is counted as
        dropped."""
        before = time.time()
        self.put("exq", Message(body="moved", id="e-1", ttl=0.2, properties={"p": 1}))
        moved = self.get("exq.expired")
        after = time.time()
        self.assertEqual((moved.body, moved.id, moved.properties), ("moved", "e-1", {"p": 1}))
        self.assertEqual(moved.annotations["x-opt-original-address"], "exq")
        expired_at = moved.annotations["x-opt-expired-at"]
        # A timestamp: milliseconds since the epoch.
        self.assertTrue(before * 1000 <= float(expired_at) <= after * 1000 + 1000,
                        (before, expired_at, after))
        self.assertEmpty("exq")
        self.assertNotIn("queue 'exq', 1 expired messages dropped", self.broker.log())


if __name__ == "__main__":
    hadron_test.main()
