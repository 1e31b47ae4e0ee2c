"""Topics: every subscriber link gets its own copy of every message sent
after it attached, and nothing sent before; a subscription dies with its
link."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from proton import Delivery, Message

import hadron_test
from hadron_test import SharedBroker, WAIT, caps_of, receiver, sync, take

MARKER = Message(body="marker")


def take_all(conn, r, n):
    """The bodies of the next n messages (accepted).  Tests that must show
    that nothing else arrived send a "marker" last and expect it right after
    the others: a subscription is FIFO, so anything extra would come first."""
    bodies = []
    for _ in range(n):
        m, d = take(conn, r)
        bodies.append(m.body)
        d.update(Delivery.ACCEPTED)
        d.settle()
    return bodies


class TopicTest(SharedBroker):
    broker_args = dict(name="topic", config="""
        [topic news]
        [topic tiny]
        max-depth = 1
        """)

    def test_fan_out(self):
        """Three subscribers (on separate connections) each receive every
        message, in order."""
        subs = []
        for i in range(3):
            c = self.connect()
            subs.append((c, receiver(c, "topic.fan", 10, name="sub%d" % i)))
        p = self.connect()
        s = p.create_sender("topic.fan")
        for i in range(5):
            self.assertEqual(s.send(Message(body=i)).remote_state, Delivery.ACCEPTED)
        s.send(MARKER)
        for c, r in subs:
            self.assertEqual(take_all(c, r, 6), [0, 1, 2, 3, 4, "marker"])

    def test_subscribers_do_not_compete(self):
        """Subscribers on one connection with credit 1 each both get the
        same message: a topic copies, it does not share out."""
        c = self.connect()
        r1 = receiver(c, "topic.nocompete", 1, name="a")
        r2 = receiver(c, "topic.nocompete", 1, name="b")
        c.create_sender("topic.nocompete").send(Message(body="same"))
        self.assertEqual(take_all(c, r1, 1), ["same"])
        self.assertEqual(take_all(c, r2, 1), ["same"])

    def test_subscription_buffers_without_credit(self):
        """A subscriber with no credit does not hold up the others; its
        subscription keeps what arrived and delivers it once credit comes."""
        c = self.connect()
        fast = receiver(c, "topic.buffer", 10, name="fast")
        slow = receiver(c, "topic.buffer", 0, name="slow")
        s = c.create_sender("topic.buffer")
        for i in range(3):
            s.send(Message(body=i))
        s.send(MARKER)
        self.assertEqual(take_all(c, fast, 4), [0, 1, 2, "marker"])
        self.assertEqual(slow.fetcher.has_message, 0)
        slow.link.flow(10)
        self.assertEqual(take_all(c, slow, 4), [0, 1, 2, "marker"])

    def test_late_subscriber_misses_earlier_messages(self):
        """Messages sent before a subscriber attached never reach it; it
        gets those sent afterwards.  Sending with no subscriber is accepted."""
        c = self.connect()
        s = c.create_sender("topic.late")
        for body in ("before-1", "before-2"):
            self.assertEqual(s.send(Message(body=body)).remote_state, Delivery.ACCEPTED)
        r = receiver(c, "topic.late", 10)
        s.send(Message(body="after"))
        s.send(MARKER)
        self.assertEqual(take_all(c, r, 2), ["after", "marker"])

    def test_detached_subscription_is_gone(self):
        """After a subscriber detaches, messages sent meanwhile are not kept
        for it: attaching again (same link name) starts a fresh subscription.
        Its unsettled message does not go to the other subscriber."""
        c = self.connect()
        stay = receiver(c, "topic.gone", 10, name="stay")
        leave = receiver(c, "topic.gone", 10, name="leave")
        s = c.create_sender("topic.gone")
        s.send(Message(body="both"))
        m, d = take(c, leave)
        self.assertEqual(m.body, "both")
        leave.close()  # unsettled
        s.send(Message(body="while-away"))
        again = receiver(c, "topic.gone", 10, name="leave")
        s.send(Message(body="back"))
        s.send(MARKER)
        self.assertEqual(take_all(c, again, 2), ["back", "marker"])
        self.assertEqual(take_all(c, stay, 4), ["both", "while-away", "back", "marker"])

    def test_released_comes_back_to_same_subscriber(self):
        """A subscriber that releases a message gets it again from its own
        subscription; the other subscriber sees it once."""
        c = self.connect()
        r1 = receiver(c, "topic.release", 5, name="r1")
        r2 = receiver(c, "topic.release", 5, name="r2")
        s = c.create_sender("topic.release")
        s.send(Message(body="boomerang"))
        m, d = take(c, r1)
        d.update(Delivery.RELEASED)
        d.settle()
        m, d = take(c, r1)
        self.assertEqual(m.body, "boomerang")
        self.assertFalse(m.first_acquirer)
        d.update(Delivery.ACCEPTED)
        d.settle()
        s.send(MARKER)
        self.assertEqual(take_all(c, r1, 1), ["marker"])
        self.assertEqual(take_all(c, r2, 2), ["boomerang", "marker"])

    def test_rejected_by_subscriber_goes_to_dlq(self):
        """A subscriber that rejects its copy sends it to the dead-letter
        address, annotated with the topic's address; the other subscriber's
        copy is unaffected."""
        c = self.connect()
        rej = receiver(c, "topic.rej", 5, name="rejecter")
        ok = receiver(c, "topic.rej", 5, name="acceptor")
        c.create_sender("topic.rej").send(Message(body="contested"))
        m, d = take(c, rej)
        d.update(Delivery.REJECTED)
        d.settle()
        self.assertEqual(take_all(c, ok, 1), ["contested"])
        dlq = receiver(c, "DLQ", 1, name="dlq")
        m, d = take(c, dlq)
        self.assertEqual(m.body, "contested")
        self.assertEqual(m.annotations["x-opt-dead-letter-reason"], "rejected")
        self.assertEqual(m.annotations["x-opt-original-address"], "topic.rej")
        d.update(Delivery.ACCEPTED)
        d.settle()

    def test_drain_subscription(self):
        """Drain works on a subscription: queued copies come, the rest of
        the credit is returned."""
        c = self.connect()
        r = receiver(c, "topic.drain", 0)
        c.create_sender("topic.drain").send(Message(body="only"))
        r.link.drain(4)
        c.wait(lambda: r.fetcher.has_message >= 1 and not r.link.draining(), timeout=WAIT,
               msg="drain never completed")
        self.assertEqual(r.link.credit, 0)
        self.assertEqual(r.link.drained(), 3)
        self.assertEqual(take_all(c, r, 1), ["only"])

    def test_declared_topic_without_prefix(self):
        """[topic news] is a topic although its name has no "topic." prefix."""
        c = self.connect()
        r1 = receiver(c, "news", 5, name="n1")
        r2 = receiver(c, "news", 5, name="n2")
        self.assertEqual(caps_of(r1.link.remote_source), ["topic"])
        s = c.create_sender("news")
        self.assertEqual(caps_of(s.link.remote_target), ["topic"])
        s.send(Message(body="headline"))
        self.assertEqual(take_all(c, r1, 1), ["headline"])
        self.assertEqual(take_all(c, r2, 1), ["headline"])

    def test_prefix_topic_reply(self):
        """An address with the topic prefix is answered as a topic."""
        c = self.connect()
        r = receiver(c, "topic.reply", 1)
        self.assertEqual(caps_of(r.link.remote_source), ["topic"])

    def test_full_subscription_misses_message(self):
        """With max-depth 1 on a topic, a subscription that is full misses a
        message (counted in the log) while the others still get it and the
        producer's message is accepted."""
        c = self.connect()
        stalled = receiver(c, "tiny", 0, name="stalled")
        live = receiver(c, "tiny", 10, name="live")
        s = c.create_sender("tiny")
        for body in ("one", "two"):
            self.assertEqual(s.send(Message(body=body)).remote_state, Delivery.ACCEPTED)
            self.assertEqual(take_all(c, live, 1), [body])
            # The accept must be in before the next message: an unsettled
            # copy still takes room in the live subscription.
            sync(c)
        stalled.link.flow(10)
        self.assertEqual(take_all(c, stalled, 1), ["one"])
        sync(c)
        # Room again: the next message is the one after "two".
        s.send(Message(body="three"))
        self.assertEqual(take_all(c, stalled, 1), ["three"])
        self.assertEqual(take_all(c, live, 1), ["three"])
        self.broker.wait_log(r"queue 'tiny', 1 messages discarded", timeout=5)


if __name__ == "__main__":
    hadron_test.main()
