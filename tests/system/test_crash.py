"""Crash safety of the durable store: kill -9 and power cuts at random
moments lose nothing.

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

A SIGKILL leaves the kernel's page cache behind, so it cannot show a
missing fdatasync or directory flush; the power-cut rounds run hadrond with
tests/fault/hdpowercut.c, which undoes at the cut whatever was not flushed.
"""

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, HADROND, SecondMode, SLOW  # noqa: E402

from proton import Delivery, Message  # noqa: E402
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import Container  # noqa: E402

POWERCUT_LIB = os.environ.get("HADRON_POWERCUT_LIB", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fault", ".libs", "hdpowercut.so"))
STORE_TOOL = os.environ.get("HADRON_STORE_TOOL", os.path.join(os.path.dirname(HADROND), "hadron-store"))
ADDRESS = "crash.q"
ROUNDS = 20
PER_ROUND = 1500  # sends per round: a backlog the Python consumer can keep up with


def powercut_env(spec):
    """hadrond's environment for a run under hdpowercut."""
    env = {"LD_PRELOAD": POWERCUT_LIB, "HADRON_POWERCUT": spec}
    if hadron_test.SANITIZED:  # ASan wants to come first; the library only wraps libc calls
        env["ASAN_OPTIONS"] = ("detect_leaks=1:abort_on_error=0:halt_on_error=1:"
                               "verify_asan_link_order=0")
    return env


def touch(path):
    with open(path, "w"):
        pass


class Ledger:
    def __init__(self):
        self.confirmed = set()     # producer saw accepted
        self.confirmed_at = {}     # id -> when
        self.round_of = {}         # id -> the round it was confirmed in
        self.cut_at = []           # when each round ended
        self.consumed = set()      # broker confirmed the consumer's accept
        self.accepting = set()     # consumer sent accepted; the broker's answer may have been lost
        self.seen = {}             # id -> delivery-count the last time it arrived
        self.history = {}          # id -> [(round, delivery-count, first-acquirer)]
        self.consumed_at = {}      # id -> when the broker confirmed it
        self.came_back = []        # (id, when consumed) seen again (store-flush = interval only)
        self.grace = None          # store-flush = interval: see CrashTest.rounds
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
            self.ledger.confirmed_at[i] = time.time()
            self.ledger.round_of[i] = self.ledger.round

    def on_rejected(self, event):
        self.ids.pop(event.delivery, None)

    def on_message(self, event):
        d, m, led = event.delivery, event.message, self.ledger
        i = int(m.id)
        led.history.setdefault(i, []).append((led.round, m.delivery_count, m.first_acquirer))
        if i in led.consumed and led.grace is not None:
            led.came_back.append((i, led.consumed_at[i]))  # allowed if within the grace before a cut
        elif i in led.consumed:
            led.violations.append("message %d came back after the broker confirmed its consumption" % i)
        if i in led.seen and led.grace is None:  # the marks of an interval may be lost
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
            self.ledger.consumed_at[i] = time.time()
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

    def test_power_cut_at_random_moments(self):
        """20 power cuts mid-traffic (hdpowercut: every write since its
        file's last flush undone, every name not flushed in its directory
        removed), the first on a store created by that same run: what a
        kill -9 cannot show, a missing fdatasync or directory flush, loses
        acknowledged messages here."""
        self.rounds("powercut", "max-deliveries = 0\n", power="none")

    def test_power_cut_keeping_some_pages(self):
        """The same with a 64 KiB log, a disk that wrote back some 4 KiB
        pages of its cache (at random) and not others, and some cuts during
        start-up (recovery writes too)."""
        self.rounds("powercut-some", "max-deliveries = 0\nstore-log-size = 64K\n", power="some")

    def test_power_cut_while_paging(self):
        """Power cuts with 2 KiB bodies and queue-memory = 1M, later in each
        round (within its first 3,000 writes and flushes): the backlog
        grows to tens of thousands of messages, most of them only in LMDB,
        so cuts land while bodies are written there and read back."""
        self.rounds("powercut-paging", "max-deliveries = 0\nqueue-memory = 1M\n", body=2048,
                    per_round=3000, power="some", cut_within=3000)

    def test_power_cut_with_store_flush_interval(self):
        """store-flush = interval (50 ms): a power cut may lose what was
        acknowledged within the last interval and bring back what was
        consumed within it (hadron.conf(5) says so), but nothing
        acknowledged or consumed 0.2 s or more before the cut may be
        missing or come back, and the store must open after every cut and
        check clean.  The cut comes 0.3-0.8 s into each round's traffic."""
        self.rounds("powercut-interval", "max-deliveries = 0\nstore-flush = interval\n"
                    "store-flush-interval = 50ms\n", per_round=5000, power="some",
                    cut_within=20, grace=0.2 * SLOW, nrounds=10)

    def test_power_cut_with_store_flush_interval_and_no_log(self):
        """The same with store-log-size = 0: every commit goes to LMDB, whose
        meta page waits for the next flush.  (With LMDB's MDB_NOSYNC a cut
        left a store LMDB could not open: every message lost.)"""
        self.rounds("powercut-interval-lmdb", "max-deliveries = 0\nstore-flush = interval\n"
                    "store-flush-interval = 50ms\nstore-log-size = 0\n", per_round=5000,
                    power="some", cut_within=20, grace=0.2 * SLOW, nrounds=10)

    def test_power_cut_while_the_store_is_created(self):
        """Power cuts during the first start of an empty data directory, at
        each of its first 20 writes, flushes and creations in turn, four
        ways of keeping pages each: the next start finds either no store
        (nothing was acknowledged) or one LMDB opens, never one it calls
        corrupt (as it did when LMDB's first meta pages were not flushed
        before data.mdb's name)."""
        for after, seed in itertools.product(range(20), range(4)):
            broker = Broker(name="powercut-create")
            broker.env = powercut_env("dir=%s,after=%d,keep=some,seed=%d" % (
                os.path.realpath(broker.data_dir), after, seed))
            try:
                broker.start()
                broker.kill()
            except hadron_test.BrokerError:
                self.assertTrue(self.was_cut(broker), broker.log())
                broker.kill()
            broker.env = None
            broker.start()  # raises if the store is refused
            broker.stop()
            broker.cleanup()

    def test_the_power_cut_library_undoes_what_was_not_flushed(self):
        """hdpowercut itself, on a script of file operations: the tests
        above prove nothing if it leaves unflushed writes or names."""
        top = tempfile.mkdtemp(prefix="hadron-powercut-")
        data = os.path.join(top, "data")
        script = textwrap.dedent("""
            import os, sys
            top, data = sys.argv[1], sys.argv[2]
            os.mkdir(data)
            kept = os.open(data + "/kept", os.O_RDWR | os.O_CREAT, 0o640)
            os.pwrite(kept, b"A" * 10000, 0)
            os.fsync(kept)
            for d in (top, data):            # both names now on disk
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(fd)
                os.close(fd)
            os.pwrite(kept, b"B" * 5000, 2000)   # never flushed
            os.pwrite(kept, b"C" * 8000, 9000)   # grows the file, never flushed
            new = os.open(data + "/new", os.O_RDWR | os.O_CREAT, 0o640)
            os.write(new, b"x")
            os.fsync(new)                    # its data, but not its name
            os.write(kept, b"D")             # event 12: the cut
            print("no cut")
            """)
        env = dict(os.environ, LD_PRELOAD=POWERCUT_LIB, HADRON_POWERCUT="dir=%s,after=11" % data)
        p = subprocess.run([sys.executable, "-c", script, top, data], env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(-signal.SIGKILL, p.returncode, p.stdout + p.stderr)
        self.assertIn("hdpowercut: power cut at event 12 (write): 2 unflushed writes, 13000 bytes "
                      "undone, 1 names not flushed", p.stderr)
        self.assertEqual(["kept"], os.listdir(data))
        with open(os.path.join(data, "kept"), "rb") as f:
            self.assertEqual(b"A" * 10000, f.read())
        shutil.rmtree(top)

    @staticmethod
    def before_cut(ledger, t):
        """Seconds between t and the end of the round it fell in."""
        return min(c for c in ledger.cut_at if c >= t) - t

    @staticmethod
    def was_cut(broker):
        return "hdpowercut: power cut" in broker.log()[broker._log_start:]

    def start_powered(self, broker, rng, power, arm, now, first, cut_within, arm_later):
        """Start the broker with hdpowercut set to cut at a random write,
        flush or creation once the arm file exists (created here unless
        arm_later), or at once when the now file does; False if the cut
        came during start-up.  The first round's cut comes within its
        first few dozen commits, while the names of the store just created
        are still new."""
        early = power == "some" and not first and not arm_later and rng.random() < 0.25
        after = rng.randrange(10, 60) if first and not arm_later else rng.randrange(40 if early else cut_within)
        spec = "dir=%s,after=%d,keep=%s,seed=%d,now=%s" % (
            os.path.realpath(broker.data_dir), after, power, rng.randrange(1 << 30), now)
        if not early:
            spec += ",arm=" + arm
        broker.env = powercut_env(spec)
        try:
            broker.start()
        except hadron_test.BrokerError:
            if not self.was_cut(broker):
                raise
            broker.kill()
            return False
        if not arm_later:
            touch(arm)
        return True

    def rounds(self, name, conf, body=256, per_round=PER_ROUND, power=None, cut_within=300,
               grace=None, nrounds=ROUNDS):
        """grace: with store-flush = interval, messages acknowledged less than
        grace seconds before a cut may be lost, and consumed ones may come
        back (with delivery-count not raised: the marks are lost too)."""
        seed = int(os.environ.get("HADRON_CRASH_SEED") or random.randrange(1 << 30))
        rng = random.Random(seed)
        broker = Broker(name=name, broker=conf)
        arm, now = os.path.join(broker.dir, "arm"), os.path.join(broker.dir, "now")
        ledger = Ledger()
        ledger.grace = grace
        next_id = 1
        cuts = 0
        for rnd in range(nrounds):
            ledger.round = rnd
            if power:
                for f in (arm, now):
                    if os.path.exists(f):
                        os.unlink(f)
                if not self.start_powered(broker, rng, power, arm, now, rnd == 0, cut_within,
                                          arm_later=grace is not None):
                    cuts += 1
                    continue
                # A count the round never reached: cut power anyway.
                timers = [threading.Timer(3 * SLOW, touch, (now,))]
                if grace is not None:  # the count starts once traffic has run a while
                    timers.append(threading.Timer(rng.uniform(0.3, 0.8) * SLOW, touch, (arm,)))
            else:
                broker.start()
                timers = [threading.Timer(rng.uniform(0.2, 1.2) * SLOW,
                                          lambda p=broker.pid: os.kill(p, signal.SIGKILL))]
            for t in timers:
                t.start()
            handler = Round(broker.url(), ledger, next_id, rng, limit_s=10 * SLOW, body=body,
                            per_round=per_round)
            Container(handler).run()
            ledger.cut_at.append(time.time())
            for t in timers:
                t.cancel()
                t.join()
            cut = self.was_cut(broker)
            broker.kill()
            cuts += cut
            next_id = handler.next_id
            if grace is None:
                self.assertEqual([], ledger.violations, "round %d (seed %d)" % (rnd, seed))
        broker.env = None
        if power:  # every round ended in a cut (the now file is the fallback)
            self.assertEqual(nrounds, cuts, "power cuts (seed %d)" % seed)

        broker.start()
        drain = Drain(broker.url())
        Container(drain).run()
        broker.stop()
        check = subprocess.run([STORE_TOOL, "-d", broker.data_dir, "check"], capture_output=True,
                               text=True, timeout=60 * SLOW)
        self.assertEqual(0, check.returncode, check.stdout + check.stderr)

        left = [g[0] for g in drain.got]
        dup = sorted({i for i in left if left.count(i) > 1})
        self.assertEqual([], dup, "messages present twice (seed %d)" % seed)
        # A message the consumer accepted without hearing back may have been
        # consumed (then it is gone) or not (then it is still there).
        lost = sorted(ledger.confirmed - ledger.consumed - ledger.accepting - set(left))
        if grace is not None:
            old = [i for i in lost if self.before_cut(ledger, ledger.confirmed_at[i]) >= grace]
            self.assertEqual([], old, "messages acknowledged %ss or more before a cut lost (seed %d)"
                             % (grace, seed))
            back = [(i, ledger.consumed_at[i]) for i in set(left) & ledger.consumed] + ledger.came_back
            old = sorted(i for i, t in back if self.before_cut(ledger, t) >= grace)
            self.assertEqual([], old, "messages consumed %ss or more before a cut came back (seed %d)"
                             % (grace, seed))
            # The check must have had something to hold: acknowledgements
            # well before the cuts, in most rounds.
            early = {ledger.round_of[i] for i in ledger.confirmed
                     if self.before_cut(ledger, ledger.confirmed_at[i]) >= grace}
            self.assertGreaterEqual(len(early), nrounds // 2, "rounds with early acknowledgements")
            sys.stderr.write("crash test: seed %d, %d confirmed sends, %d lost within the last %ss, "
                             "%d back, %d left, %d power cuts\n"
                             % (seed, len(ledger.confirmed), len(lost), grace, len(back), len(left), cuts))
            return
        back = sorted(set(left) & ledger.consumed)
        self.assertEqual([], back, "consumed messages came back (seed %d)" % seed)
        self.assertEqual([], lost, "acknowledged messages lost (seed %d)" % seed)
        for i, count, first in drain.got:
            if i in ledger.seen:
                self.assertGreater(count, ledger.seen[i], "message %d: delivery-count not raised" % i)
                self.assertFalse(first, "message %d: first-acquirer after a delivery" % i)
        # The test must have exercised something.
        self.assertGreater(len(ledger.confirmed), 100)
        self.assertGreater(len(ledger.consumed), 50)
        sys.stderr.write("crash test: seed %d, %d confirmed sends, %d confirmed consumes, %d left%s\n"
                         % (seed, len(ledger.confirmed), len(ledger.consumed), len(left),
                            ", %d power cuts" % cuts if power else ""))


if __name__ == "__main__":
    hadron_test.main()
