"""A second, independent AMQP 1.0 client stack against the broker: rhea (Node.js).

Each scenario is a script in tests/system/rhea/ that talks to a fresh broker
and exits 0 only if everything it observed was as expected.  The rhea package
comes from tests/system/package-lock.json: `npm ci --prefix tests/system`.
"""

import glob
import os
import subprocess
import sys
import unittest

import hadron_test
from hadron_test import Broker, SLOW, main

SRCDIR = os.environ.get("HADRON_SRCDIR") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
SYSTEM_DIR = os.path.join(SRCDIR, "system")
SCRIPT_DIR = os.path.join(SYSTEM_DIR, "rhea")
NODE_MODULES = os.path.join(SYSTEM_DIR, "node_modules")
# configure substitutes NODE; an empty value means "whatever node is on PATH".
NODE = os.environ.get("NODE") or "node"

# The scripts time themselves out after 15 s (x SLOW); this only catches a
# script whose own watchdog failed.
SCRIPT_TIMEOUT = 40 * SLOW


class RheaTest(unittest.TestCase):

    def setUp(self):
        if not os.path.isfile(os.path.join(NODE_MODULES, "rhea", "package.json")):
            self.fail("the rhea client is not installed in %s: run `npm ci --prefix tests/system` "
                      "in the source tree" % NODE_MODULES)

    def run_script(self, name, **broker_args):
        script = os.path.join(SCRIPT_DIR, name)
        self.assertTrue(os.path.isfile(script), "missing scenario script %s" % script)
        with Broker(name="rhea", **broker_args) as b:
            env = dict(os.environ)
            env["HADRON_PORT"] = str(b.port)
            env["NODE_PATH"] = NODE_MODULES
            env["HADRON_SANITIZE"] = "1" if hadron_test.SANITIZED else "0"
            try:
                p = subprocess.run([NODE, script], cwd=SYSTEM_DIR, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   timeout=SCRIPT_TIMEOUT)
            except FileNotFoundError:
                self.fail("Node.js not found (NODE=%r)" % NODE)
            except subprocess.TimeoutExpired as e:
                self.fail("%s did not finish within %ss:\n%s"
                          % (name, SCRIPT_TIMEOUT, (e.output or b"").decode("utf-8", "replace")))
            out = p.stdout.decode("utf-8", "replace")
            sys.stderr.write(out)
            # On failure the harness adds the broker's log to the output.
            if p.returncode != 0:
                self.fail("%s exited with %s:\n%s" % (name, p.returncode, out))
            # A script that exits 0 without reaching its end would be a defect.
            lines = out.splitlines()
            self.assertTrue(lines and lines[-1].endswith("PASS"),
                            "%s exited 0 without reporting PASS:\n%s" % (name, out))

    def test_send_receive(self):
        """Messages sent with rhea arrive in order with bodies and application properties intact;
        accepted messages are gone."""
        self.run_script("send_receive.js")

    def test_competing_consumers(self):
        """Two rhea receivers on one queue get distinct messages that together are all of them."""
        self.run_script("competing_consumers.js")

    def test_fanout(self):
        """Every rhea receiver on a topic gets every message."""
        self.run_script("fanout.js")

    def test_outcomes(self):
        """accept, release, modify (delivery-failed / undeliverable-here) and reject, from rhea."""
        self.run_script("outcomes.js")

    def test_credit(self):
        """A rhea receiver managing its own credit gets exactly as many messages as it granted."""
        self.run_script("credit.js")

    def test_relay(self):
        """The broker offers ANONYMOUS-RELAY and routes rhea's anonymous sender by `to`."""
        self.run_script("relay.js")

    def test_dynamic(self):
        """Request/reply over a rhea dynamic receiver (temporary queue)."""
        self.run_script("dynamic.js")

    def test_every_script_has_a_test(self):
        """A scenario script added to rhea/ without a test here would never run."""
        scripts = {os.path.basename(p) for p in glob.glob(os.path.join(SCRIPT_DIR, "*.js"))}
        scripts.discard("common.js")
        tested = {name[len("test_"):] + ".js" for name in dir(self) if name.startswith("test_")}
        self.assertTrue(scripts, "no scenario scripts in %s" % SCRIPT_DIR)
        self.assertEqual(sorted(scripts - tested), [])


if __name__ == "__main__":
    main()
