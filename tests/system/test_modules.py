"""Modules in a real hadrond: the route module loads and acts, missing and
broken modules stop the start with the precise reason, module config errors
name FILE:LINE."""

import os
import re
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, MODULE_DIR, SLOW, TEST_MODULES, run_hadrond, write_file  # noqa: E402

from proton import Delivery, Message  # noqa: E402
from proton.utils import BlockingConnection, LinkDetached, SendException  # noqa: E402


def config(module_dir, body):
    """A whole config file: [broker] with module-dir, one listener, then `body`."""
    return ("[broker]\ndata-dir = %%s\nmodule-dir = %s\n[listener amqp]\nhost = 127.0.0.1\nport = 0\n%s"
            % (module_dir, body))


def line_of(path, text):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if text in line:
                return n
    raise AssertionError("%r not in %s" % (text, path))


class Modules(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="hadron-mod-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def write(self, module_dir, body):
        text = config(module_dir, body) % os.path.join(self.tmp, "data")
        return write_file(self.tmp, "hadron.conf", text)

    def refused(self, path):
        """Start hadrond on `path` and also --check-config it: both exit 1 with one line on stderr."""
        errs = []
        for extra in ([], ["--check-config"]):
            code, out, err = run_hadrond(["-c", path] + extra)
            self.assertEqual(code, 1, "%s: exit %s\n%s" % (extra, code, err))
            lines = err.strip().splitlines()
            self.assertEqual(len(lines), 1, "one error line expected:\n%s" % err)
            errs.append(lines[0])
        return errs

    def test_route_loads_and_routes(self):
        """[module route] loads (logged with its file) and its rules decide node types."""
        with Broker(config="[module route]\nrule = fan.# topic\n") as b:
            b.wait_log(r"module 'route', loaded route version \S+ from %s/route\.so"
                       % re.escape(MODULE_DIR))
            c = BlockingConnection(b.url(), timeout=10 * SLOW)
            # A topic: both subscribers get the message.
            r1 = c.create_receiver("fan.news", name="sub1")
            r2 = c.create_receiver("fan.news", name="sub2")
            c.create_sender("fan.news").send(Message(body="to all"))
            self.assertEqual(r1.receive(timeout=10 * SLOW).body, "to all")
            self.assertEqual(r2.receive(timeout=10 * SLOW).body, "to all")
            r1.accept()
            r2.accept()
            c.close()

    def test_check_config_counts_module(self):
        """--check-config loads the module and counts it."""
        path = self.write(MODULE_DIR, "[module route]\nrule = a.# queue\n")
        code, out, err = run_hadrond(["-c", path, "--check-config"])
        self.assertEqual(code, 0, err)
        self.assertIn("(1 listeners, 1 modules)", out)

    def test_no_such_module(self):
        """[module nosuch]: exit 1, one line naming the module, its file and 'no such file'."""
        path = self.write(MODULE_DIR, "[module nosuch]\n")
        for line in self.refused(path):
            self.assertIn("module 'nosuch'", line)
            self.assertIn(os.path.join(MODULE_DIR, "nosuch.so"), line)
            self.assertIn("no such file", line)

    def broken(self, name):
        so = os.path.join(TEST_MODULES, name + ".so")
        if not os.path.exists(so):
            self.skipTest("%s is missing; `make check TESTS=` builds the test modules" % so)
        path = self.write(TEST_MODULES, "[module %s]\n" % name)
        lines = self.refused(path)
        for line in lines:
            self.assertIn("module '%s' (%s)" % (name, so), line)
        return lines[0]

    def test_bad_abi(self):
        """A module built for another ABI major is refused, with both ABI numbers."""
        self.assertRegex(self.broken("bad_abi"), r"built for module ABI 2, this broker has ABI 1")

    def test_no_symbol(self):
        """A shared object without hd_module_descriptor is refused as not a Hadron module."""
        self.assertRegex(self.broken("no_symbol"), r"no hd_module_descriptor symbol: not a Hadron module")

    def test_wrong_name(self):
        """A file whose descriptor names another module is refused, naming both."""
        self.assertRegex(self.broken("wrong_name"), r"the file holds module 'someone_else'")

    def test_bad_signature(self):
        """A module built against another proton/OpenSSL/sanitizer setup is refused, showing both signatures."""
        line = self.broken("bad_signature")
        self.assertRegex(line, r"build signature 'abi1/proton0\.1/openssl0' differs from the broker's 'abi1/\S+'")

    def test_small_descriptor(self):
        """A descriptor shorter than the ABI requires is refused, with both sizes."""
        self.assertRegex(self.broken("small_desc"),
                         r"descriptor size \d+ is smaller than ABI 1 requires \(\d+\)")

    def test_unknown_key_in_module(self):
        """An unknown key in [module route] is a FILE:LINE error listing the module's keys."""
        path = self.write(MODULE_DIR, "[module route]\nrule = a.# queue\nrules = b.# topic\n")
        n = line_of(path, "rules = b.#")
        for line in self.refused(path):
            self.assertIn("%s:%d:" % (path, n), line)
            self.assertIn("unknown key 'rules' in [module route]", line)
            self.assertIn("rule", line)
            self.assertIn("alias", line)

    def test_bad_route_rule(self):
        """A malformed route rule is refused with the FILE:LINE of that rule."""
        cases = (("rule = a.b.# queue\nrule = x..y queue\n", "rule = x..y", "empty word"),
                 ("rule = a.# exchange\n", "rule = a.#", "must be queue, topic or any"),
                 ("rule = a.# max-deliveries=lots\n", "rule = a.#", "max-deliveries"),
                 ("alias = lonely\n", "alias = lonely", "alias 'lonely'"))
        for body, marker, words in cases:
            with self.subTest(marker):
                path = self.write(MODULE_DIR, "[module route]\n" + body)
                n = line_of(path, marker)
                for line in self.refused(path):
                    self.assertIn("%s:%d:" % (path, n), line)
                    self.assertIn(words, line)

    def test_bad_rule_at_reload(self):
        """A bad route rule at SIGHUP is refused; the rules in force keep working."""
        with Broker(config="[module route]\nrule = fan.# topic\n") as b:
            with open(b.conf) as f:
                text = f.read()
            with open(b.conf, "w") as f:
                f.write(text.replace("rule = fan.# topic", "rule = fan.# topic\nrule = #.bad.#x queue"))
            b.reload()
            b.wait_log(r"reload failed, keeping the running configuration: .*hadron\.conf:\d+")
            c = BlockingConnection(b.url(), timeout=10 * SLOW)
            r1 = c.create_receiver("fan.more", name="sub1")
            r2 = c.create_receiver("fan.more", name="sub2")
            c.create_sender("fan.more").send(Message(body="still a topic"))
            self.assertEqual(r1.receive(timeout=10 * SLOW).body, "still a topic")
            self.assertEqual(r2.receive(timeout=10 * SLOW).body, "still a topic")
            c.close()


class Probe(unittest.TestCase):
    """The probe test module's hooks, driven through a real broker."""

    def setUp(self):
        so = os.path.join(TEST_MODULES, "probe.so")
        if not os.path.exists(so):
            self.skipTest("%s is missing; `make check TESTS=` builds the test modules" % so)
        self.tmp = tempfile.mkdtemp(prefix="hadron-probe-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def broker(self, body):
        text = config(TEST_MODULES, body) % os.path.join(self.tmp, "data")
        b = Broker(listeners=False)
        write_file(b.dir, "hadron.conf", text)
        return b

    def test_hooks_in_a_real_broker(self):
        """A module's link and node hooks decide attaches and node limits in a running broker."""
        with self.broker("[module probe]\nlevel = 3\n") as b:
            b.wait_log(r"module 'probe', loaded probe version 1\.0-test")
            c = BlockingConnection(b.url(), timeout=10 * SLOW)
            with self.assertRaises(LinkDetached) as cm:
                c.create_sender("deny.me")
            self.assertEqual(cm.exception.condition, "amqp:unauthorized-access")
            # probe.* nodes get max-depth = level (3).
            s = c.create_sender("probe.q")
            for i in range(3):
                s.send(Message(body=i))
            with self.assertRaises(SendException) as cm:
                s.send(Message(body="one too many"))
            self.assertEqual(cm.exception.state, Delivery.REJECTED)
            c.close()

    def test_init_failure_stops_start(self):
        """A module whose init fails stops hadrond with exit 1 and the module's reason."""
        b = self.broker("[module probe]\nlevel = 10\n")
        code, out, err = run_hadrond(["-c", b.conf])
        self.assertEqual(code, 1, err)
        self.assertIn("module 'probe', init failed: level 10 makes init fail (test)", err)

    def test_module_check_config(self):
        """The module's own config check refuses a value, pointing at FILE:LINE."""
        b = self.broker("[module probe]\nallow = fine\nallow = forbidden\n")
        code, out, err = run_hadrond(["-c", b.conf, "--check-config"])
        self.assertEqual(code, 1, err)
        self.assertIn("allow = forbidden at %s:%d" % (b.conf, line_of(b.conf, "allow = forbidden")), err)


if __name__ == "__main__":
    hadron_test.main()
