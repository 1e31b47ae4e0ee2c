"""Disk full: a broker whose data-dir is on a small filesystem.

The test mounts a 12 MiB tmpfs (root only; skipped otherwise) and runs a
broker on it with a 1 MiB initial map and a 2 MiB reserve (or none), with
the store's log off (the disk is too small for the default one) or 1 MiB.  Producers fill
it with 64 KiB durable messages until the broker refuses them
(amqp:resource-limit-exceeded) or stops giving credit; nothing it accepted
may be lost, consumers can still drain, and once they have, producers are
accepted again.  The broker must never crash and its store must check clean.
"""

import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, SLOW, HADROND  # noqa: E402

from proton import Message  # noqa: E402
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import Container  # noqa: E402
from proton.utils import BlockingConnection  # noqa: E402

STORE_TOOL = os.environ.get("HADRON_STORE_TOOL", os.path.join(os.path.dirname(HADROND), "hadron-store"))
FS_SIZE = "12m"
BODY = 64 * 1024
LIMIT = "amqp:resource-limit-exceeded"
MAX_SENDS = 400  # 25 MiB: twice the filesystem; a broker that never refuses fails here


def body(i):
    return (b"%08d" % i) * (BODY // 8)


class Filler(MessagingHandler):
    """Send 64 KiB durable messages, a few unsettled at a time, until one is
    refused, or no credit comes for `blocked_s`, or MAX_SENDS were sent."""

    def __init__(self, url, address, window=4, blocked_s=3, limit_s=30):
        super().__init__(prefetch=0)
        self.url, self.address, self.window = url, address, window
        self.blocked_s, self.limit_s = blocked_s, limit_s
        self.ids = {}
        self.accepted, self.rejected = [], []
        self.next = 0
        self.stopping = False
        self.blocked = False     # ended because credit stopped coming
        self.last_progress = time.time()
        self.started = time.time()

    def on_start(self, event):
        c = event.container
        self.conn = c.connect(self.url, reconnect=False)
        self.sender = c.create_sender(self.conn, self.address)
        c.schedule(0.5, self)

    def on_timer_task(self, event):
        now = time.time()
        if now - self.started > self.limit_s * SLOW:
            self.finish()
        elif not self.stopping and not self.ids and self.sender.credit == 0 and \
                now - self.last_progress > self.blocked_s * SLOW:
            self.blocked = True
            self.finish()
        if not self.conn.state & self.conn.LOCAL_CLOSED:
            event.container.schedule(0.5, self)

    def on_sendable(self, event):
        self.pump()

    def pump(self):
        s = self.sender
        while not self.stopping and s.credit > 0 and len(self.ids) < self.window and self.next < MAX_SENDS:
            i = self.next
            self.next += 1
            self.ids[s.send(Message(id=i, durable=True, body=body(i)))] = i
        if not self.ids and (self.stopping or self.next >= MAX_SENDS):
            self.finish()

    def on_accepted(self, event):
        self.accepted.append(self.ids.pop(event.delivery))
        self.last_progress = time.time()
        self.pump()

    def on_rejected(self, event):
        cond = event.delivery.remote.condition
        self.rejected.append((self.ids.pop(event.delivery), cond.name if cond else None,
                              cond.description if cond else None))
        self.stopping = True
        self.pump()

    def finish(self):
        self.stopping = True
        if not self.conn.state & self.conn.LOCAL_CLOSED:
            self.conn.close()

    def on_connection_closed(self, event):
        event.container.stop()

    def on_transport_closed(self, event):
        event.container.stop()


class Drainer(MessagingHandler):
    """Take everything there is; stop after a quiet spell."""

    def __init__(self, url, address, idle_s=2):
        super().__init__(prefetch=50, auto_accept=True)
        self.url, self.address, self.idle_s = url, address, idle_s
        self.got, self.bad = [], []
        self.last = time.time()

    def on_start(self, event):
        c = event.container
        self.conn = c.connect(self.url, reconnect=False)
        c.create_receiver(self.conn, self.address)
        c.schedule(0.5, self)

    def on_timer_task(self, event):
        if time.time() - self.last > self.idle_s * SLOW:
            self.conn.close()
        else:
            event.container.schedule(0.5, self)

    def on_message(self, event):
        m = event.message
        self.got.append(m.id)
        if m.body != body(m.id):
            self.bad.append(m.id)
        self.last = time.time()

    def on_connection_closed(self, event):
        event.container.stop()

    def on_transport_closed(self, event):
        event.container.stop()


class DiskFullTest(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to mount a small tmpfs for the data-dir")
        self.mnt = tempfile.mkdtemp(prefix="hadron-full-")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + FS_SIZE, "tmpfs", self.mnt],
                           capture_output=True, text=True)
        if p.returncode != 0:
            os.rmdir(self.mnt)
            self.skipTest("cannot mount a tmpfs (%s): %s" % (p.returncode, p.stderr.strip()))
        self.addCleanup(self.unmount)

    def unmount(self):
        p = subprocess.run(["umount", self.mnt], capture_output=True, text=True)
        if p.returncode != 0:  # something still holds it: detach it anyway
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        os.rmdir(self.mnt)

    def test_disk_full_refuses_then_recovers(self):
        """Below the reserve, new durable messages are refused (or producers
        get no credit) and the log says so; nothing accepted is lost; after
        a consumer drains, space is back and sends are accepted again; the
        broker exits 0 and the store checks clean.  (The store's log stays
        off here: the disk has less than six logs' worth of room.)"""
        self.fill_and_recover("store-map-size = 1M\nstore-reserve = 2M\n")

    def test_disk_full_with_the_store_log(self):
        """The same with a 1 MiB store log, which this disk has room for at
        first: commits go to the log and are checkpointed into LMDB every
        few messages, until the disk runs short and commits go to LMDB."""
        self.fill_and_recover("store-map-size = 1M\nstore-reserve = 2M\nstore-log-size = 1M\n",
                              log=True)

    def fill_and_recover(self, conf, log=False):
        data = os.path.join(self.mnt, "data")
        b = Broker(name="store-full", data_dir=data, broker=conf)
        with b:
            fill = Filler(b.url(), "full.q")
            Container(fill).run()
            refused = [r for r in fill.rejected if r[1] == LIMIT]
            self.assertTrue(refused or fill.blocked,
                            "%d x 64 KiB accepted on a %s filesystem, never refused nor blocked; "
                            "rejections: %s" % (len(fill.accepted), FS_SIZE, fill.rejected[:3]))
            self.assertNotRegex(b.log(), r"commit of \d+ operations failed",
                                "the reserve did not keep the disk from filling up")
            self.assertEqual(fill.rejected, refused, "refused with another condition")
            for _, _, desc in refused:
                self.assertIn("disk is full", desc)
            self.assertGreater(len(fill.accepted), 20, "refused long before the disk was full")
            self.assertRegex(b.log(), r"store '[^']*', free space \d+ KiB is below the reserve \(2048 KiB\)")
            self.assertIsNone(b.proc.poll(), "hadrond died")

            drain = Drainer(b.url(), "full.q")
            Container(drain).run()
            self.assertEqual(sorted(fill.accepted), drain.got, "consumer did not get exactly what was accepted")
            self.assertEqual([], drain.bad, "bodies damaged")

            # Space comes back once the store notices; a producer is accepted again.
            c = BlockingConnection(b.url(), timeout=10 * SLOW)
            s = c.create_sender("full.q")
            s.send(Message(id="after", durable=True, body=body(0)))
            c.close()
            b.wait_log(r"store '[^']*', free space is back \(\d+ KiB\)")
            r = BlockingConnection(b.url(), timeout=10 * SLOW)
            rl = r.create_receiver("full.q")
            m = rl.receive(timeout=10 * SLOW)
            self.assertEqual("after", m.id)
            rl.accept()
            r.close()
            b.stop()  # exit 0 checked here
            if log:  # the log was used: commits to it, and checkpoints
                self.assertRegex(b.log(), r"closed: .* [1-9]\d* commits to the log, [1-9]\d* checkpoints")
        p = subprocess.run([STORE_TOOL, "-d", data, "check"], capture_output=True, text=True, timeout=30 * SLOW)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"checked \d+ queues and \d+ messages: 0 problems")
        self.assert_drained(data, "full.q")
        self.assertNotIn("problem:", p.stdout)


    def test_enospc_without_reserve(self):
        """store-reserve = 0: the filesystem itself runs out (ENOSPC on the
        commit).  The messages of the failed commit are refused, nothing
        accepted is lost, consumers drain, and the store checks clean."""
        self.enospc("store-map-size = 1M\nstore-reserve = 0\n")

    def test_enospc_with_the_store_log(self):
        """The same with a 1 MiB store log: the disk runs out while the log
        is moved into LMDB (a checkpoint fails) or while LMDB takes commits
        directly; nothing accepted is lost either way."""
        self.enospc("store-map-size = 1M\nstore-reserve = 0\nstore-log-size = 1M\n", log=True)

    def enospc(self, conf, log=False):
        data = os.path.join(self.mnt, "data")
        b = Broker(name="store-enospc", data_dir=data, broker=conf)
        with b:
            fill = Filler(b.url(), "nospc.q")
            Container(fill).run()
            self.assertTrue(fill.rejected, "%d x 64 KiB accepted on a %s filesystem, none refused"
                            % (len(fill.accepted), FS_SIZE))
            self.assertEqual(LIMIT, fill.rejected[0][1], fill.rejected)
            self.assertRegex(b.log(), r"store '[^']*', commit of \d+ operations failed: no space left")
            self.assertIsNone(b.proc.poll(), "hadrond died")
            drain = Drainer(b.url(), "nospc.q")
            Container(drain).run()
            self.assertEqual(sorted(fill.accepted), drain.got, "consumer did not get exactly what was accepted")
            self.assertEqual([], drain.bad, "bodies damaged")
            b.stop()
            if log:
                self.assertRegex(b.log(), r"closed: .* [1-9]\d* commits to the log, [1-9]\d* checkpoints")
        p = subprocess.run([STORE_TOOL, "-d", data, "check"], capture_output=True, text=True, timeout=30 * SLOW)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)
        self.assertIn("0 problems", p.stdout)
        self.assert_drained(data, "nospc.q")

    def assert_drained(self, data, queue):
        """Every message was consumed and its delete committed: none is left
        on disk to come back at the next start (a delete lost after a
        failed checkpoint would leave its message in LMDB)."""
        p = subprocess.run([STORE_TOOL, "-d", data, "info"], capture_output=True, text=True, timeout=30 * SLOW)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"(?m)^queue '%s' \(id \d+\): 0 messages" % queue)


if __name__ == "__main__":
    hadron_test.main()
