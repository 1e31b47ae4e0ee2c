"""Disk errors in the store: a write or flush that fails loses nothing and
duplicates nothing.

hdfault (tests/fault/hdfault.c), LD_PRELOAD'ed into hadrond, makes one chosen
write or flush of the store's log or of LMDB's file fail, at a moment the
test chooses (it creates the arm file).  Producers send durable messages
unsettled, a few at a time, and note each outcome.  Then the broker is killed
with SIGKILL, restarted without the fault, and the queue drained: it must
hold exactly the messages whose producer heard `accepted` and that no
consumer had consumed, in the order they were sent.  A message whose
producer heard that it failed must not be there (the producer sends it again:
a duplicate); an accepted one must not be missing; a consumed one must not
come back.
"""

import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import AcceptAndGo, Broker, SANITIZED, SecondMode, SLOW, HADROND  # noqa: E402

from proton import Delivery, Message  # noqa: E402
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import Container  # noqa: E402

FAULT_LIB = os.environ.get("HADRON_FAULT_LIB", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fault", ".libs", "hdfault.so"))
STORE_TOOL = os.environ.get("HADRON_STORE_TOOL", os.path.join(os.path.dirname(HADROND), "hadron-store"))
ADDRESS = "fault.q"
BODY = "b" * 1000


class Producer(MessagingHandler):
    """Send messages first..last-1 durable and unsettled, `window` at a time;
    `outcome[id]` is 'accepted' or the error condition of the rejection."""

    def __init__(self, url, first, last, window=16, limit_s=30, address=ADDRESS, stop_on_failure=False,
                 body=BODY):
        super().__init__(prefetch=0)
        self.body = body
        self.url, self.next, self.last, self.window = url, first, last, window
        self.address, self.stop_on_failure = address, stop_on_failure
        self.limit_s = limit_s * SLOW
        self.ids, self.outcome = {}, {}

    def on_start(self, event):
        c = event.container
        self.conn = c.connect(self.url, reconnect=False)
        self.sender = c.create_sender(self.conn, self.address)
        self.timer = c.schedule(self.limit_s, self)

    def on_disconnected(self, event):
        self.timer.cancel()  # the broker went away: what has no outcome stays without one

    def on_timer_task(self, event):
        self.conn.close()

    def on_sendable(self, event):
        s = event.sender
        while s.credit > 0 and self.next < self.last and len(self.ids) < self.window:
            d = s.send(Message(id=self.next, body=self.body, durable=True))
            self.ids[d] = self.next
            self.next += 1

    def _done(self, event, what):
        i = self.ids.pop(event.delivery, None)
        if i is not None:
            self.outcome[i] = what
        if self.stop_on_failure and what != "accepted":
            self.last = self.next  # send nothing more
        if not self.ids and self.next >= self.last:
            self.timer.cancel()
            self.conn.close()
        else:
            self.on_sendable(event)

    def on_accepted(self, event):
        self._done(event, "accepted")

    def on_rejected(self, event):
        cond = event.delivery.remote.condition
        self._done(event, cond.name if cond else "rejected")

    def on_released(self, event):
        self._done(event, "released")

    def on_modified(self, event):
        self._done(event, "modified")


def produce(url, first, last, **kw):
    p = Producer(url, first, last, **kw)
    Container(p).run()
    return p.outcome


class Consumer(MessagingHandler):
    """Take up to `count` messages (all there are, if None), accepting each
    with rcv-settle-mode second when `accept`; stops once the queue has been
    quiet for `quiet_s`.  `got` lists ids in arrival order, `consumed` those
    whose accept the broker settled."""

    def __init__(self, url, count=None, accept=True, quiet_s=1.5, limit_s=60, before_accepts=None):
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.url, self.count, self.accept = url, count, accept
        self.before_accepts = before_accepts  # with count: called once all arrived, then they are accepted
        self.held = []
        self.quiet_s, self.limit_s = quiet_s * SLOW, limit_s * SLOW
        self.got, self.consumed, self.taken = [], [], {}
        self.last_activity = time.time()
        self.started = time.time()

    def on_start(self, event):
        c = event.container
        self.conn = c.connect(self.url, reconnect=False)
        self.receiver = c.create_receiver(self.conn, ADDRESS, options=SecondMode())
        self.receiver.flow(self.count if self.count is not None else 200)
        c.schedule(0.2, self)

    def on_timer_task(self, event):
        idle = time.time() - self.last_activity > self.quiet_s
        enough = self.count is not None and len(self.consumed) >= self.count
        if enough or idle or time.time() - self.started > self.limit_s:
            self.conn.close()
        else:
            event.container.schedule(0.2, self)

    def on_message(self, event):
        self.last_activity = time.time()
        i = int(event.message.id)
        self.got.append(i)
        if self.before_accepts:
            self.held.append((event.delivery, i))
            if len(self.held) == self.count:
                self.before_accepts()
                for d, k in self.held:
                    self.accept_one(d, k)
        elif self.accept:
            self.accept_one(event.delivery, i)
        if self.count is None:
            self.receiver.flow(1)

    def accept_one(self, d, i):
        d.update(Delivery.ACCEPTED)
        self.taken[d] = i

    def on_settled(self, event):
        i = self.taken.pop(event.delivery, None)
        if i is not None:
            self.last_activity = time.time()
            self.consumed.append(i)
            event.delivery.settle()


def consume(url, **kw):
    c = Consumer(url, **kw)
    Container(c).run()
    return c


@unittest.skipUnless(os.path.exists(FAULT_LIB), "hdfault.so not built (make check builds it)")
class FaultTest(unittest.TestCase):

    def broker(self, name, fault, conf="", log_size="256K"):
        self.arm = None
        # The queue is declared, so that it is in the store before any
        # message (a queue made on demand is written to LMDB in the batch of
        # its first message, which then does not go to the log).
        b = Broker(name=name, broker="store-log-size = %s\n%s" % (log_size, conf), log_level="info",
                   config="[queue %s]\n" % ADDRESS)
        self.arm = os.path.join(b.dir, "arm")
        env = {"LD_PRELOAD": FAULT_LIB, "HADRON_FAULT": "%s,arm=%s" % (fault, self.arm)}
        if SANITIZED:  # the fault library comes before ASan's runtime; ASan still intercepts after it
            env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:halt_on_error=1:verify_asan_link_order=0"
        b.env = env
        self.addCleanup(b.kill)
        return b.start()

    def fire(self, b):
        open(self.arm, "w").close()

    def injected(self, b):
        return b.log().count("hdfault: injected")

    def restart_clean(self, b):
        """SIGKILL, then start without the fault library."""
        b.kill()
        b.env = None
        b.start()

    def check_queue(self, b, expected):
        """Drain, and compare with the ids that must be there, in order."""
        c = consume(b.url())
        lost = sorted(set(expected) - set(c.got))
        extra = sorted(set(c.got) - set(expected))
        self.assertEqual(lost, [], "acknowledged messages lost: %s\n%s" % (lost[:20], b.log()))
        self.assertEqual(extra, [], "messages that must not be there (failed or consumed): %s\n%s"
                         % (extra[:20], b.log()))
        self.assertEqual(c.got, sorted(c.got), "out of order")
        self.assertEqual(len(c.got), len(set(c.got)), "a message twice")

    def store_clean(self, b):
        b.stop()
        p = subprocess.run([STORE_TOOL, "-d", b.data_dir, "check"], capture_output=True, text=True,
                           timeout=30 * SLOW)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        b.cleanup()

    def failed_commit(self, name, fault, condition, conf=""):
        """Messages 0-199 before the fault, 200-599 across it, 600-699 after;
        returns the broker (running) and the accepted ids."""
        b = self.broker(name, fault, conf)
        url = b.url()
        before = produce(url, 0, 200)
        self.assertEqual(set(before.values()), {"accepted"})
        self.fire(b)
        across = produce(url, 200, 600)
        self.assertEqual(self.injected(b), 1, b.log())
        failed = sorted(i for i, o in across.items() if o != "accepted")
        self.assertTrue(failed, "no producer heard of the failure:\n" + b.log())
        self.assertEqual({across[i] for i in failed}, {condition}, across)
        self.assertIn("commit of", b.log())
        # The broker goes on: everything after the failure is stored.
        after = produce(url, 600, 700)
        self.assertEqual(set(after.values()), {"accepted"}, b.log())
        accepted = [i for o in (before, across, after) for i, v in o.items() if v == "accepted"]
        return b, sorted(accepted)

    def failed_commit_then_crash(self, name, fault, condition):
        b, accepted = self.failed_commit(name, fault, condition)
        self.restart_clean(b)
        self.check_queue(b, accepted)
        self.store_clean(b)

    def test_failed_flush_of_the_log(self):
        """fdatasync of the log fails (the batch may be on disk all the
        same): its producers hear amqp:internal-error, and the batch is
        never replayed, though it checks out on disk."""
        self.failed_commit_then_crash("fault-flush", "call=fdatasync,file=log", "amqp:internal-error")

    def test_failed_flush_then_crash(self):
        """The broker is killed right after a flush of the log failed,
        before anything else is written over the batch: the batch is whole
        in the file (the page cache writes it out all the same) and checks
        out, but its producer heard that it failed, so it must not come
        back."""
        b = self.broker("fault-flush-crash", "call=fdatasync,file=log")
        url = b.url()
        self.assertEqual(set(produce(url, 0, 100).values()), {"accepted"})
        self.fire(b)
        last = produce(url, 100, 101, window=1)
        self.assertEqual(last, {100: "amqp:internal-error"}, b.log())
        self.restart_clean(b)
        self.check_queue(b, list(range(100)))
        self.store_clean(b)

    def test_failed_first_flush_then_crash(self):
        """The same with the first batch of a run, which starts the file at
        offset 0, where a replay looks first: the batch's LSN must not be
        the one LMDB expects there."""
        # after=1: the first flush of a fresh log is the one that makes its
        # length durable, before the first batch is written (a failure
        # there sends the batch to LMDB instead, as a full disk would).
        b = self.broker("fault-first-crash", "call=fdatasync,file=log,after=1")
        self.fire(b)
        self.assertEqual(produce(b.url(), 0, 1, window=1), {0: "amqp:internal-error"}, b.log())
        self.assertEqual(self.injected(b), 1, b.log())
        self.restart_clean(b)
        self.check_queue(b, [])
        self.store_clean(b)

    def test_failed_growth_of_the_log(self):
        """The flush that makes a fresh log file's length durable fails:
        nothing is lost or refused (the commit goes to LMDB), the log says
        why, and the next commit grows the file and uses it."""
        b = self.broker("fault-grow", "call=fdatasync,file=log")
        self.fire(b)
        self.assertEqual(produce(b.url(), 0, 1, window=1), {0: "accepted"}, b.log())
        self.assertEqual(self.injected(b), 1, b.log())
        self.assertIn("its log could not be grown (Input/output error); commits go to LMDB", b.log())
        self.assertEqual(set(produce(b.url(), 1, 50).values()), {"accepted"})
        b.stop()
        logged = re.search(r"(\d+) commits to the log", b.log())
        self.assertTrue(logged and int(logged.group(1)) > 0, b.log())
        b.env = None
        b.start()
        self.check_queue(b, list(range(50)))
        self.store_clean(b)

    def test_failed_write_of_lmdb_meta_page(self):
        """A write of LMDB's meta page fails: LMDB takes no further
        transaction from the process (MDB_PANIC), so hadrond stops with
        exit status 1 and a line that says so, instead of failing every
        commit from then on; started again, it has every accepted message."""
        b = self.broker("fault-meta", "call=pwrite,file=data.mdb,below=8192")
        self.assertEqual(set(produce(b.url(), 0, 100).values()), {"accepted"})
        self.fire(b)
        # A queue made on demand is written to LMDB (not the log) at once.
        # Its record and the message usually share the failing commit (the
        # producer hears amqp:internal-error); when the record went alone
        # (the message came more than 2 ms after the attach), the message
        # is in the retry, which stops hadrond before anyone hears of it.
        first = produce(b.url(), 100, 101, window=1, address="fault.new1", limit_s=10)
        self.assertIn(first, ({100: "amqp:internal-error"}, {}), b.log())
        self.assertEqual(self.injected(b), 1, b.log())
        produce(b.url(), 101, 102, window=1, address="fault.new2", limit_s=10)
        code = b.proc.wait(timeout=10 * SLOW)
        self.assertEqual(code, 1, b.log())
        self.assertIn("LMDB refuses all further writes after a failed write; hadrond stops", b.log())
        self.restart_clean(b)
        self.check_queue(b, list(range(100)))
        self.store_clean(b)

    def test_torn_write_of_the_log(self):
        """Half of a batch reaches the log, then the write fails."""
        self.failed_commit_then_crash("fault-torn", "call=pwritev,file=log,partial=1", "amqp:internal-error")

    def test_log_write_out_of_space(self):
        """ENOSPC from the log: producers hear resource-limit-exceeded, and
        get credit again once the broker sees the disk has room."""
        self.failed_commit_then_crash("fault-nospc", "call=pwritev,file=log,errno=ENOSPC",
                                      "amqp:resource-limit-exceeded")

    def test_failed_checkpoint(self):
        """LMDB's flush fails while a full log file is moved into it (a
        checkpoint): the batch that needed the room fails, nothing is
        logged until a full checkpoint succeeds, and what LMDB had from the
        failed move does not bring back a message consumed later."""
        b, accepted = self.failed_commit("fault-ckpt", "call=fdatasync,file=data.mdb",
                                         "amqp:internal-error")
        # Consume some after the failure: their deletes must not be undone
        # by puts the failed checkpoint left in LMDB.
        c = consume(b.url(), count=150)
        self.assertEqual(c.consumed, accepted[:150])
        self.restart_clean(b)
        self.check_queue(b, accepted[150:])
        self.store_clean(b)

    def test_failed_move_of_a_full_file(self):
        """The log's files are 10 MiB; when the second fills, the first's
        messages (more than one 8 MiB transaction's worth) move to LMDB, and
        the second transaction's flush fails: the first's records are in
        LMDB while the file's table still holds them.  A consumer then
        takes message 0 (moved by the first transaction); the delete of
        such a message must reach LMDB, or message 0 comes back after a
        restart although its consumption was confirmed."""
        b = self.broker("fault-move", "call=fdatasync,file=data.mdb,after=1", log_size="10M")
        url = b.url()
        # About 9,500 messages fill a file: the first is full and the
        # second in use after 13,000.
        bulk = produce(url, 0, 13000, window=64, limit_s=120)
        self.assertEqual(set(bulk.values()), {"accepted"})
        self.assertEqual(self.injected(b), 0)
        self.fire(b)
        # One at a time until the commit that needs the move fails.  They
        # are large, so that the file then still has room for a small batch
        # (the consumer's delivery mark and delete below), which it takes
        # without moving anything.
        rest = produce(url, 13000, 20000, window=1, limit_s=120, stop_on_failure=True, body="B" * 65536)
        failed = [i for i, o in rest.items() if o != "accepted"]
        self.assertEqual(len(failed), 1, b.log())
        self.assertEqual(rest[failed[0]], "amqp:internal-error")
        self.assertEqual(self.injected(b), 1, b.log())
        c = consume(url, count=1)
        self.assertEqual(c.consumed, [0], b.log())
        self.restart_clean(b)
        accepted = sorted(i for o in (bulk, rest) for i, v in o.items() if v == "accepted")
        self.check_queue(b, accepted[1:])
        self.store_clean(b)

    def test_failing_disk_is_logged_once_a_while(self):
        """Thirty commits in a row fail: one error line for them (more
        than one per ten seconds would flood the log while deletes are
        retried every 100 ms), then one line when commits succeed again,
        counting the ones not logged."""
        b = self.broker("fault-many", "call=fdatasync,file=log,count=30")
        url = b.url()
        self.assertEqual(set(produce(url, 0, 10).values()), {"accepted"})
        self.fire(b)
        out = produce(url, 10, 100, window=1, limit_s=60)
        failed = sorted(i for i, o in out.items() if o != "accepted")
        self.assertEqual(failed, list(range(10, 40)), b.log())
        self.assertEqual(self.injected(b), 30, b.log())
        log = b.log()
        lines = re.findall(r"commit of \d+ operations failed.*", log)
        self.assertLessEqual(len(lines), 2, log)  # 30 failures take about 3 s; a second line after 10 s
        again = re.search(r"commits succeed again \((\d+) failed commits since the last line\)", log)
        self.assertTrue(again, log)
        self.assertEqual(int(again.group(1)) + len(lines), 30, log)
        self.restart_clean(b)
        self.check_queue(b, list(range(10)) + list(range(40, 100)))
        self.store_clean(b)

    def test_failed_flush_of_deletes_is_retried(self):
        """Consumers' accepts whose commit fails are written again: the
        broker confirms them only once stored, and a confirmed one never
        comes back."""
        b = self.broker("fault-del", "call=fdatasync,file=log")
        url = b.url()
        sent = produce(url, 0, 300)
        self.assertEqual(set(sent.values()), {"accepted"})
        # Armed once the 100 have been delivered (their delivery marks are
        # written by then), so that the next write is of their deletes.
        c = consume(url, count=100, before_accepts=lambda: self.fire(b))
        self.assertEqual(self.injected(b), 1, b.log())
        self.assertEqual(c.consumed, list(range(100)), b.log())
        self.restart_clean(b)
        self.check_queue(b, list(range(100, 300)))
        self.store_clean(b)

    def test_confirmed_accept_is_on_disk_however_slow_the_flush(self):
        """A consumer in rcv-settle-mode second hears that its accepts took
        effect only once their deletes are flushed, even though the broker
        hands a consumer's accepts to the store in runs: with each flush of
        the log half a second slower, the broker is killed the moment the
        last settlement arrives, and none of the messages comes back."""
        b = self.broker("fault-confirm", "call=fdatasync,file=log,delay=%d,count=1000000000" % (500000 * SLOW))
        self.fire(b)
        url = b.url()
        out = produce(url, 0, 5)
        self.assertEqual(set(out.values()), {"accepted"}, b.log())

        class KillOnLast(Consumer):
            def on_settled(self, event):
                super().on_settled(event)
                if len(self.consumed) == self.count and not self.killed:
                    self.killed = True
                    b.kill()
                    self.conn.close()

        KillOnLast.killed = False

        c = KillOnLast(url, count=5)
        Container(c).run()
        self.assertEqual(c.consumed, list(range(5)), b.log())
        self.restart_clean(b)
        self.check_queue(b, [])
        self.store_clean(b)

    def test_slow_disk_does_not_hold_consumers_back(self):
        """Each flush of the log takes 100 ms longer (a slow disk).  Before a
        message is sent, "it may have been delivered" is on disk (the
        delivery mark, written some way ahead).  With a fixed reach of 512
        messages a consumer waited for a flush every 256 messages, which
        held a durable queue to 256 messages per flush (12,000 msgs/s with
        20 ms flushes; docs/BENCHMARKS.md).  The reach doubles whenever a
        consumer had to wait for it, so 8,000 messages need a mark or two
        per doubling rather than one per 256: counted from the store's
        shutdown line, which counts every operation (each message's put and
        delete, the marks)."""
        b = self.broker("fault-slow", "call=fdatasync,file=log,delay=100000,count=1000000000")
        self.fire(b)
        url = b.url()
        n = 8000
        out = produce(url, 0, n, window=n, limit_s=120)
        self.assertEqual(set(out.values()), {"accepted"}, b.log())
        got = drain_first_mode(url, n)
        self.assertEqual(got, list(range(n)), b.log())
        self.assertIn("hdfault: every matching fdatasync", b.log())
        b.stop()
        m = re.search(r"store '[^']*', closed: \d+ commits, (\d+) operations", b.log())
        self.assertTrue(m, b.log())
        marks = int(m.group(1)) - 2 * n  # the rest: delivery marks
        self.assertGreater(marks, 0, b.log())
        self.assertLessEqual(marks, n // 512, "a consumer waited for a mark every few hundred messages:\n" + b.log())
        b.start()
        self.assertEqual(consume(b.url()).got, [], b.log())
        self.store_clean(b)

    def left_after_slow_flushes(self, b):
        """Once the last slow flushes are done: a clean stop (exit status 0,
        and under ASan no leak), a start without the fault library, and the
        ids the queue then holds, each once."""
        time.sleep(2 * SLOW)
        self.assertIn("hdfault: every matching fdatasync", b.log())
        b.stop()
        b.env = None
        b.start()
        got = consume(b.url()).got
        self.assertEqual(len(got), len(set(got)), "a message twice")
        return got

    def test_producer_gone_while_its_messages_wait_for_the_disk(self):
        """Producers that close their connection while their messages wait
        for a slow flush (half a second): the broker hands the outcomes to a
        connection that is no longer there without harm (the sanitizer
        build checks for leaks at shutdown), and what was committed is
        stored all the same, each message once."""
        b = self.broker("fault-gone", "call=fdatasync,file=log,delay=%d,count=1000000000" % (500000 * SLOW))
        self.fire(b)
        url = b.url()
        for first in range(0, 1000, 200):  # each closes 0.1 s in, long before its flush ends
            sent = produce(url, first, first + 200, window=200, limit_s=0.1)
            self.assertEqual(sent, {}, "outcomes arrived before the connection closed; the flush is not slow")
        got = self.left_after_slow_flushes(b)
        self.assertEqual(got, sorted(got), "out of order")
        self.assertTrue(set(got) <= set(range(1000)))
        self.assertGreater(len(got), 0, "nothing of what was sent was stored:\n" + b.log())
        self.store_clean(b)

    def test_consumer_gone_while_its_accepts_wait_for_the_disk(self):
        """Consumers in rcv-settle-mode second that accept and close their
        connection at once, while the deletes wait for a slow flush (half a
        second): the broker's settlements then go to a connection that is
        no longer there, every time (test_store.py's burst of such
        consumers meets that moment only by chance).  They are dropped
        without harm (the sanitizer build checks for leaks at shutdown),
        and each accept that reached the broker takes effect: what is left
        is exactly what was not accepted, once each."""
        b = self.broker("fault-gone-rx", "call=fdatasync,file=log,delay=%d,count=1000000000" % (500000 * SLOW))
        url = b.url()
        out = produce(url, 0, 300, window=300)  # before the disk turns slow
        self.assertEqual(set(out.values()), {"accepted"}, b.log())
        self.fire(b)
        accepted = []
        for _ in range(5):
            g = AcceptAndGo(url, ADDRESS, 40)
            Container(g).run()
            self.assertEqual(len(g.accepted), 40, b.log())
            self.assertEqual(g.settled, 0, "a settlement arrived before the close; the flush is not slow")
            accepted += [int(i) for i in g.accepted]
        got = self.left_after_slow_flushes(b)
        self.assertEqual(sorted(got), sorted(set(range(300)) - set(accepted)),
                         "not exactly the messages that were not accepted:\n" + b.log())
        self.store_clean(b)


class FirstModeDrain(MessagingHandler):
    """Take `count` messages, accepting each (rcv-settle-mode first: the
    broker does not wait for the store before settling)."""

    def __init__(self, url, count, limit_s=120):
        super().__init__(prefetch=500)
        self.url, self.count, self.limit_s = url, count, limit_s * SLOW
        self.got = []

    def on_start(self, event):
        self.conn = event.container.connect(self.url, reconnect=False)
        event.container.create_receiver(self.conn, ADDRESS)
        self.timer = event.container.schedule(self.limit_s, self)

    def on_timer_task(self, event):
        self.conn.close()

    def on_message(self, event):
        self.got.append(int(event.message.id))
        if len(self.got) >= self.count:
            self.timer.cancel()
            self.conn.close()


def drain_first_mode(url, count):
    d = FirstModeDrain(url, count)
    Container(d).run()
    return d.got


if __name__ == "__main__":
    hadron_test.main()
