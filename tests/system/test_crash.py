"""Crash safety of the durable store: kill -9 at random moments loses nothing.

Twenty rounds on one data directory.  In each, two producers send durable
messages unsettled while a consumer (rcv-settle-mode second) accepts most of
what it gets and leaves the rest unsettled; the broker is killed with SIGKILL
at a random moment.  Afterwards one more broker drains the queue, and the
test checks the invariants of DESIGN.md:

  * every message whose producer saw `accepted` was either consumed (the
    consumer accepted it) or is still there (no loss);
  * a message whose consumption the broker confirmed never comes back;
  * no message is there twice;
  * a message seen before comes back with delivery-count raised and
    first-acquirer false.
"""

import os
import random
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, SLOW  # noqa: E402

from proton import Delivery, Link, Message  # noqa: E402
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import Container, LinkOption  # noqa: E402

ADDRESS = "crash.q"
ROUNDS = 20
PER_ROUND = 1500  # sends per round: a backlog the Python consumer can keep up with


class SecondMode(LinkOption):
    """Receiver settles after the broker: its settlement is our proof."""

    def apply(self, link):
        link.rcv_settle_mode = Link.RCV_SECOND


class Ledger:
    def __init__(self):
        self.confirmed = set()     # producer saw accepted
        self.consumed = set()      # broker confirmed the consumer's accept
        self.accepting = set()     # consumer sent accepted; the broker's answer may have been lost
        self.seen = {}             # id -> delivery-count the last time it arrived
        self.history = {}          # id -> [(round, delivery-count, first-acquirer)]
        self.round = 0
        self.violations = []


class Round(MessagingHandler):
    """One round of traffic against one broker process; stops on disconnect."""

    def __init__(self, url, ledger, first_id, rng, limit_s, body=256, per_round=PER_ROUND):
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.url, self.ledger, self.next_id, self.rng = url, ledger, first_id, rng
        self.body = "x" * body
        self.last_id = first_id + per_round
        self.limit_s = limit_s
        self.ids = {}      # outgoing delivery -> id
        self.taken = {}    # incoming delivery -> id (accepted, waiting for the broker)

    def on_start(self, event):
        c = event.container
        conn = c.connect(self.url, reconnect=False)
        self.senders = [c.create_sender(conn, ADDRESS, name="p%d" % i) for i in range(2)]
        self.receiver = c.create_receiver(conn, ADDRESS, name="c", options=SecondMode())
        self.receiver.flow(100)
        self.timer = c.schedule(self.limit_s, self)  # bound the round even if no kill lands

    def on_timer_task(self, event):
        event.container.stop()

    def on_sendable(self, event):
        s = event.sender
        while s.credit > 0 and self.next_id < self.last_id:
            i = self.next_id
            self.next_id += 1
            d = s.send(Message(id=i, body=self.body, durable=True))
            self.ids[d] = i

    def on_accepted(self, event):
        i = self.ids.pop(event.delivery, None)
        if i is not None:
            self.ledger.confirmed.add(i)

    def on_rejected(self, event):
        self.ids.pop(event.delivery, None)

    def on_message(self, event):
        d, m, led = event.delivery, event.message, self.ledger
        i = int(m.id)
        led.history.setdefault(i, []).append((led.round, m.delivery_count, m.first_acquirer))
        if i in led.consumed:
            led.violations.append("message %d came back after the broker confirmed its consumption" % i)
        if i in led.seen:
            if m.delivery_count <= led.seen[i]:
                led.violations.append("message %d redelivered with delivery-count %d (before: %d)"
                                      % (i, m.delivery_count, led.seen[i]))
            if m.first_acquirer:
                led.violations.append("message %d redelivered with first-acquirer true; history %s"
                                      % (i, led.history[i]))
        led.seen[i] = m.delivery_count
        if self.rng.random() < 0.8:
            d.update(Delivery.ACCEPTED)
            self.taken[d] = i
            led.accepting.add(i)
        # else: left unsettled, comes back when the link goes away
        self.receiver.flow(1)

    def on_settled(self, event):
        i = self.taken.pop(event.delivery, None)
        if i is not None:
            self.ledger.consumed.add(i)
            event.delivery.settle()

    def on_transport_error(self, event):
        event.container.stop()

    def on_disconnected(self, event):
        event.container.stop()


class Drain(MessagingHandler):
    """Take everything left; stop once nothing has arrived for a while."""

    def __init__(self, url):
        super().__init__(prefetch=500, auto_accept=True)
        self.url, self.got, self.last = url, [], time.time()

    def on_start(self, event):
        c = event.container
        c.create_receiver(c.connect(self.url, reconnect=False), ADDRESS, name="drain")
        c.schedule(0.5, self)

    def on_timer_task(self, event):
        if time.time() - self.last > 2 * SLOW:
            event.container.stop()
        else:
            event.container.schedule(0.5, self)

    def on_message(self, event):
        m = event.message
        self.got.append((int(m.id), m.delivery_count, m.first_acquirer))
        self.last = time.time()


class CrashTest(unittest.TestCase):
    def test_kill_at_random_moments_loses_nothing(self):
        """20 SIGKILLs mid-traffic: no acknowledged message lost, none duplicated."""
        self.rounds("crash", "max-deliveries = 0\n")

    def test_kill_with_a_tiny_log(self):
        """The same with a 64 KiB store log: kills land while the log
        wraps, while it is moved into LMDB (checkpoints every few commits),
        and while commits too large for it go to LMDB directly."""
        self.rounds("crash-log", "max-deliveries = 0\nstore-log-size = 64K\n")

    def test_kill_while_paging(self):
        """The same with 2 KiB bodies and queue-memory = 1M: most of the
        backlog is only on disk, so kills land while messages are written
        to LMDB and read back from it, and redelivery marks cover messages
        that were read back.  (3,000 sends a round, 6 MB; the backlog grows
        from round to round, to between 3,000 and 18,000 messages.)"""
        self.rounds("crash-paging", "max-deliveries = 0\nqueue-memory = 1M\n", body=2048, per_round=3000)

    def rounds(self, name, conf, body=256, per_round=PER_ROUND):
        seed = int(os.environ.get("HADRON_CRASH_SEED") or random.randrange(1 << 30))
        rng = random.Random(seed)
        broker = Broker(name=name, broker=conf)
        ledger = Ledger()
        next_id = 1
        for rnd in range(ROUNDS):
            ledger.round = rnd
            broker.start()
            delay = rng.uniform(0.2, 1.2) * SLOW
            killer = threading.Timer(delay, lambda p=broker.pid: os.kill(p, signal.SIGKILL))
            killer.start()
            handler = Round(broker.url(), ledger, next_id, rng, limit_s=10 * SLOW, body=body,
                            per_round=per_round)
            Container(handler).run()
            killer.join()
            broker.kill()
            next_id = handler.next_id
            self.assertEqual([], ledger.violations, "round %d (seed %d)" % (rnd, seed))

        broker.start()
        drain = Drain(broker.url())
        Container(drain).run()
        broker.stop()

        left = [g[0] for g in drain.got]
        dup = sorted({i for i in left if left.count(i) > 1})
        self.assertEqual([], dup, "messages present twice (seed %d)" % seed)
        back = sorted(set(left) & ledger.consumed)
        self.assertEqual([], back, "consumed messages came back (seed %d)" % seed)
        # A message the consumer accepted without hearing back may have been
        # consumed (then it is gone) or not (then it is still there).
        lost = sorted(ledger.confirmed - ledger.consumed - ledger.accepting - set(left))
        self.assertEqual([], lost, "acknowledged messages lost (seed %d)" % seed)
        for i, count, first in drain.got:
            if i in ledger.seen:
                self.assertGreater(count, ledger.seen[i], "message %d: delivery-count not raised" % i)
                self.assertFalse(first, "message %d: first-acquirer after a delivery" % i)
        # The test must have exercised something.
        self.assertGreater(len(ledger.confirmed), 100)
        self.assertGreater(len(ledger.consumed), 50)
        sys.stderr.write("crash test: seed %d, %d confirmed sends, %d confirmed consumes, %d left\n"
                         % (seed, len(ledger.confirmed), len(ledger.consumed), len(left)))


if __name__ == "__main__":
    hadron_test.main()
