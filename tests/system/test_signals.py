"""Signals to a real hadrond: SIGTERM/SIGINT drain and exit 0, SIGHUP reloads
log level and users, and a broken file at reload changes nothing."""

import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, SLOW, raw_socket, run_hadrond, write_file  # noqa: E402

from proton import ConnectionException, Data, Described, Endpoint, Message, ulong  # noqa: E402
from proton.utils import BlockingConnection, ConnectionClosed  # noqa: E402

PLAIN_KW = dict(allowed_mechs="PLAIN", allow_insecure_mechs=True)


def connect(url, **kw):
    return BlockingConnection(url, timeout=10 * SLOW, **kw)


def round_trip(url, address="signals.q", **kw):
    body = "m-%f" % time.time()
    c = connect(url, **kw)
    try:
        c.create_sender(address).send(Message(body=body))
        r = c.create_receiver(address)
        m = r.receive(timeout=10 * SLOW)
        r.accept()
    finally:
        c.close()
    return m.body == body


def auth_error(url, **kw):
    """None if the connection authenticates, else the error text."""
    try:
        round_trip(url, **kw)
    except ConnectionException as e:
        return str(e)
    return None


def wait_closed_by_peer(c, timeout):
    """Run c's loop until the broker closes it; return the close condition's name."""
    try:
        c.wait(lambda: c.conn.state & Endpoint.REMOTE_CLOSED, timeout=timeout)
    except ConnectionClosed as e:
        return e.condition
    cond = c.conn.remote_condition
    return cond.name if cond else None


def edit_config(b, old, new):
    with open(b.conf) as f:
        text = f.read()
    assert old in text, (old, text)
    with open(b.conf, "w") as f:
        f.write(text.replace(old, new))


def hash_line(user, password):
    code, out, err = run_hadrond(["--hash-password", user], input=password + "\n")
    assert code == 0, err
    return out


class Stop(unittest.TestCase):

    def drain_with_clients(self, sig):
        # A drain-timeout far above what the test allows proves that the
        # broker stopped because its peers closed, not because time ran out.
        b = Broker(broker="drain-timeout = 60s\n").start()
        try:
            prod, cons = connect(b.url()), connect(b.url())
            snd = prod.create_sender("drain.q")
            rcv = cons.create_receiver("drain.q", credit=10)
            snd.send(Message(body="before"))
            self.assertEqual(rcv.receive(timeout=10 * SLOW).body, "before")
            rcv.accept()
            start = time.time()
            b.proc.send_signal(sig)
            for c in (prod, cons):
                self.assertEqual(wait_closed_by_peer(c, 10 * SLOW), "amqp:connection:forced")
                c.close()
            b.proc.wait(timeout=15 * SLOW)
            took = time.time() - start
        except BaseException:
            b.kill()
            sys.stderr.write(b.log())
            raise
        # The process has exited: stop() only collects it and checks exit 0 and sanitizers.
        self.assertEqual(b.stop(), 0)
        self.assertLess(took, 15 * SLOW)
        log = b.log()
        self.assertIn("broker, %s received" % signal.Signals(sig).name, log)
        self.assertIn("broker, stopped", log)
        self.assertNotIn("drain-timeout passed", log)

    def test_sigterm_with_clients(self):
        """SIGTERM closes producers and consumers with amqp:connection:forced and exits 0."""
        self.drain_with_clients(signal.SIGTERM)

    def test_sigint_with_clients(self):
        """SIGINT behaves like SIGTERM."""
        self.drain_with_clients(signal.SIGINT)

    def test_sigterm_unresponsive_peer(self):
        """A peer that never answers the close is cut off at drain-timeout; exit is still 0."""
        b = Broker(broker="drain-timeout = 1s\n").start()
        s = raw_socket(b.port)
        d = Data()
        d.put_object(Described(ulong(0x10), ["deaf-peer"]))
        body = d.encode()
        s.sendall(b"AMQP\x00\x01\x00\x00" + struct.pack(">IBBH", 8 + len(body), 2, 0, 0) + body)
        b.wait_log(r"container 'deaf-peer'")
        start = time.time()
        code = b.stop(timeout=15)
        took = time.time() - start
        s.close()
        self.assertEqual(code, 0)
        self.assertGreaterEqual(took, 0.9, "exited before drain-timeout with a peer open")
        self.assertLess(took, 10 * SLOW)
        self.assertIn("drain-timeout passed with 1 connections open", b.log())

    def test_sigterm_idle(self):
        """SIGTERM with no connections exits 0 promptly."""
        b = Broker(broker="drain-timeout = 60s\n").start()
        start = time.time()
        code = b.stop(timeout=10)
        self.assertEqual(code, 0)
        self.assertLess(time.time() - start, 5 * SLOW)
        self.assertIn("broker, stopped", b.log())

    def test_sigterm_refuses_new_connections(self):
        """While draining, listeners are closed: a new connection cannot get in."""
        b = Broker(broker="drain-timeout = 60s\n").start()
        held = connect(b.url())
        port = b.port
        b.proc.send_signal(signal.SIGTERM)
        b.wait_log(r"broker, draining")
        refused = False
        try:
            c = connect("amqp://127.0.0.1:%d" % port)
            c.create_sender("late.q")
            c.close()
        except (ConnectionException, socket.error):
            refused = True
        self.assertTrue(refused, "a connection got in during the drain")
        self.assertEqual(wait_closed_by_peer(held, 10 * SLOW), "amqp:connection:forced")
        held.close()
        self.assertEqual(b.stop(timeout=15), 0)


class Reload(unittest.TestCase):

    def test_log_level(self):
        """SIGHUP applies a new log-level: debug lines appear after the reload, not before."""
        with Broker(log_level="info") as b:
            self.assertTrue(round_trip(b.url(), "before.q"))
            self.assertNotRegex(b.log(), r" debug ")
            edit_config(b, "log-level = info", "log-level = debug")
            b.reload()
            b.wait_log(r"config, reloaded from ")
            self.assertTrue(round_trip(b.url(), "after.q"))
            b.wait_log(r" debug .*'after\.q'|debug .*after\.q")
            # And back: no more debug lines.
            edit_config(b, "log-level = debug", "log-level = info")
            b.reload()
            b.wait_log(r"config, reloaded from ", count=2)
            n = len(re.findall(r" debug ", b.log()))
            self.assertTrue(round_trip(b.url(), "again.q"))
            self.assertEqual(len(re.findall(r" debug ", b.log())), n)

    def test_broken_config_keeps_running(self):
        """A config error at SIGHUP logs 'reload failed, keeping the running configuration' and changes nothing."""
        with Broker(log_level="info") as b:
            with open(b.conf) as f:
                good = f.read()
            edit_config(b, "log-level = info", "log-level = debug\nno-such-key = 1")
            b.reload()
            b.wait_log(r"reload failed, keeping the running configuration: .*hadron\.conf:\d+: unknown key 'no-such-key'")
            self.assertIsNone(b.proc.poll())
            self.assertTrue(round_trip(b.url()))
            # The debug level in the rejected file was not applied.
            self.assertNotRegex(b.log(), r" debug ")
            # A bad value and a vanished file are refused the same way.
            with open(b.conf, "w") as f:
                f.write(good.replace("log-level = info", "log-level = loud"))
            b.reload()
            b.wait_log(r"reload failed, keeping the running configuration", count=2)
            os.rename(b.conf, b.conf + ".away")
            b.reload()
            b.wait_log(r"reload failed, keeping the running configuration", count=3)
            os.rename(b.conf + ".away", b.conf)
            self.assertTrue(round_trip(b.url()))
            self.assertNotRegex(b.log(), r" debug ")


class ReloadUsers(unittest.TestCase):

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="hadron-users-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def test_users_file(self):
        """SIGHUP reloads users-file: an added user gets in, a removed user is refused."""
        d = self.tmpdir()
        users = write_file(d, "users", hash_line("bob", "bob-pw-1"))
        with Broker(broker="users-file = %s\n" % users,
                    listener="sasl-mechanisms = PLAIN\nplain-over-cleartext = yes\n") as b:
            self.assertIsNone(auth_error(b.url(), user="bob", password="bob-pw-1", **PLAIN_KW))
            self.assertIn("amqp:unauthorized-access",
                          auth_error(b.url(), user="carol", password="carol-pw-2", **PLAIN_KW) or "")
            write_file(d, "users", hash_line("carol", "carol-pw-2"))
            b.reload()
            b.wait_log(r"config, reloaded from ")
            self.assertIsNone(auth_error(b.url(), user="carol", password="carol-pw-2", **PLAIN_KW))
            self.assertIn("amqp:unauthorized-access",
                          auth_error(b.url(), user="bob", password="bob-pw-1", **PLAIN_KW) or "")
            b.wait_log(r"authentication failed \(PLAIN, user 'bob'\)")

    def test_broken_users_file_keeps_users(self):
        """A users-file that does not parse at SIGHUP is refused; the users in force keep working."""
        d = self.tmpdir()
        users = write_file(d, "users", hash_line("bob", "bob-pw-1"))
        with Broker(broker="users-file = %s\n" % users,
                    listener="sasl-mechanisms = PLAIN\nplain-over-cleartext = yes\n") as b:
            write_file(d, "users", "carol:not-a-hash\n")
            b.reload()
            b.wait_log(r"reload failed, keeping the running configuration: .*users:1: user 'carol'")
            self.assertIsNone(auth_error(b.url(), user="bob", password="bob-pw-1", **PLAIN_KW))


if __name__ == "__main__":
    hadron_test.main()
