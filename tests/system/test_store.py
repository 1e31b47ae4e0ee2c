"""Durability and recovery of the store (issue 3) in a real hadrond.

Most tests restart a broker on the same data-dir: after SIGKILL (nothing
flushed, nothing cleaned up) or after SIGTERM, and check what came back:
durable messages to durable queues, in order and intact; nothing else.
`hadron-store info` (read-only, safe next to a running broker) is the
window into what the broker has committed.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import AcceptAndGo, Broker, SecondMode, SLOW, run_hadrond  # noqa: E402

from proton import Delivery, Endpoint, Message, Timeout, symbol  # noqa: E402
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import Container, Copy  # noqa: E402
from proton.utils import BlockingConnection, LinkDetached, SendException  # noqa: E402

STORE_TOOL = os.environ.get("HADRON_STORE_TOOL",
                            os.path.join(os.path.dirname(hadron_test.HADROND), "hadron-store"))
KIB4 = 4096


def connect(url):
    return BlockingConnection(url, timeout=10 * SLOW)


def store_tool(*args):
    p = subprocess.run([STORE_TOOL] + list(args), capture_output=True, text=True, timeout=30 * SLOW)
    return p.returncode, p.stdout, p.stderr


def stored_count(data_dir, address):
    """Messages the store holds for `address` (None: no such queue in the store)."""
    code, out, err = store_tool("-d", data_dir, "info")
    if code != 0:
        raise AssertionError("hadron-store info failed (%d): %s%s" % (code, out, err))
    m = re.search(r"^queue '%s' \(id \d+\): (\d+) messages" % re.escape(address), out, re.M)
    return int(m.group(1)) if m else None


def wait_stored(data_dir, address, count, timeout=10, conn=None):
    """Wait until the store has committed exactly `count` messages for
    `address`.  conn: a BlockingConnection whose pending frames (settlements)
    must go out meanwhile."""
    deadline = time.time() + timeout * SLOW
    while True:
        got = stored_count(data_dir, address)
        if got == count:
            return
        if time.time() > deadline:
            raise AssertionError("store holds %s messages for %r, expected %d" % (got, address, count))
        if conn:
            try:
                conn.wait(lambda: False, timeout=0.05)
            except Timeout:
                pass
        else:
            time.sleep(0.05)


def send_blocking(url, address, messages):
    """Send unsettled; each send() returns once the broker has settled it."""
    c = connect(url)
    s = c.create_sender(address)
    for m in messages:
        s.send(m)
    c.close()


def receive_all(url, address, credit=100, idle=1.0, accept=True):
    """Take every message there is (accepting it); stop after `idle` s of silence."""
    c = connect(url)
    r = c.create_receiver(address, credit=credit)
    got = []
    while True:
        try:
            m = r.receive(timeout=idle * SLOW)
        except Timeout:
            break
        got.append(m)
        if accept:
            r.accept()
    c.close()
    return got


def restarted(b, **kw):
    """A second Broker object on b's data-dir (another config is possible)."""
    return Broker(data_dir=b.data_dir, name="store-again", **kw)


def shared_data_dir(test):
    """A data-dir that outlives the Broker objects of one test (a Broker
    that stops cleanly removes its own directory)."""
    d = tempfile.mkdtemp(prefix="hadron-store-data-")
    test.addCleanup(shutil.rmtree, d, True)
    return os.path.join(d, "data")


class Client(MessagingHandler):
    """Stops its container when the connection ends, however it ends (proton
    ignores a close with amqp:connection:forced, hoping to reconnect)."""

    remote_condition = None

    def on_connection_remote_close(self, event):
        self.remote_condition = event.connection.remote_condition
        if not event.connection.state & Endpoint.LOCAL_CLOSED:
            event.connection.close()  # the broker waits for our close (drain)

    def on_connection_closed(self, event):
        event.container.stop()

    def on_transport_closed(self, event):
        event.container.stop()

    def on_transport_error(self, event):
        event.container.stop()

    def on_disconnected(self, event):
        event.container.stop()


class Producer(Client):
    """Send messages unsettled as fast as credit allows; record the outcomes.

    hook(self) runs after every outcome (the tests kill or signal the broker
    from it).  Stops when every message is settled, on disconnect, or after
    limit_s."""

    def __init__(self, url, address, messages, hook=None, limit_s=30):
        super().__init__(prefetch=0)
        self.url, self.address, self.messages = url, address, messages
        self.hook, self.limit_s = hook, limit_s
        self.next = 0
        self.ids = {}            # delivery -> message id
        self.accepted, self.rejected = [], []
        self.conn = None

    @property
    def unsettled(self):
        return sorted(self.ids.values())

    def on_start(self, event):
        c = event.container
        self.conn = c.connect(self.url, reconnect=False)
        c.create_sender(self.conn, self.address)
        c.schedule(self.limit_s * SLOW, self)

    def on_timer_task(self, event):
        event.container.stop()

    def on_sendable(self, event):
        s = event.sender
        while s.credit > 0 and self.next < len(self.messages):
            m = self.messages[self.next]
            self.next += 1
            self.ids[s.send(m)] = m.id

    def _outcome(self, event, into):
        i = self.ids.pop(event.delivery, None)
        if i is not None:
            into.append(i if into is self.accepted else (i, event.delivery.remote.condition))
        if self.hook:
            self.hook(self)
        if self.next == len(self.messages) and not self.ids and self.conn:
            self.conn.close()

    def on_accepted(self, event):
        self._outcome(event, self.accepted)

    def on_rejected(self, event):
        self._outcome(event, self.rejected)


class Consumer(Client):
    """Receive and accept until `expect` messages arrived (then close
    cleanly, so that the accepts reach the broker) or `idle_s` passed
    without a message."""

    def __init__(self, url, address, expect=None, idle_s=1.5, credit=300, options=None):
        super().__init__(prefetch=credit, auto_accept=True)
        self.url, self.address, self.expect, self.idle_s = url, address, expect, idle_s
        self.options = options
        self.got = []
        self.last = time.time()
        self.closing = None

    def on_start(self, event):
        c = event.container
        self.conn = c.connect(self.url, reconnect=False)
        c.create_receiver(self.conn, self.address, options=self.options)
        c.schedule(0.5, self)

    def on_timer_task(self, event):
        if self.closing or time.time() - self.last > self.idle_s * SLOW:
            if self.closing and time.time() - self.closing > 5 * SLOW:
                event.container.stop()  # the broker never answered our close
                return
            self.close()
        event.container.schedule(0.5, self)

    def close(self):
        if not self.closing:
            self.closing = time.time()
            self.conn.close()

    def on_message(self, event):
        self.got.append(event.message)
        self.last = time.time()
        if self.expect is not None and len(self.got) >= self.expect:
            self.close()


def numbered(n, size=64, durable=True, start=0):
    """Messages with ids start.. and bodies that say who they are."""
    return [Message(id=i, durable=durable, body=(b"%08d" % i) * (size // 8)) for i in range(start, start + n)]


def check_bodies_4k(test, got):
    """Each of `got` has the 4 KiB body numbered() gave it."""
    for m in got:
        test.assertEqual((b"%08d" % m.id) * (KIB4 // 8), m.body, "message %s: body" % m.id)


def run(handler):
    Container(handler).run()
    return handler


class DurableTest(unittest.TestCase):
    def test_durable_messages_survive_kill(self):
        """Durable messages on a durable queue come back after SIGKILL, in
        order, with body, properties and header intact, as first deliveries."""
        sent = [
            Message(id=1, body="text", durable=True, subject="s1", properties={"k": 1, "s": "v"}),
            Message(id=2, body=b"\x00\x01\xff binary", durable=True, content_type="application/octet-stream"),
            Message(id=3, body={"map": [1, 2, 3], "n": None}, durable=True, priority=7,
                    correlation_id="corr-3", reply_to="replies", user_id=b"anonymous"),
            Message(id=4, body="x" * 100000, durable=True, annotations={symbol("x-opt-test"): "kept"}),
            Message(id=5, body="with ttl", durable=True, ttl=3600, group_id="g"),
        ]
        with Broker(name="store-kill") as b:
            send_blocking(b.url(), "dur.q", sent)
            b.kill()
            b.start()
            got = receive_all(b.url(), "dur.q")
        self.assertEqual([m.id for m in sent], [m.id for m in got])
        for s, g in zip(sent, got):
            for field in ("body", "subject", "properties", "content_type", "priority", "correlation_id",
                          "reply_to", "group_id", "durable", "annotations", "ttl"):
                self.assertEqual(getattr(s, field), getattr(g, field), "message %s: %s" % (s.id, field))
            self.assertEqual(0, g.delivery_count, "message %s was never delivered" % s.id)
            self.assertTrue(g.first_acquirer, "message %s was never delivered" % s.id)

    def test_accepted_means_committed(self):
        """When the producer hears `accepted` the message is already in the
        store: hadron-store (a separate reader) counts it at once."""
        with Broker(name="store-acked") as b:
            c = connect(b.url())
            s = c.create_sender("acked.q")
            for i in range(5):
                s.send(Message(id=i, body="m%d" % i, durable=True))
                self.assertEqual(i + 1, stored_count(b.data_dir, "acked.q"), "after send %d returned" % i)
            c.close()

    def test_every_accepted_message_survives_kill_mid_traffic(self):
        """SIGKILL while a producer is busy: every message the broker said
        `accepted` for is there afterwards, in order, none twice, none invented."""
        total = 4000
        with Broker(name="store-midkill") as b:
            pid = b.pid

            def kill_after_some(p):
                if len(p.accepted) >= 300 and b.proc:
                    os.kill(pid, signal.SIGKILL)
            prod = run(Producer(b.url(), "mid.q", numbered(total, 512), hook=kill_after_some))
            b.kill()
            self.assertGreaterEqual(len(prod.accepted), 300)
            self.assertLess(len(prod.accepted), total, "the kill landed after everything was sent")
            b.start()
            cons = run(Consumer(b.url(), "mid.q"))
        ids = [m.id for m in cons.got]
        self.assertEqual(sorted(set(ids)), ids, "out of order or duplicated")
        self.assertEqual([], sorted(set(prod.accepted) - set(ids)), "accepted messages lost")
        self.assertLessEqual(set(ids), set(range(total)))
        for m in cons.got:
            self.assertEqual((b"%08d" % m.id) * 64, m.body)

    def test_non_durable_messages_do_not_survive(self):
        """Messages sent with durable=false are gone after a restart (even a
        clean one); the durable ones sent between them are all there."""
        msgs = [Message(id=i, body="m%d" % i, durable=i % 2 == 0) for i in range(10)]
        with Broker(name="store-nondur") as b:
            send_blocking(b.url(), "mixed.q", msgs)
            b.stop()
            b.start()
            got = receive_all(b.url(), "mixed.q")
            self.assertEqual([0, 2, 4, 6, 8], [m.id for m in got])
            send_blocking(b.url(), "mixed.q", msgs)
            b.kill()
            b.start()
            got = receive_all(b.url(), "mixed.q")
        self.assertEqual([0, 2, 4, 6, 8], [m.id for m in got])

    def test_bursts_of_mixed_messages_keep_their_order(self):
        """One producer sends as fast as credit allows, unsettled, to two
        durable queues through an anonymous relay link: runs of durable
        messages (which the broker hands to its store in runs per queue)
        broken by non-durable ones and by messages to the other queue.
        Each queue gives them back in the order sent; after a kill, the
        durable ones only, still in order."""
        msgs = []
        for i in range(600):
            m = Message(id=i, body="m%d" % i, durable=(i // 7) % 3 != 2)
            m.address = "burst.a" if (i // 50) % 4 != 3 else "burst.b"
            msgs.append(m)
        want = {a: [m.id for m in msgs if m.address == a] for a in ("burst.a", "burst.b")}
        with Broker(name="store-burst") as b:
            prod = run(Producer(b.url(), None, msgs))
            self.assertEqual(list(range(600)), sorted(prod.accepted), b.log())
            for a in want:
                self.assertEqual(want[a], [m.id for m in receive_all(b.url(), a)], a)
            prod = run(Producer(b.url(), None, msgs))
            self.assertEqual(600, len(prod.accepted), b.log())
            b.kill()
            b.start()
            for a in want:
                durable = [m.id for m in msgs if m.address == a and m.durable]
                self.assertEqual(durable, [m.id for m in receive_all(b.url(), a)], a)

    def test_queue_durable_no_keeps_messages_in_memory(self):
        """[queue X] durable = no: even durable messages are gone after a
        restart, the queue is not in the store; other queues still are."""
        cfg = "[queue mem.q]\ndurable = no\n"
        with Broker(name="store-qnodur", config=cfg) as b:
            send_blocking(b.url(), "mem.q", numbered(5))
            send_blocking(b.url(), "disk.q", numbered(5))
            wait_stored(b.data_dir, "disk.q", 5)
            self.assertIsNone(stored_count(b.data_dir, "mem.q"))
            b.kill()
            b.start()
            self.assertEqual([], receive_all(b.url(), "mem.q"))
            self.assertEqual(list(range(5)), [m.id for m in receive_all(b.url(), "disk.q")])

    def test_broker_durable_no_keeps_messages_in_memory(self):
        """[broker] durable = no: no queue keeps anything across a restart."""
        with Broker(name="store-bnodur", broker="durable = no\n") as b:
            send_blocking(b.url(), "any.q", numbered(5))
            self.assertEqual(list(range(5)), [m.id for m in receive_all(b.url(), "any.q", accept=False)])
            b.kill()
            self.assertIsNone(stored_count(b.data_dir, "any.q"))
            b.start()
            self.assertEqual([], receive_all(b.url(), "any.q"))


class Holder(Client):
    """Consumer in rcv-settle-mode second: accepts the ids in `accept` and
    waits for the broker to settle them (the removal is committed), leaves
    the ids in `hold` unsettled; then calls on_ready (the test kills the
    broker there) and stops on the disconnect."""

    def __init__(self, url, address, accept, hold, on_ready, limit_s=20):
        super().__init__(prefetch=0, auto_accept=False, auto_settle=False)
        self.url, self.address, self.limit_s = url, address, limit_s
        self.to_accept, self.to_hold, self.on_ready = set(accept), set(hold), on_ready
        self.seen, self.confirmed, self.ids = [], set(), {}
        self.fired = False

    def on_start(self, event):
        c = event.container
        conn = c.connect(self.url, reconnect=False)
        self.receiver = c.create_receiver(conn, self.address, options=SecondMode())
        self.receiver.flow(len(self.to_accept) + len(self.to_hold))
        c.schedule(self.limit_s * SLOW, self)

    def on_timer_task(self, event):
        event.container.stop()

    def on_message(self, event):
        i = event.message.id
        self.seen.append(i)
        if i in self.to_accept:
            self.ids[event.delivery] = i
            event.delivery.update(Delivery.ACCEPTED)
        self._maybe_ready()

    def on_settled(self, event):
        i = self.ids.pop(event.delivery, None)
        if i is not None:
            self.confirmed.add(i)
            event.delivery.settle()
        self._maybe_ready()

    def _maybe_ready(self):
        if not self.fired and self.confirmed == self.to_accept and self.to_hold <= set(self.seen):
            self.fired = True
            self.on_ready()


class RedeliveryTest(unittest.TestCase):
    def test_unsettled_come_back_accepted_do_not(self):
        """After SIGKILL, messages a consumer held unsettled come back with
        delivery-count raised and first-acquirer false; the ones it accepted
        (once the store no longer counts them) do not come back."""
        with Broker(name="store-unsettled") as b:
            send_blocking(b.url(), "red.q", numbered(8))
            c = connect(b.url())
            r = c.create_receiver("red.q", credit=4)
            held = [r.receive(timeout=10 * SLOW) for _ in range(4)]
            self.assertEqual([0, 1, 2, 3], [m.id for m in held])
            self.assertTrue(all(m.first_acquirer and m.delivery_count == 0 for m in held))
            r.accept()  # settles 0
            r.accept()  # settles 1; 2 and 3 stay unsettled
            wait_stored(b.data_dir, "red.q", 6, conn=c)
            b.kill()
            b.start()
            got = receive_all(b.url(), "red.q")
        self.assertEqual([2, 3, 4, 5, 6, 7], [m.id for m in got])
        # 4..7 were never sent, but the delivery mark is reserved ahead, so
        # they may come back as redeliveries too: only 2 and 3 are asserted.
        for m in got[:2]:
            self.assertGreaterEqual(m.delivery_count, 1, "held message %s: delivery-count" % m.id)
            self.assertFalse(m.first_acquirer, "held message %s: first-acquirer" % m.id)

    def test_second_mode_confirmed_accept_never_comes_back(self):
        """rcv-settle-mode second: once the broker has settled our accept, a
        SIGKILL cannot bring the message back; held ones come back raised."""
        with Broker(name="store-second") as b:
            send_blocking(b.url(), "sec.q", numbered(8))
            pid = b.pid
            h = run(Holder(b.url(), "sec.q", accept={0, 1, 2}, hold={3, 4},
                           on_ready=lambda: os.kill(pid, signal.SIGKILL)))
            self.assertTrue(h.fired, "the broker never settled the accepts: seen %s, confirmed %s"
                            % (h.seen, sorted(h.confirmed)))
            b.kill()
            b.start()
            got = receive_all(b.url(), "sec.q")
        self.assertEqual([3, 4, 5, 6, 7], [m.id for m in got])
        for m in got[:2]:
            self.assertGreaterEqual(m.delivery_count, 1, "held message %s: delivery-count" % m.id)
            self.assertFalse(m.first_acquirer, "held message %s: first-acquirer" % m.id)



class NodesTest(unittest.TestCase):
    def test_auto_created_queue_comes_back(self):
        """A queue created on demand is recreated from the store at start-up:
        with auto-create = no it still exists (and holds its messages),
        while an unknown address is refused."""
        data = shared_data_dir(self)
        with Broker(name="store-auto", data_dir=data) as b:
            send_blocking(b.url(), "made.on.demand", numbered(3))
        with restarted(b, broker="auto-create = no\n") as again:
            c = connect(again.url())
            with self.assertRaises(LinkDetached) as cm:
                c.create_receiver("never.seen")
            self.assertIn("amqp:not-found", str(cm.exception))
            c.close()
            self.assertEqual([0, 1, 2], [m.id for m in receive_all(again.url(), "made.on.demand")])
            send_blocking(again.url(), "made.on.demand", numbered(1, start=3))
            self.assertEqual([3], [m.id for m in receive_all(again.url(), "made.on.demand")])

    def test_declared_queue_takes_config_settings(self):
        """A stored queue that the new config declares gets the config's
        settings (here max-depth), not the ones it was stored with."""
        data = shared_data_dir(self)
        with Broker(name="store-decl", data_dir=data, config="[queue decl.q]\nmax-depth = 100\n") as b:
            send_blocking(b.url(), "decl.q", numbered(3))
        with restarted(b, config="[queue decl.q]\nmax-depth = 4\n") as again:
            send_blocking(again.url(), "decl.q", numbered(1, start=3))
            c = connect(again.url())
            s = c.create_sender("decl.q")
            with self.assertRaises(SendException) as cm:
                s.send(Message(id=4, body="over", durable=True))
            c.close()
            self.assertEqual(Delivery.REJECTED, cm.exception.state)
            self.assertEqual([0, 1, 2, 3], [m.id for m in receive_all(again.url(), "decl.q")])

    def test_stored_queue_declared_as_topic_refuses_start(self):
        """A config that declares a stored queue's address as a topic stops
        start-up with exit 1 and a message naming the queue and the fix;
        the queue and its messages are untouched."""
        data = shared_data_dir(self)
        with Broker(name="store-topic", data_dir=data) as b:
            send_blocking(b.url(), "shape", numbered(2))
        bad = restarted(b, config="[topic shape]\n")
        code, out, err = run_hadrond(["-c", bad.conf])
        self.assertEqual(1, code, out + err)
        self.assertRegex(out + err, r"queue 'shape' with 2 messages.*declares it a topic")
        self.assertIn("[queue shape]", out + err)
        self.assertEqual(2, stored_count(b.data_dir, "shape"))
        with restarted(b) as again:
            self.assertEqual([0, 1], [m.id for m in receive_all(again.url(), "shape")])
        bad.cleanup()


class Burst(MessagingHandler):
    """Send `n` durable messages unsettled and close at once, without
    waiting for their outcomes (a script that sends and goes)."""

    def __init__(self, url, address, n):
        super().__init__()
        self.url, self.address, self.n = url, address, n

    def on_start(self, event):
        self.conn = event.container.connect(self.url, reconnect=False)
        event.container.create_sender(self.conn, self.address)

    def on_sendable(self, event):
        for _ in range(self.n):
            event.sender.send(Message(body="x" * 1000, durable=True))
        self.conn.close()


class StopAndFlushTest(unittest.TestCase):
    def test_producers_that_close_at_once_leave_nothing_behind(self):
        """160 connections, 4 at a time, each sends 50 durable messages and
        closes without waiting for outcomes.  The commit of a connection's
        messages often completes just as it closes, after its outcomes were
        handed to it but before it ran them; those outcomes (and with them
        the connection's own record) were left behind, 75 of 200
        connections in one run.  Under ASan the shutdown reports any leak;
        in every build, all 8,000 messages are stored.  Then 160
        consumers take 50 each, accept them in rcv-settle-mode second and
        close without waiting for the broker's settlements (which wait for
        the store): the same for those; all 8,000 are removed."""
        def four_at_a_time(client):
            def forty():
                for _ in range(40):
                    Container(client(url, "burst.q", 50)).run()
            threads = [threading.Thread(target=forty) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        with Broker(name="store-burst", config="[queue burst.q]\n") as b:
            url = b.url()
            four_at_a_time(Burst)
            wait_stored(b.data_dir, "burst.q", 8000)
            # The same for consumers whose accepts the broker settles once
            # their removal is committed (rcv-settle-mode second).
            four_at_a_time(AcceptAndGo)
            wait_stored(b.data_dir, "burst.q", 0)
            b.stop()  # exit status 0 and, under ASan, no leak report
            self.assertEqual(stored_count(b.data_dir, "burst.q"), 0)

    def test_sigterm_settles_pending_producer_messages(self):
        """SIGTERM while producers' durable messages wait for the store:
        the broker settles them before it closes the connection (no
        drain-timeout needed), exits 0, and after a restart exactly the
        messages the producer heard `accepted` for are there."""
        with Broker(name="store-term", broker="drain-timeout = 20s\n") as b:
            pid, at_signal = b.pid, []

            def term_at_first_outcome(p):
                if not at_signal:
                    at_signal.append(len(p.accepted))
                    os.kill(pid, signal.SIGTERM)
            # More than one credit window: transfers are still arriving while the broker drains.
            prod = run(Producer(b.url(), "term.q", numbered(3000, 1024), hook=term_at_first_outcome))
            b.stop()
            self.assertNotIn("drain-timeout passed", b.log())
            self.assertEqual([], prod.rejected)
            self.assertGreater(len(prod.accepted), at_signal[0], "nothing pending was settled")
            b.start()
            got = run(Consumer(b.url(), "term.q", expect=len(prod.accepted))).got
        ids = [m.id for m in got]
        self.assertEqual(sorted(set(ids)), ids, "out of order or duplicated")
        lost = sorted(set(prod.accepted) - set(ids))
        self.assertEqual([], lost, "%d accepted messages lost" % len(lost))
        unconfirmed = sorted(set(ids) - set(prod.accepted))
        self.assertEqual([], unconfirmed, "%d messages stored, but the producer never heard `accepted` (it "
                         "will send them again; %d sent, %d accepted, %d left unsettled at the close: %s)"
                         % (len(unconfirmed), prod.next, len(prod.accepted), len(prod.unsettled),
                            prod.remote_condition))

    def test_flush_interval_survives_process_crash(self):
        """store-flush = interval defers fsync only: a killed process loses
        nothing the broker accepted."""
        with Broker(name="store-interval", broker="store-flush = interval\nstore-flush-interval = 10s\n") as b:
            prod = run(Producer(b.url(), "int.q", numbered(500, 256)))
            self.assertEqual(500, len(prod.accepted))
            b.kill()
            b.start()
            got = run(Consumer(b.url(), "int.q", expect=500)).got
        self.assertEqual(list(range(500)), [m.id for m in got])



class SpaceTest(unittest.TestCase):
    check_bodies = check_bodies_4k

    def test_paging_keeps_order(self):
        """queue-memory = 1M with 6 MiB of durable messages: a consumer gets
        all of them in order, in the same run and after a restart (most of
        them read back from disk), and hadron-store info counts them."""
        n = 6 * 256  # 6 MiB of 4 KiB bodies
        with Broker(name="store-paging", broker="queue-memory = 1M\n") as b:
            prod = run(Producer(b.url(), "page.q", numbered(n, KIB4)))
            self.assertEqual((n, []), (len(prod.accepted), prod.rejected))
            got = run(Consumer(b.url(), "page.q", expect=n)).got
            self.assertEqual(list(range(n)), [m.id for m in got])
            self.check_bodies(got)

            prod = run(Producer(b.url(), "page.q", numbered(n, KIB4, start=n)))
            self.assertEqual((n, []), (len(prod.accepted), prod.rejected))
            b.stop()
            self.assertEqual(n, stored_count(b.data_dir, "page.q"))
            b.start()
            m = re.search(r"queue 'page.q', recovered (\d+) messages \((\d+) in memory, (\d+) on disk\)", b.log())
            self.assertIsNotNone(m, "no recovery line")
            self.assertEqual(n, int(m.group(1)))
            self.assertGreater(int(m.group(3)), 0, "queue-memory = 1M, yet all 6 MiB were loaded")
            got = run(Consumer(b.url(), "page.q", expect=n)).got
            self.assertEqual(list(range(n, 2 * n)), [m.id for m in got])
            self.check_bodies(got)
            self.assertEqual([], receive_all(b.url(), "page.q", idle=0.5))

    def test_paging_non_durable_in_one_run(self):
        """Non-durable messages on a durable queue page to disk too when the
        queue outgrows queue-memory, and all come back to a consumer in
        order in the same run (they are only dropped by a restart)."""
        n = 6 * 256
        with Broker(name="store-paging-nd", broker="queue-memory = 1M\n") as b:
            prod = run(Producer(b.url(), "page.nd", numbered(n, KIB4, durable=False)))
            self.assertEqual((n, []), (len(prod.accepted), prod.rejected))
            self.assertGreater(stored_count(b.data_dir, "page.nd"), 0, "nothing was paged to disk")
            got = run(Consumer(b.url(), "page.nd", expect=n)).got
            self.assertEqual(list(range(n)), [m.id for m in got])
            self.check_bodies(got)

    def test_browser_sees_paged_messages(self):
        """A browser of a queue that outgrew queue-memory sees every message,
        the ones on disk too, once each and in order, and they all stay for
        a consumer; the same after a restart, when most start on disk."""
        n = 6 * 256
        with Broker(name="store-paging-browse", broker="queue-memory = 1M\n") as b:
            prod = run(Producer(b.url(), "page.browse", numbered(n, KIB4)))
            self.assertEqual((n, []), (len(prod.accepted), prod.rejected))
            for when in ("same run", "after restart"):
                seen = run(Consumer(b.url(), "page.browse", expect=n, options=Copy())).got
                self.assertEqual(list(range(n)), [m.id for m in seen], when)
                self.check_bodies(seen)
                seen = run(Consumer(b.url(), "page.browse", expect=n + 1, idle_s=1, options=Copy())).got
                self.assertEqual(n, len(seen), "%s: a browser saw more than the queue holds" % when)
                if when == "same run":
                    b.stop()
                    b.start()
                    m = re.search(r"queue 'page.browse', recovered \d+ messages \(\d+ in memory, (\d+) on disk\)",
                                  b.log())
                    self.assertIsNotNone(m, "no recovery line")
                    self.assertGreater(int(m.group(1)), 0, "queue-memory = 1M, yet all were loaded")
            got = run(Consumer(b.url(), "page.browse", expect=n)).got
            self.assertEqual(list(range(n)), [m.id for m in got])
            self.check_bodies(got)

    def test_browser_hears_of_messages_that_go_to_disk(self):
        """A browser waiting with credit on a paged queue gets a message that
        arrives later and goes straight to disk.  (8 MiB: reading back for
        the browser brings at most 4 MiB into memory, so the queue stays
        paged.)"""
        n = 8 * 256
        with Broker(name="store-paging-browse-wait", broker="queue-memory = 1M\n") as b:
            prod = run(Producer(b.url(), "page.wait", numbered(n, KIB4)))
            self.assertEqual((n, []), (len(prod.accepted), prod.rejected))
            conn = connect(b.url())
            try:
                br = conn.create_receiver("page.wait", credit=n + 10, options=Copy())
                # Copies are left unsettled, and the browser says nothing more
                # after quiet(): only the broker's own wake can bring the next.
                for i in range(n):
                    self.assertEqual(i, br.receive(timeout=10 * SLOW).id)
                hadron_test.quiet(conn)  # its last credit goes out and is used up
                prod = run(Producer(b.url(), "page.wait", numbered(1, KIB4, start=n)))
                self.assertEqual(1, len(prod.accepted))
                self.assertEqual(n, br.receive(timeout=5 * SLOW).id)
            finally:
                conn.close()

    def test_consumer_hears_of_messages_that_go_to_disk(self):
        """While memory is over queue-memory (here: another queue's messages,
        delivered and not yet settled), new messages for a queue whose
        consumer is waiting go to disk as they arrive.  The consumer must
        still get them: nothing in memory announces them, so the broker has
        to wake it to read them back (it waited forever before)."""
        n = 2 * 256
        with Broker(name="store-paging-wait", broker="queue-memory = 1M\n") as b:
            prod = run(Producer(b.url(), "page.full", numbered(n, KIB4)))
            self.assertEqual((n, []), (len(prod.accepted), prod.rejected))
            hold = connect(b.url())
            conn = connect(b.url())
            try:
                # 2 MiB delivered and unsettled: memory stays over the budget.
                held = hold.create_receiver("page.full", credit=n)
                for i in range(n):
                    self.assertEqual(i, held.receive(timeout=10 * SLOW).id)
                rcv = conn.create_receiver("page.live", credit=200)
                for rnd in range(3):  # each round starts with the consumer waiting, credit left
                    hadron_test.quiet(conn)  # its credit and accepts at the broker, nothing to send
                    prod = run(Producer(b.url(), "page.live", numbered(50, KIB4, start=50 * rnd)))
                    self.assertEqual(50, len(prod.accepted))
                    for i in range(50 * rnd, 50 * rnd + 50):
                        m = rcv.receive(timeout=5 * SLOW)
                        self.assertEqual(i, m.id)
                        rcv.accept()
            finally:
                conn.close()
                hold.close()
            self.assertEqual(n, len(receive_all(b.url(), "page.full", idle=1.0)))

    def test_map_grows_when_full(self):
        """store-map-size = 1M with 5 MiB of messages: the map grows (logged),
        nothing is refused or lost, and the grown store opens again."""
        n = 5 * 256
        # A small log: its checkpoints are what fills LMDB's map here.
        with Broker(name="store-grow", broker="store-map-size = 1M\nstore-log-size = 1M\n") as b:
            prod = run(Producer(b.url(), "grow.q", numbered(n, KIB4)))
            self.assertEqual((n, []), (len(prod.accepted), prod.rejected))
            b.wait_log(r"store '[^']*', map grown to \d+ MiB")
            b.kill()
            b.start()
            got = run(Consumer(b.url(), "grow.q", expect=n)).got
            self.assertEqual(list(range(n)), [m.id for m in got])
            self.check_bodies(got)
            b.stop()
            code, out, err = store_tool("-d", b.data_dir, "check")
            self.assertEqual(0, code, out + err)


class LogTest(unittest.TestCase):
    """The store's log (hadron.conf(5), store-log-size) and its checkpoints."""

    def test_replay_after_kill_and_again_over_its_own_checkpoint(self):
        """Messages only in the log when hadrond is killed come back from
        the replay.  A checkpoint is several LMDB transactions (8 MiB each)
        and only its last moves log-lsn: a crash before that one leaves
        LMDB holding records that the same log then replays again.  Made
        here by hand: the store after a complete checkpoint, with log-lsn
        set back and the old log put back.  The replay must leave each
        message once, with the right count (a put over a record is an
        overwrite, a delete of a missing record nothing)."""
        mdb_dump, mdb_load = shutil.which("mdb_dump"), shutil.which("mdb_load")
        if not (mdb_dump and mdb_load):
            self.skipTest("needs mdb_dump and mdb_load: install lmdb-utils (Debian)")
        n = 20 * 256  # 20 MiB of 4 KiB bodies: a checkpoint of three transactions
        with Broker(name="store-replay") as b:
            send_blocking(b.url(), "log.q", numbered(n, KIB4))
            # Consume the first k: their deletes cancel their puts in the log.
            k = 1000
            c = connect(b.url())
            r = c.create_receiver("log.q", credit=k)
            for i in range(k):
                self.assertEqual(i, r.receive(timeout=10 * SLOW).id)
                r.accept()
            wait_stored(b.data_dir, "log.q", n - k, conn=c)
            c.close()
            b.kill()
            # hadron-store sees what only the log holds, and checks it.
            code, out, err = store_tool("-d", b.data_dir, "info")
            self.assertEqual(0, code, err)
            self.assertRegex(out, r"(?m)^log: \d+ commits \(\d+ operations\) not yet in LMDB; counted above$")
            self.assertIn("queue 'log.q' (id 1): %d messages" % (n - k), out)
            code, out, err = store_tool("-d", b.data_dir, "check")
            self.assertEqual(0, code, out + err)
            self.assertIn("its messages are checked too", out)
            self.assertIn("and %d messages: 0 problems" % (n - k), out)
            store = os.path.join(b.data_dir, "store")
            crashed = tempfile.mkdtemp(prefix="hadron-crashed-store-")
            self.addCleanup(shutil.rmtree, crashed, True)
            logs = [f for f in ("log", "log.1") if os.path.exists(os.path.join(store, f))]
            for f in logs:
                shutil.copy(os.path.join(store, f), crashed)
            old_lsn = self.meta(mdb_dump, store, "log-lsn")
            self.assertEqual("0" * 16, self.meta(mdb_dump, store, "log-file"))  # 20 MiB: file 0 only
            b.start()
            self.assertRegex(b.log(), r"replayed \d+ batches \(\d+ operations\) from its log")
            b.stop()
            self.assertNotEqual(old_lsn, self.meta(mdb_dump, store, "log-lsn"))
            # The checkpoint's records are in LMDB; now make it look unfinished.
            dump = subprocess.run([mdb_dump, "-a", store], capture_output=True, text=True, timeout=60)
            self.assertEqual(0, dump.returncode, dump.stderr)
            text = re.sub(r"(?m)^( %s)\n .*$" % "log-lsn".encode().hex(),
                          lambda m: m.group(1) + "\n " + old_lsn, dump.stdout)
            self.assertNotEqual(text, dump.stdout)
            shutil.rmtree(store)
            os.makedirs(store)
            load = subprocess.run([mdb_load, store], input=text, capture_output=True, text=True, timeout=60)
            self.assertEqual(0, load.returncode, load.stderr)
            for f in logs:
                shutil.copy(os.path.join(crashed, f), store)
            # Now LMDB has the log's surviving puts already: hadron-store
            # must count each message once.
            code, out, err = store_tool("-d", b.data_dir, "info")
            self.assertEqual(0, code, err)
            self.assertIn("queue 'log.q' (id 1): %d messages" % (n - k), out)
            self.assertRegex(out, r"(?m)^store .*, %d messages$" % (n - k))
            code, out, err = store_tool("-d", b.data_dir, "check")
            self.assertEqual(0, code, out + err)
            self.assertIn("and %d messages: 0 problems" % (n - k), out)
            b.start()
            self.assertRegex(b.log(), r"replayed \d+ batches")
            got = run(Consumer(b.url(), "log.q", expect=n - k, idle_s=3 * SLOW)).got
            self.assertEqual(list(range(k, n)), [m.id for m in got])
            self.check_bodies(got)
            b.stop()
            code, out, err = store_tool("-d", b.data_dir, "check")
            self.assertEqual(0, code, out + err)
            self.assertEqual(0, stored_count(b.data_dir, "log.q"))

    def test_messages_consumed_within_a_file_never_reach_lmdb(self):
        """The log's two files (store-log-size each): when the file being
        written fills, only what the other file's operations left goes to
        LMDB.  A queue whose backlog stays below a file's size has nothing
        there: however many times the files fill, no message is written to
        LMDB (the shutdown line counts them).  A backlog larger than a file
        has its older messages written there, and all come back in order."""
        conf = "store-log-size = 256K\n"
        data = shared_data_dir(self)
        for backlog, moved in ((48, False), (600, True)):
            with Broker(name="store-2files", data_dir=data, broker=conf) as b:
                c = connect(b.url())
                s = c.create_sender("two.q")
                r = c.create_receiver("two.q", credit=10)
                n = 1200
                for i in range(backlog):
                    s.send(numbered(1, size=1024, start=i)[0])
                got = []
                for i in range(backlog, n + backlog):
                    s.send(numbered(1, size=1024, start=i)[0])
                    got.append(r.receive(timeout=10 * SLOW).id)
                    r.accept()
                while len(got) < n + backlog:
                    got.append(r.receive(timeout=10 * SLOW).id)
                    r.accept()
                self.assertEqual(list(range(n + backlog)), got)
                c.close()
                b.stop()
                m = re.search(r"closed: .* (\d+) checkpoints \((\d+) of a full log file; (\d+) messages moved to LMDB\)",
                              b.log())
                self.assertTrue(m, b.log())
                # 1,200 puts of 1 KiB and their deletes: about 1.3 MiB of log.
                self.assertGreaterEqual(int(m.group(2)), 3, m.group(0))
                if moved:
                    self.assertGreater(int(m.group(3)), 0, m.group(0))
                else:
                    self.assertEqual(0, int(m.group(3)), m.group(0))
            code, out, err = store_tool("-d", data, "check")
            self.assertEqual(0, code, out + err)

    def test_each_run_starts_its_lsns_above_what_the_files_can_hold(self):
        """A run's first batch carries an LSN above every batch its log
        files could hold since LMDB's log-lsn (one per 24 bytes at most),
        after a kill and after a clean stop alike: batches a crashed run
        left past the first one it lost (store-flush = interval) can then
        never be read as this run's.  LMDB's log-lsn moves there before
        the run's first batch."""
        mdb_dump = shutil.which("mdb_dump")
        if not mdb_dump:
            self.skipTest("needs mdb_dump: install lmdb-utils (Debian)")
        with Broker(name="store-lsn", broker="store-flush = interval\n") as b:
            store = os.path.join(b.data_dir, "store")
            for stop in (b.kill, b.stop):
                send_blocking(b.url(), "lsn.q", numbered(50, KIB4))
                stop()
                before = int(self.meta(mdb_dump, store, "log-lsn"), 16)
                room = sum(os.path.getsize(os.path.join(store, f)) for f in ("log", "log.1")
                           if os.path.exists(os.path.join(store, f)))
                self.assertGreater(room, 0)
                b.start()
                send_blocking(b.url(), "lsn.q", numbered(1, KIB4, start=1000))
                after = int(self.meta(mdb_dump, store, "log-lsn"), 16)
                self.assertGreater(after, before + room // 24, "%s: log-lsn %d -> %d, files %d bytes"
                                   % (stop.__name__, before, after, room))
            got = run(Consumer(b.url(), "lsn.q", expect=102, idle_s=3 * SLOW)).got
            self.assertEqual(102, len(got))

    check_bodies = check_bodies_4k

    @staticmethod
    def meta(mdb_dump, store, key):
        """A meta record's value as mdb_dump prints it (hex)."""
        p = subprocess.run([mdb_dump, "-s", "meta", store], capture_output=True, text=True, timeout=30)
        m = re.search(r"(?m)^ %s\n (.*)$" % key.encode().hex(), p.stdout)
        if not m:
            raise AssertionError("no %s in the store's meta: %s%s" % (key, p.stdout, p.stderr))
        return m.group(1)


class DeadLetterTest(unittest.TestCase):
    def test_dead_letters_survive_restart(self):
        """Rejected durable messages are in the DLQ after SIGKILL and a
        restart (annotated), and gone from their source queue."""
        with Broker(name="store-dlq") as b:
            send_blocking(b.url(), "dl.src", numbered(4))
            c = connect(b.url())
            r = c.create_receiver("dl.src", credit=2)
            for expected in (0, 1):
                self.assertEqual(expected, r.receive(timeout=10 * SLOW).id)
                r.reject()
            wait_stored(b.data_dir, "dl.src", 2, conn=c)
            wait_stored(b.data_dir, "DLQ", 2, conn=c)
            b.kill()
            b.start()
            dead = receive_all(b.url(), "DLQ")
            left = receive_all(b.url(), "dl.src")
        self.assertEqual([0, 1], [m.id for m in dead])
        for m in dead:
            self.assertEqual("rejected", m.annotations.get(symbol("x-opt-dead-letter-reason")))
            self.assertEqual("dl.src", m.annotations.get(symbol("x-opt-original-address")))
            self.assertTrue(m.durable)
        self.assertEqual([2, 3], [m.id for m in left])


if __name__ == "__main__":
    hadron_test.main()
