"""Test harness: start a real hadrond on a free loopback port and drive it.

Every system test imports this module.  A Broker writes a config file into a
fresh temporary directory, starts hadrond with it, waits until every
listener has logged its address, and on stop checks that the process exited
cleanly and that no sanitizer reported anything.

Environment (set by tests/Makefile.am; defaults suit a build in the source tree):
  HADROND            the hadrond binary
  HADRON_MODULE_DIR  where route.so lives
  HADRON_TEST_MODULES where the deliberately broken test modules live
  HADRON_SRCDIR      the source tree's tests/ directory
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean

try:
    import proton

    del proton  # only checking that the client is there
except ImportError:
    sys.stderr.write("the system tests need Python proton in %s: install the Debian package "
                     "python3-qpid-proton (and run them with /usr/bin/python3)\n" % sys.executable)
    sys.exit(1)

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
HADROND = os.environ.get("HADROND", os.path.join(TOP, "core", "hadrond"))
MODULE_DIR = os.environ.get("HADRON_MODULE_DIR", os.path.join(TOP, "modules", "route", ".libs"))
TEST_MODULES = os.environ.get("HADRON_TEST_MODULES", os.path.join(TOP, "tests", "modules", ".libs"))
SRCDIR = os.environ.get("HADRON_SRCDIR", os.path.dirname(HERE))
SANITIZED = os.environ.get("HADRON_SANITIZE") == "1"

# Under ASan everything is slower; scale waits instead of hoping.
SLOW = 3.0 if SANITIZED else 1.0

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")

_LISTEN_RE = re.compile(r"listener '([^']+)', listening on (\[[^\]]+\]|[^:\s]+):(\d+)")


class BrokerError(Exception):
    pass


# Every Broker made in this process: main() removes their directories when
# the whole file passed (tests that stop brokers without cleanup() would
# otherwise leave them in /tmp run after run).
_BROKERS = []


class Broker:
    """One hadrond process.

    config: extra config text appended after the generated [broker] and
    [listener amqp] sections.  broker: extra lines for [broker].  listener:
    extra lines for [listener amqp].  listeners=False leaves out the
    default listener (the caller then writes its own).
    """

    def __init__(self, config="", broker="", listener="", listeners=True, name="broker",
                 args=(), env=None, wrapper=None, log_level="info", data_dir=None,
                 module_dir=None):
        self.dir = tempfile.mkdtemp(prefix="hadron-%s-" % name)
        _BROKERS.append(self)
        self.data_dir = data_dir or os.path.join(self.dir, "data")
        self.conf = os.path.join(self.dir, "hadron.conf")
        self.log_path = os.path.join(self.dir, "hadrond.log")
        self.args = list(args)
        self.env = env
        self.wrapper = list(wrapper or [])
        self.proc = None
        self.ports = {}
        text = "[broker]\ndata-dir = %s\nmodule-dir = %s\nlog-level = %s\n%s\n" % (
            self.data_dir, module_dir or MODULE_DIR, log_level, textwrap.dedent(broker))
        if listeners:
            text += "[listener amqp]\nhost = 127.0.0.1\nport = 0\n%s\n" % textwrap.dedent(listener)
        text += textwrap.dedent(config)
        with open(self.conf, "w") as f:
            f.write(text)

    # -- lifecycle -----------------------------------------------------------

    def start(self, expect_listeners=None, timeout=10):
        """Start and wait for the listeners (by default: every [listener])."""
        if expect_listeners is None:
            expect_listeners = self.listener_names()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PN_TRACE")}
        if SANITIZED:
            env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        if self.env:
            env.update(self.env)
        self._log = open(self.log_path, "ab")
        # A restart appends to the same log: only look at what this run writes.
        self._log_start = self._log.tell()
        self.proc = subprocess.Popen(self.wrapper + [HADROND, "-c", self.conf] + self.args,
                                     stdout=self._log, stderr=self._log, env=env)
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            self.ports = self._scan_ports()
            if all(n in self.ports for n in expect_listeners):
                return self
            if self.proc.poll() is not None:
                raise BrokerError("hadrond exited with %s during start-up:\n%s"
                                  % (self.proc.returncode, self.log()))
            time.sleep(0.02)
        self.kill()  # do not leave a half-started broker behind
        raise BrokerError("hadrond did not start listening within %ss:\n%s" % (timeout, self.log()))

    def stop(self, sig=signal.SIGTERM, timeout=20, expect_code=0):
        """Signal the broker and wait; check exit code and sanitizer output."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise BrokerError("hadrond did not stop within %ss after %s:\n%s"
                              % (timeout, signal.Signals(sig).name, self.log()))
        self._log.close()
        self.proc = None
        self.check_log_clean()
        if expect_code is not None and code != expect_code:
            raise BrokerError("hadrond exited with %s (expected %s):\n%s"
                              % (code, expect_code, self.log()))
        return code

    def cleanup(self):
        """Remove the broker's directory (config, log, data); tests that
        pass call this through __exit__, failing ones keep it to look at."""
        if not self.proc:
            shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self):
        """SIGKILL: no drain, no clean-up (crash tests)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc:
            self._log.close()
        self.proc = None

    def restart(self, **kw):
        self.kill()
        return self.start(**kw)

    def __enter__(self):
        if not self.proc:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
            self.cleanup()
        else:
            self.kill()
            sys.stderr.write("---- hadrond log (%s) ----\n%s\n" % (self.log_path, self.log()))
        return False

    # -- helpers --------------------------------------------------------------

    def listener_names(self):
        names = []
        with open(self.conf) as f:
            for line in f:
                m = re.match(r"\s*\[listener\s+(\S+)\s*\]", line)
                if m:
                    names.append(m.group(1))
        return names

    def _scan_ports(self):
        ports = {}
        for m in _LISTEN_RE.finditer(self.log()[getattr(self, "_log_start", 0):]):
            ports.setdefault(m.group(1), int(m.group(3)))
        return ports

    @property
    def port(self):
        return self.ports.get("amqp") or next(iter(self.ports.values()))

    def url(self, listener="amqp", scheme="amqp", user=None, password=None):
        cred = ""
        if user is not None:
            cred = user + (":" + password if password is not None else "") + "@"
        return "%s://%s127.0.0.1:%d" % (scheme, cred, self.ports[listener])

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10, count=1):
        """Wait until `pattern` (regex) appears `count` times in the log."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            if len(rx.findall(self.log())) >= count:
                return True
            time.sleep(0.05)
        raise AssertionError("log never matched %r %d times:\n%s" % (pattern, count, self.log()))

    def check_log_clean(self):
        text = self.log()
        for mark in SANITIZER_MARKS:
            if mark in text:
                raise BrokerError("sanitizer report in hadrond output:\n%s" % text)

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)


def run_hadrond(args, timeout=20, env=None, input=None):
    """Run hadrond to completion (--check-config, --version ...)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run([HADROND] + list(args), capture_output=True, text=True, timeout=timeout * SLOW,
                       env=e, input=input)
    return p.returncode, p.stdout, p.stderr


def write_file(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def raw_socket(port, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    return s


def main():
    """unittest entry point with automake-friendly exit codes."""
    prog = unittest.main(exit=False, verbosity=2)
    ok = prog.result.wasSuccessful()
    if ok:  # a failure keeps every directory, to look at
        for b in _BROKERS:
            b.kill()
            shutil.rmtree(b.dir, ignore_errors=True)
    sys.exit(0 if ok else 1)


# ---- client helpers shared by the messaging tests ---------------------------
#
# Python proton's BlockingConnection tops a receiver's credit up after every
# message and grants 1 whenever it reaches 0; tests that count credit take
# messages from the receiver's queue themselves instead (receiver(), take()).

from proton import UNDESCRIBED, Array, Data, Delivery, Link, Message, Timeout, symbol  # noqa: E402
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import LinkOption  # noqa: E402
from proton.utils import BlockingConnection  # noqa: E402

WAIT = 10 * SLOW
# How long "nothing more arrives" is watched.  Only ever used to look for
# extra traffic, never to prove that something did arrive.
QUIET = 0.5 * SLOW


def passed(test):
    """Has this test passed so far (asked in tearDown)?  unittest has no
    public way to ask; look for it among the result's errors and failures."""
    result = getattr(getattr(test, "_outcome", None), "result", None)
    bad = getattr(result, "errors", []) + getattr(result, "failures", [])
    return not any(getattr(t, "test_case", t) is test for t, _ in bad)


class SharedBroker(unittest.TestCase):
    """One broker for all tests of a class (keyword arguments for Broker in
    `broker_args`).  Its directory is removed only when every test passed."""

    broker_args = {}

    @classmethod
    def setUpClass(cls):
        cls.broker = Broker(**cls.broker_args)
        cls.addClassCleanup(cls.broker.kill)  # also when setUpClass fails
        cls.broker.start()
        cls.all_passed = True

    @classmethod
    def tearDownClass(cls):
        cls.broker.stop()
        if cls.all_passed:
            cls.broker.cleanup()
        else:
            sys.stderr.write("hadrond log kept: %s\n" % cls.broker.log_path)

    def setUp(self):
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            try:
                c.close()
            except Exception:
                pass
        if not passed(self):
            type(self).all_passed = False

    def connect(self):
        c = BlockingConnection(self.broker.url(), timeout=WAIT)
        self.conns.append(c)
        return c


class SecondMode(LinkOption):
    """rcv-settle-mode second: the receiver settles only after the broker
    has, so the broker's settlement of an accept says the removal is
    committed."""

    def apply(self, link):
        link.rcv_settle_mode = Link.RCV_SECOND


class AcceptAndGo(MessagingHandler):
    """Take `n` messages from `address` in rcv-settle-mode second, accept
    each, and close the connection as soon as all are accepted, without
    waiting for the broker's settlements.  `accepted` lists their
    message-ids in arrival order; `settled` counts the broker's settlements
    that came before the close."""

    def __init__(self, url, address, n):
        super().__init__(prefetch=0, auto_accept=False)
        self.url, self.address, self.n = url, address, n
        self.accepted, self.settled = [], 0

    def on_start(self, event):
        self.conn = event.container.connect(self.url, reconnect=False)
        event.container.create_receiver(self.conn, self.address, options=SecondMode()).flow(self.n)

    def on_message(self, event):
        event.delivery.update(Delivery.ACCEPTED)
        self.accepted.append(event.message.id)
        if len(self.accepted) == self.n:
            self.conn.close()

    def on_settled(self, event):
        self.settled += 1


class Caps(LinkOption):
    """Terminus capabilities on the link's node end (source of a receiver,
    target of a sender)."""

    def __init__(self, *caps):
        self.caps = caps

    def apply(self, link):
        t = link.source if link.is_receiver else link.target
        t.capabilities.put_object(Array(UNDESCRIBED, Data.SYMBOL, *[symbol(c) for c in self.caps]))


def caps_of(terminus):
    """The capabilities of a terminus as a list of str."""
    data = terminus.capabilities
    data.rewind()
    if data.next() is None:
        return []
    obj = data.get_object()
    return [str(x) for x in obj.elements] if isinstance(obj, Array) else [str(obj)]


def receiver(conn, address, credit, **kw):
    """A receiver granted exactly `credit` once."""
    r = conn.create_receiver(address, credit=0, **kw)
    if credit:
        r.link.flow(credit)
    return r


def take(conn, r, timeout=WAIT):
    """Next (message, delivery), granting no extra credit."""
    conn.wait(lambda: r.fetcher.has_message, timeout=timeout, msg="waiting for a message")
    return r.fetcher.incoming.popleft()


def quiet(conn, seconds=QUIET):
    """Let the connection run for a while (to see if anything else arrives)."""
    try:
        conn.wait(lambda: False, timeout=seconds)
    except Timeout:
        pass


def send_wait(conn, sender, msg):
    """Send unsettled and wait for the broker's outcome; returns the delivery."""
    conn.wait(lambda: sender.link.credit > 0, timeout=WAIT, msg="waiting for credit")
    dlv = sender.link.send(msg)
    conn.wait(lambda: dlv.remote_state or dlv.settled, timeout=WAIT, msg="waiting for an outcome")
    return dlv


def sync(conn):
    """Round trip on conn: the broker has handled every frame sent before
    (it answers an attach only after processing what preceded it)."""
    sync.n += 1
    conn.create_sender("sync.%d" % sync.n, name="sync-%d" % sync.n).close()


sync.n = 0


def round_trip(url, address="rt.q", **kw):
    """Send one message and receive it back on the same connection; raises
    if it does not come back intact, returns True otherwise."""
    body = "m-%f" % time.time()
    c = BlockingConnection(url, timeout=WAIT, **kw)
    try:
        c.create_sender(address).send(Message(body=body))
        r = c.create_receiver(address)
        m = r.receive(timeout=WAIT)
        r.accept()
    finally:
        c.close()
    assert m.body == body, (m.body, body)
    return True
