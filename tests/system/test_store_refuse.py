"""Stores hadrond must refuse to start on, and the hadron-store tool.

The stores come from committed text dumps (fixtures/*.dump, see
fixtures/README) loaded with mdb_load, or from a real store damaged on
purpose.  A refusal must exit 1, say which store and what is wrong, and
change nothing: data.mdb keeps its bytes and its mtime, and no other file
appears.  (lock.mdb is LMDB's reader table, created or rewritten by every
open, even a read-only one; it holds no data and is not compared.)

The lock on a data-dir (a second hadrond refuses) is tested in
test_config_cli.py.
"""

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, SLOW, HADROND  # noqa: E402

from proton import Message, Timeout  # noqa: E402
from proton.utils import BlockingConnection  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
STORE_TOOL = os.environ.get("HADRON_STORE_TOOL", os.path.join(os.path.dirname(HADROND), "hadron-store"))
MDB_LOAD = shutil.which("mdb_load")
MDB_DUMP = shutil.which("mdb_dump")


def store_tool(*args):
    p = subprocess.run([STORE_TOOL] + list(args), capture_output=True, text=True, timeout=30 * SLOW)
    return p.returncode, p.stdout, p.stderr


def snapshot(store_dir):
    """What a refusal must not change: the files there, data.mdb's bytes and mtime."""
    data = os.path.join(store_dir, "data.mdb")
    with open(data, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    st = os.stat(data)
    files = sorted(n for n in os.listdir(store_dir) if n != "lock.mdb")
    return files, digest, st.st_size, st.st_mtime_ns


class StoreCase(unittest.TestCase):
    def setUp(self):
        # A Broker object only for its directory and config; hadrond is run by hand.
        self.b = Broker(name="store-refuse")
        self.addCleanup(self.b.cleanup)
        self.store = os.path.join(self.b.data_dir, "store")

    def load(self, fixture):
        """Make data-dir/store from fixtures/NAME.dump."""
        if not MDB_LOAD:
            self.skipTest("mdb_load not found: install lmdb-utils (Debian) to run the store fixture tests")
        os.makedirs(self.store)
        p = subprocess.run([MDB_LOAD, "-f", os.path.join(FIXTURES, fixture + ".dump"), self.store],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(0, p.returncode, "mdb_load %s: %s" % (fixture, p.stderr))

    def damaged_copies(self, words):
        """For each page after the two meta pages and each (offset, value)
        in words: write data.mdb as loaded, with that 16-bit word of that
        page set, and yield (a description, the damaged bytes)."""
        page = os.sysconf("SC_PAGE_SIZE")  # LMDB's page size is the OS page size
        path = os.path.join(self.store, "data.mdb")
        with open(path, "rb") as f:
            original = f.read()
        for pg in range(2, len(original) // page):
            for off, val in words:
                b = bytearray(original)
                b[pg * page + off:pg * page + off + 2] = val.to_bytes(2, "little")
                with open(path, "wb") as f:
                    f.write(b)
                yield "page %d, 16-bit word at %d = %#x" % (pg, off, val), b

    def start_watching(self):
        """Start hadrond on this store; return it, what it logged until it
        listened or exited, and its port (None: it did not listen)."""
        p = subprocess.Popen([HADROND, "-c", self.b.conf], stderr=subprocess.PIPE, text=True)
        out = []
        for line in p.stderr:
            out.append(line)
            m = re.search(r"listening on .*:(\d+)", line)
            if m:
                return p, out, m.group(1)
        return p, out, None

    @staticmethod
    def finish(p, out):
        """Wait for a process from start_watching; its exit status and all it logged."""
        out = "".join(out) + p.stderr.read()
        p.stderr.close()
        return p.wait(timeout=10 * SLOW), out

    def refused(self):
        """Run hadrond on the store; it must exit 1 and leave the store as it was."""
        before = snapshot(self.store)
        try:
            p = subprocess.run([HADROND, "-c", self.b.conf], capture_output=True, text=True, timeout=10 * SLOW)
        except subprocess.TimeoutExpired as e:  # run() has killed it
            self.fail("hadrond did not exit after refusing the store:\n%s"
                      % ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace"))
        out = p.stdout + p.stderr
        self.assertEqual(1, p.returncode, out)
        self.assertEqual(before, snapshot(self.store), "the refused store was changed")
        self.assertIn("store %s" % self.store, out, "the message does not name the store")
        self.assertNotIn("listening on", out)
        return out


class RefuseTest(StoreCase):
    def test_other_format_version(self):
        """A store of format 4: refused, naming the formats; unchanged."""
        self.load("store-format4")
        out = self.refused()
        self.assertIn("has format 4, this hadrond reads formats 1 to 3 only", out)
        self.assertIn("nothing was changed", out)

    def test_garbage_data_file(self):
        """data.mdb that is not an LMDB file at all: refused as corrupt."""
        os.makedirs(self.store)
        with open(os.path.join(self.store, "data.mdb"), "wb") as f:
            f.write(random.Random(3).randbytes(64 * 1024))
        out = self.refused()
        self.assertRegex(out, r"is corrupt|unreadable")

    def test_zeroed_pages(self):
        """A real store whose pages after the two meta pages were zeroed (a
        torn or lost write): refused as corrupt or unreadable."""
        self.load("store-v1")
        page = os.sysconf("SC_PAGE_SIZE")  # LMDB's page size is the OS page size
        path = os.path.join(self.store, "data.mdb")
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            self.assertGreater(size, 2 * page)
            f.seek(2 * page)
            f.write(bytes(size - 2 * page))
        out = self.refused()
        self.assertRegex(out, r"corrupt|unreadable")

    def test_damaged_page_headers(self):
        """LMDB keeps no checksums, and a page whose header was damaged can
        make it read outside the page or fail an assertion.  For damage to
        each page of a real store: hadrond starts (the page is not one it
        reads at start-up) or refuses the store, exit 1, with a message
        naming it, and leaves it unchanged: it never dies of a signal.
        hadron-store check never does either.  Some of these damages make
        LMDB crash (signals 11, 7, 6 here), and the refusal says so."""
        self.load("store-v1")
        path = os.path.join(self.store, "data.mdb")
        crashes = set()
        # (offset in the page, value): mp_lower, mp_upper, mp_flags, first node offset
        damages = ((12, 0), (12, 0xFFFF), (14, 0), (10, 1), (16, 0xFFFF))
        for what, b in self.damaged_copies(damages):
            before = snapshot(self.store)
            p, out, port = self.start_watching()
            if port:
                p.terminate()
            rc, out = self.finish(p, out)
            if not port:
                self.assertEqual(1, rc, "%s: hadrond exited %d:\n%s" % (what, rc, out))
                self.assertIn("store %s" % self.store, out, what)
                self.assertEqual(before, snapshot(self.store), "%s: the refused store was changed" % what)
                m = re.search(r"damaged, LMDB crashed \(signal (\d+)\)", out)
                if m:
                    crashes.add(int(m.group(1)))
            else:
                self.assertEqual(0, rc, "%s: hadrond started, then exited %d:\n%s" % (what, rc, out))
            with open(path, "wb") as f:  # a started broker may have written
                f.write(b)
            code, sout, serr = store_tool("-d", self.b.data_dir, "check")
            self.assertIn(code, (0, 1), "%s: hadron-store check exited %d:\n%s%s" % (what, code, sout, serr))
        self.assertTrue(crashes, "no damage made LMDB crash: the guard was not exercised")

    def test_damage_found_while_writing(self):
        """Damage that start-up does not read (a page's mp_upper, which only
        inserting looks at) makes LMDB crash when the writer reaches it.
        hadrond then stops with exit 1 and a line naming the store and
        saying that nothing acknowledged is lost; the message it was
        writing was never accepted.  Never a bare signal."""
        self.load("store-v1")
        stopped = 0
        for what, _ in self.damaged_copies(((14, 0),)):  # mp_upper = 0
            p, out, port = self.start_watching()
            accepted = False
            if port:
                try:
                    c = BlockingConnection("amqp://127.0.0.1:%s" % port, timeout=5 * SLOW)
                    c.create_sender("damaged.q").send(Message(body="x", durable=True))
                    accepted = True
                    c.close()
                except Exception:  # the broker went away: see how below
                    pass
                if accepted:
                    p.terminate()
            rc, out = self.finish(p, out)
            self.assertGreaterEqual(rc, 0, "%s: hadrond died of signal %d:\n%s" % (what, -rc, out))
            if port and not accepted:
                self.assertEqual(1, rc, "%s:\n%s" % (what, out))
                self.assertRegex(out, r"store %s: damaged, LMDB crashed \(signal \d+\) while writing to it; "
                                 r".*nothing acknowledged is lost" % re.escape(self.store), what)
                stopped += 1
                if stopped == 1:
                    self.salvage_keeps_messages(what)
        self.assertGreater(stopped, 0, "no damage was found while writing: the guard was not exercised")

    def salvage_keeps_messages(self, what):
        """hadron-store(1), DAMAGED STORES: copying the readable records into
        a new store with mdb_dump and mdb_load keeps every message."""
        if not MDB_DUMP:
            self.skipTest("mdb_dump not found: install lmdb-utils (Debian)")
        dump = subprocess.run([MDB_DUMP, "-a", self.store], capture_output=True, timeout=30)
        self.assertEqual(0, dump.returncode, "%s: mdb_dump: %s" % (what, dump.stderr))
        fresh = Broker(name="store-salvaged")
        self.addCleanup(fresh.cleanup)
        os.makedirs(os.path.join(fresh.data_dir, "store"))
        load = subprocess.run([MDB_LOAD, os.path.join(fresh.data_dir, "store")], input=dump.stdout,
                              capture_output=True, timeout=30)
        self.assertEqual(0, load.returncode, "%s: mdb_load: %s" % (what, load.stderr))
        code, out, err = store_tool("-d", fresh.data_dir, "check")
        self.assertEqual(0, code, "%s: the salvaged store: %s%s" % (what, out, err))
        with fresh:
            self.assertEqual(["one", "two", "three"], receive_bodies(fresh.url(), "fx.q"), what)

    def test_not_a_hadron_store(self):
        """An LMDB environment written by some other program: refused."""
        self.load("not-hadron")
        out = self.refused()
        self.assertIn("not a Hadron store", out)


class FixtureStartTest(StoreCase):
    def test_format1_fixture_starts(self):
        """The committed format-1 store starts and serves its three messages:
        this build still reads what format 1 means."""
        self.load("store-v1")
        with self.b:
            self.assertIn("queue 'fx.q', recovered 3 messages", self.b.log())
            self.assertEqual(["one", "two", "three"], receive_bodies(self.b.url(), "fx.q"))
            # Raised to format 3 before the first commit to the log (here the
            # deletes of the three messages), not at start-up.
            self.b.stop()
            self.assertIn("upgraded from format 1 to 3", self.b.log())
            code, out, err = store_tool("-d", self.b.data_dir, "info")
            self.assertEqual(0, code, err)
            self.assertRegex(out, r"(?m)^store .*: format 3, \d+ KiB used of a \d+ KiB map, 0 messages$")

    def test_format2_store_with_a_log_is_replayed_and_upgraded(self):
        """A format-2 store that a crash left with commits only in its log
        (written by the last hadrond of format 2; fixtures/README): its log
        is replayed (a delete of a message in LMDB, two puts), the queue
        serves what was left in order, and the replay's checkpoint raises
        the store to format 3."""
        self.load("store-v2-log")
        with open(os.path.join(FIXTURES, "store-v2-log.log.hex")) as f:
            log = bytes.fromhex(f.read())
        with open(os.path.join(self.store, "log"), "wb") as f:
            f.write(log)
        with self.b:
            out = self.b.log()
            self.assertIn("replayed 4 batches (5 operations) from its log", out)
            self.assertIn("upgraded from format 2 to 3", out)
            self.assertIn("queue 'f2.q', recovered 2 messages", out)
            self.assertEqual(["two", "three"], receive_bodies(self.b.url(), "f2.q"))
            self.b.stop()
            code, out, err = store_tool("-d", self.b.data_dir, "info")
            self.assertEqual(0, code, out + err)
            self.assertRegex(out, r"(?m)^store .*: format 3, \d+ KiB used of a \d+ KiB map, 0 messages$")
            code, out, err = store_tool("-d", self.b.data_dir, "check")
            self.assertEqual(0, code, out + err)

    def test_unreadable_record_is_skipped(self):
        """A stored message that is not valid AMQP does not stop start-up:
        it is logged and skipped (left on disk), the others are delivered."""
        self.load("store-bad-record")
        with self.b:
            self.assertRegex(self.b.log(), r"queue 'fx.q', stored message 2 is unreadable")
            self.assertEqual(["one", "three"], receive_bodies(self.b.url(), "fx.q"))


def receive_bodies(url, address):
    c = BlockingConnection(url, timeout=10 * SLOW)
    r = c.create_receiver(address, credit=10)
    got = []
    while True:
        try:
            got.append(r.receive(timeout=1 * SLOW).body)
        except Timeout:
            break
        r.accept()
    c.close()
    return got


class ToolTest(StoreCase):
    def test_info_and_check_healthy(self):
        """info and check on a healthy store, also while hadrond runs on it:
        exit 0, the format, the queue and its count, no problems."""
        self.load("store-v1")
        code, out, err = store_tool("-d", self.b.data_dir, "info")
        self.assertEqual(0, code, err)
        self.assertRegex(out, r"(?m)^store .*: format [13](?: \(older: hadrond raises it before it logs a commit\))?, \d+ KiB used of a \d+ KiB map, 3 messages$")
        self.assertIn("queue 'fx.q' (id 1): 3 messages", out)
        code, out, err = store_tool("-d", self.b.data_dir, "check")
        self.assertEqual((0, ""), (code, err), out)
        self.assertIn("checked 1 queues and 3 messages: 0 problems", out)
        self.assertNotIn("problem:", out)

        with self.b:
            c = BlockingConnection(self.b.url(), timeout=10 * SLOW)
            s = c.create_sender("fx.q")
            s.send(Message(body="four", durable=True))
            s.send(Message(body="five", durable=True))
            c.close()
            code, out, err = store_tool("-d", self.b.data_dir, "info")
            self.assertEqual(0, code, err)
            self.assertIn("queue 'fx.q' (id 1): 5 messages", out)
            code, out, err = store_tool("-d", self.b.data_dir, "check")
            self.assertEqual(0, code, out + err)
            self.assertIn("checked 1 queues and 5 messages: 0 problems", out)

    def damaged(self, fixture, problem):
        """check finds `problem` (exit 1); info still works; neither writes."""
        self.load(fixture)
        before = snapshot(self.store)
        code, out, err = store_tool("-d", self.b.data_dir, "check")
        self.assertEqual(1, code, out + err)
        problems = [line for line in out.splitlines() if line.startswith("problem: ")]
        self.assertEqual([problem], problems, out)
        self.assertIn("checked 1 queues and 3 messages: 1 problems", out)
        code, out, err = store_tool("-d", self.b.data_dir, "info")
        self.assertEqual(0, code, err)
        self.assertIn("queue 'fx.q' (id 1):", out)
        self.assertEqual(before, snapshot(self.store), "hadron-store changed the store")
        return out

    def test_check_finds_invalid_message(self):
        """A record whose message is not valid AMQP: one problem naming it."""
        self.damaged("store-bad-record",
                     "problem: message 2 of node 1 is not a valid AMQP message: malformed message section")

    def test_check_finds_count_mismatch(self):
        """A queue count that does not match the records: one problem."""
        out = self.damaged("store-bad-count", "problem: node 1 counts 5 messages but holds 3")
        self.assertIn("queue 'fx.q' (id 1): 5 messages", out)  # info reports what is recorded

    def test_other_format(self):
        """Another format: info says so (exit 0), check reports it (exit 1)."""
        self.load("store-format4")
        code, out, err = store_tool("-d", self.b.data_dir, "info")
        self.assertEqual(0, code, err)
        self.assertIn("format 4 (not a format this build reads)", out)
        code, out, err = store_tool("-d", self.b.data_dir, "check")
        self.assertEqual(1, code, out + err)
        self.assertIn("problem: format 4, this build reads formats 1 to 3", out)

    def test_not_a_store(self):
        """No store, or not a Hadron store: exit 1 with a message on stderr."""
        code, out, err = store_tool("-d", os.path.join(self.b.dir, "nowhere"), "info")
        self.assertEqual((1, ""), (code, out))
        self.assertIn("no store here", err)
        self.load("not-hadron")
        for cmd in ("info", "check"):
            code, out, err = store_tool("-d", self.b.data_dir, cmd)
            self.assertEqual((1, ""), (code, out), cmd)
            self.assertIn("not a Hadron store", err, cmd)

    def test_usage(self):
        """--help: usage on stdout, exit 0; a bad command, a bad option or no
        command: usage on stderr, exit 2."""
        code, out, err = store_tool("--help")
        self.assertEqual((0, ""), (code, err))
        self.assertRegex(out, r"^usage: hadron-store .*info\|check")
        for args, why in ((["-d", self.b.data_dir, "repair"], "unknown command 'repair'"),
                          (["--bogus", "info"], "usage:"),
                          ([], "usage:"),
                          (["info", "check"], "usage:")):
            code, out, err = store_tool(*args)
            self.assertEqual((2, ""), (code, out), args)
            self.assertIn(why, err, args)
        code, out, err = store_tool("--version")
        self.assertEqual(0, code)
        self.assertRegex(out, r"^hadron-store \S+ \(store format 3\)$")


if __name__ == "__main__":
    hadron_test.main()
