"""hadrond's command line and configuration checking, run as a real process."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, HADROND, SLOW, round_trip, run_hadrond, write_file# noqa: E402

from proton import ConnectionException  # noqa: E402


class CommandLine(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="hadron-cli-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def check(self, conf_text):
        """Write conf_text to a file and run --check-config on it."""
        path = write_file(self.tmp, "hadron.conf", conf_text)
        code, out, err = run_hadrond(["-c", path, "--check-config"])
        return path, code, out, err

    def test_version(self):
        """--version prints 'hadrond X.Y.Z' and exits 0."""
        code, out, err = run_hadrond(["--version"])
        self.assertEqual(code, 0, err)
        self.assertRegex(out.strip(), r"^hadrond \d+\.\d+\.\d+\S*$")

    def test_help(self):
        """--help documents every option on stdout and exits 0."""
        code, out, err = run_hadrond(["--help"])
        self.assertEqual(code, 0, err)
        for opt in ("-c", "--check-config", "--hash-password", "--print-default-config",
                    "--version", "--help"):
            self.assertIn(opt, out)

    def test_bad_usage(self):
        """An unknown option or a stray argument is a usage error: exit 2, usage on stderr."""
        for args in (["--no-such-option"], ["stray"]):
            with self.subTest(args=args):
                code, out, err = run_hadrond(args)
                self.assertEqual(code, 2, out + err)
                self.assertIn("usage:", err)

    def test_print_default_config(self):
        """--print-default-config prints a config that --check-config accepts: one listener on 5672."""
        code, out, err = run_hadrond(["--print-default-config"])
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"(?m)^\[listener \S+\]")
        self.assertRegex(out, r"(?m)^port\s*=\s*5672\s*$")
        self.assertRegex(out, r"(?m)^host\s*=\s*127\.0\.0\.1\s*$")
        path, code, out2, err2 = self.check(out)
        self.assertEqual(code, 0, err2)
        self.assertIn("configuration ok (1 listeners, 0 modules)", out2)

    def test_check_config_ok(self):
        """--check-config on a good file exits 0 and counts listeners and modules."""
        path, code, out, err = self.check("""\
            [broker]
            data-dir = /nonexistent/never-created
            module-dir = %s
            log-level = debug
            memory-limit = 1M
            [listener one]
            port = 0
            [listener two]
            host = 127.0.0.1
            port = 0
            max-frame-size = 64K
            idle-timeout = 30s
            [queue orders]
            max-depth = 10
            [topic news]
            [module route]
            rule = a.# queue
            """ % hadron_test.MODULE_DIR)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "%s: configuration ok (2 listeners, 1 modules)" % path)

    def test_check_config_errors(self):
        """Each kind of configuration error exits 1 with one 'FILE:LINE: ...' message naming the problem."""
        users = write_file(self.tmp, "users", "")
        cases = [
            # (name, config, line of the error, words the message must contain)
            ("unknown key", "[broker]\nlog-level = info\nno-such-key = 1\n[listener a]\n",
             3, ["unknown key 'no-such-key'", "[broker]", "log-level"]),
            ("unknown key in listener", "[listener a]\nport = 0\nhots = x\n",
             3, ["unknown key 'hots'", "[listener a]"]),
            ("unknown section", "[listener a]\nport = 0\n\n[exchange x]\n",
             4, ["unknown section [exchange]"]),
            ("not an integer", "[listener a]\nmax-sessions = lots\n",
             2, ["max-sessions = lots", "integer"]),
            ("integer out of range", "[listener a]\nmax-sessions = 0\n",
             2, ["max-sessions = 0", "between 1 and 65536"]),
            ("port out of range", "[listener a]\nport = 70000\n",
             2, ["port = 70000", "between 0 and 65535"]),
            ("memory-limit below 1M", "[broker]\nmemory-limit = 512K\n[listener a]\n",
             2, ["memory-limit = 512K", "between"]),
            ("bad size", "[listener a]\nmax-frame-size = big\n",
             2, ["max-frame-size = big", "size"]),
            ("bad duration", "[listener a]\nidle-timeout = soon\n",
             2, ["idle-timeout = soon", "duration"]),
            ("bad bool", "[broker]\nauto-create = perhaps\n[listener a]\n",
             2, ["auto-create = perhaps", "yes or no"]),
            ("bad enum", "[broker]\nlog-level = loud\n[listener a]\n",
             2, ["log-level = loud", "debug"]),
            ("bad mechanism", "[listener a]\nsasl-mechanisms = ANONYMOUS GSSAPI\n",
             2, ["sasl-mechanisms", "PLAIN"]),
            ("repeated key", "[listener a]\nport = 0\nhost = 127.0.0.1\nport = 1\n",
             4, ["'port' is already set", ":2"]),
            ("missing listener name", "[broker]\n[listener]\nport = 0\n",
             2, ["[listener] needs a name"]),
            ("duplicate listener", "[listener a]\nport = 0\n[listener a]\nport = 0\n",
             3, ["listener 'a' is already defined"]),
            ("PLAIN without users-file",
             "[listener a]\nsasl-mechanisms = PLAIN\nplain-over-cleartext = yes\n",
             1, ["[listener a]", "users-file"]),
            ("PLAIN without TLS",
             "[broker]\nusers-file = %s\n[listener a]\nsasl-mechanisms = PLAIN\n" % users,
             3, ["[listener a]", "PLAIN", "plain-over-cleartext"]),
            ("EXTERNAL without client auth",
             "[listener a]\nsasl-mechanisms = EXTERNAL\ntls-cert = /x/c.pem\ntls-key = /x/k.pem\n",
             1, ["[listener a]", "EXTERNAL", "tls-client-auth"]),
            ("tls-cert without tls-key", "[listener a]\n\ntls-cert = /x/c.pem\n",
             1, ["[listener a]", "tls-key"]),
            ("client auth without tls-ca",
             "[listener a]\ntls-cert = /x/c.pem\ntls-key = /x/k.pem\ntls-client-auth = required\n",
             1, ["[listener a]", "tls-ca"]),
            ("key before any section", "port = 1\n[listener a]\n",
             1, ["before any section"]),
        ]
        for name, text, line, words in cases:
            with self.subTest(name):
                path, code, out, err = self.check(text)
                self.assertEqual(code, 1, "exit code; stderr: %r" % err)
                self.assertEqual(out, "")
                lines = err.strip().splitlines()
                self.assertEqual(len(lines), 1, "one error line expected: %r" % err)
                self.assertIn("%s:%d:" % (path, line), err)
                for w in words:
                    self.assertIn(w, err)

    def test_no_listener(self):
        """A file without any [listener] is refused, naming the file."""
        path, code, out, err = self.check("[broker]\nlog-level = info\n")
        self.assertEqual(code, 1)
        self.assertIn(path, err)
        self.assertIn("no [listener", err)

    def test_missing_config_file(self):
        """-c with a file that does not exist: exit 1, the message names the path and the reason."""
        path = os.path.join(self.tmp, "absent.conf")
        for extra in ([], ["--check-config"]):
            with self.subTest(extra=extra):
                code, out, err = run_hadrond(["-c", path] + extra)
                self.assertEqual(code, 1)
                self.assertIn(path, err)
                self.assertIn("No such file or directory", err)

    def test_missing_tls_cert_file(self):
        """A tls-cert that does not exist stops the start with a message naming the listener and file."""
        b = Broker(listeners=False, config="""\
            [listener secure]
            host = 127.0.0.1
            port = 0
            tls-cert = /nonexistent/hadron/cert.pem
            tls-key = /nonexistent/hadron/key.pem
            """)
        code, out, err = run_hadrond(["-c", b.conf])
        self.assertEqual(code, 1, err)
        self.assertRegex(err, r"listener 'secure'.*/nonexistent/hadron/cert\.pem.*No such file")

    def test_hash_password_in_users_file(self):
        """--hash-password NAME prints a users-file line; a broker using it authenticates NAME with PLAIN."""
        code, out, err = run_hadrond(["--hash-password", "carol"], input="c4r0l-pw\n")
        self.assertEqual(code, 0, err)
        line = out.strip()
        self.assertRegex(line, r"^carol:\$pbkdf2-sha256\$\d+\$\S+\$\S+$")
        # Two runs salt differently.
        code, out2, err = run_hadrond(["--hash-password", "carol"], input="c4r0l-pw\n")
        self.assertNotEqual(out2.strip(), line)

        users = write_file(self.tmp, "users", line + "\n")
        with Broker(broker="users-file = %s\n" % users,
                    listener="sasl-mechanisms = PLAIN\nplain-over-cleartext = yes\n") as b:
            self.assertTrue(round_trip(b.url(), user="carol", password="c4r0l-pw",
                                       allowed_mechs="PLAIN", allow_insecure_mechs=True))
            with self.assertRaises(ConnectionException):
                round_trip(b.url(), user="carol", password="wrong",
                           allowed_mechs="PLAIN", allow_insecure_mechs=True)

    def test_hash_password_empty(self):
        """An empty password is refused (exit 1), nothing printed on stdout."""
        for text in ("\n", ""):
            with self.subTest(input=text):
                code, out, err = run_hadrond(["--hash-password", "dave"], input=text)
                self.assertEqual(code, 1)
                self.assertEqual(out, "")
                self.assertIn("password", err)

    def test_two_brokers_one_data_dir(self):
        """A second hadrond on a data-dir in use refuses to start and names the first one's pid."""
        with Broker(name="first") as first:
            second = Broker(name="second", data_dir=first.data_dir)
            code, out, err = run_hadrond(["-c", second.conf])
            self.assertEqual(code, 1, err)
            self.assertIn(first.data_dir, err)
            self.assertIn("pid %d" % first.pid, err)
            # The first broker is unaffected.
            self.assertTrue(round_trip(first.url()))

    def test_embedded_default(self):
        """hadrond without -c runs its embedded default: 127.0.0.1:5672, anonymous, data in ./data."""
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 5672))
        except OSError as e:
            self.skipTest("127.0.0.1:5672 is in use (%s); cannot run the embedded default" % e)
        finally:
            probe.close()
        cwd = self.tmp
        log_path = os.path.join(cwd, "hadrond.log")
        with open(log_path, "wb") as log:
            p = subprocess.Popen([HADROND], cwd=cwd, stdout=log, stderr=log)
        try:
            deadline = time.time() + 10 * SLOW
            text = ""
            while time.time() < deadline and p.poll() is None:
                with open(log_path, errors="replace") as f:
                    text = f.read()
                if re.search(r"listening on 127\.0\.0\.1:5672", text):
                    break
                time.sleep(0.05)
            self.assertIsNone(p.poll(), "hadrond exited:\n" + text)
            self.assertRegex(text, r"listening on 127\.0\.0\.1:5672")
            self.assertTrue(round_trip("amqp://127.0.0.1:5672"))
            self.assertTrue(os.path.isdir(os.path.join(cwd, "data")))
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(timeout=20 * SLOW), 0)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


if __name__ == "__main__":
    hadron_test.main()
