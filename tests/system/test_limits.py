"""Resource limits of a real hadrond: connections, sessions, links, frame
size, channels, idle timeout, memory, message size, and log volume."""

import os
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, SLOW, raw_socket  # noqa: E402

from proton import ConnectionException, Data, Described, Endpoint, Message, Timeout, ulong  # noqa: E402
from proton.utils import BlockingConnection, LinkDetached  # noqa: E402

LIMIT = "amqp:resource-limit-exceeded"


def connect(url):
    return BlockingConnection(url, timeout=10 * SLOW)


def round_trip(c, address="limits.q"):
    """Send and receive one message on an open BlockingConnection."""
    body = "m-%f" % time.time()
    s = c.create_sender(address)
    s.send(Message(body=body))
    r = c.create_receiver(address)
    m = r.receive(timeout=10 * SLOW)
    r.accept()
    s.close()
    r.close()
    return m.body == body


def round_trip_on(c, address, rcv):
    """Send one message on a new sender and take it from an existing receiver."""
    snd = c.create_sender(address)
    snd.send(Message(body="again"))
    m = rcv.receive(timeout=10 * SLOW)
    rcv.accept()
    return m.body == "again"


def refusal(url):
    """Connect and attach; return the error text, or None if that worked."""
    try:
        c = connect(url)
        try:
            c.create_sender("limits.q")
        finally:
            c.close()
    except ConnectionException as e:
        return str(e)
    return None


def eventually(fn, timeout=10):
    """Call fn until it returns a true value; return that value (or the last one)."""
    deadline = time.time() + timeout * SLOW
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(0.1)


def pump(c, seconds):
    """Run a BlockingConnection's event loop (heartbeats included) for a while."""
    try:
        c.wait(lambda: False, timeout=seconds)
    except Timeout:
        pass


def amqp_frame(performative, fields, channel=0):
    d = Data()
    d.put_object(Described(ulong(performative), fields))
    body = d.encode()
    return struct.pack(">IBBH", 8 + len(body), 2, 0, channel) + body


def seconds_until_closed(s, limit):
    """Read (and discard) until the peer closes; return the time it took, or None."""
    start = time.time()
    s.settimeout(0.25)
    while time.time() - start < limit:
        try:
            if not s.recv(65536):
                return time.time() - start
        except socket.timeout:
            pass
        except ConnectionResetError:
            return time.time() - start
    return None


class Connections(unittest.TestCase):

    def test_listener_max_connections(self):
        """Listener max-connections: the extra connection gets resource-limit-exceeded, others keep working."""
        with Broker(listener="max-connections = 2\n",
                    config="[listener other]\nhost = 127.0.0.1\nport = 0\n") as b:
            c1, c2 = connect(b.url()), connect(b.url())
            err = refusal(b.url())
            self.assertIsNotNone(err, "third connection accepted")
            self.assertIn(LIMIT, err)
            b.wait_log(r"refused: amqp:resource-limit-exceeded: listener 'amqp' has reached max-connections")
            self.assertTrue(round_trip(c1))
            self.assertTrue(round_trip(c2))
            # The limit is per listener: the other one still accepts.
            self.assertIsNone(refusal(b.url("other")))
            # A freed slot can be used again.
            c1.close()
            self.assertTrue(eventually(lambda: refusal(b.url()) is None))
            self.assertTrue(round_trip(c2))
            c2.close()

    def test_broker_max_connections(self):
        """[broker] max-connections counts every listener; refused peers get resource-limit-exceeded."""
        with Broker(broker="max-connections = 2\n",
                    config="[listener other]\nhost = 127.0.0.1\nport = 0\n") as b:
            c1, c2 = connect(b.url()), connect(b.url("other"))
            for name in ("amqp", "other"):
                with self.subTest(listener=name):
                    err = refusal(b.url(name))
                    self.assertIsNotNone(err, "connection over the broker limit accepted")
                    self.assertIn(LIMIT, err)
            b.wait_log(r"refused: amqp:resource-limit-exceeded: the broker has reached max-connections")
            self.assertTrue(round_trip(c1))
            self.assertTrue(round_trip(c2))
            c2.close()
            self.assertTrue(eventually(lambda: refusal(b.url("other")) is None))
            c1.close()


class Sessions(unittest.TestCase):

    def open_session(self, c):
        s = c.conn.session()
        s.open()
        c.wait(lambda: s.state & (Endpoint.REMOTE_ACTIVE | Endpoint.REMOTE_CLOSED), timeout=10 * SLOW)
        return s

    def test_max_sessions(self):
        """The session over max-sessions is ended with resource-limit-exceeded; the others work."""
        with Broker(listener="max-sessions = 2\n") as b:
            c = connect(b.url())
            s1, s2 = self.open_session(c), self.open_session(c)
            for s in (s1, s2):
                self.assertTrue(s.state & Endpoint.REMOTE_ACTIVE)
            s3 = self.open_session(c)
            c.wait(lambda: s3.state & Endpoint.REMOTE_CLOSED, timeout=10 * SLOW)
            self.assertIsNotNone(s3.remote_condition)
            self.assertEqual(s3.remote_condition.name, LIMIT)
            s3.close()
            # A session that already existed still carries links.
            snd = s1.sender("sess-link")
            snd.target.address = "limits.q"
            snd.open()
            c.wait(lambda: snd.state & (Endpoint.REMOTE_ACTIVE | Endpoint.REMOTE_CLOSED),
                   timeout=10 * SLOW)
            self.assertTrue(snd.state & Endpoint.REMOTE_ACTIVE)
            # Ending one session frees its slot.
            s2.close()
            c.wait(lambda: s2.state & Endpoint.REMOTE_CLOSED, timeout=10 * SLOW)
            s4 = self.open_session(c)
            self.assertTrue(s4.state & Endpoint.REMOTE_ACTIVE, s4.remote_condition)
            c.close()


class Links(unittest.TestCase):

    def test_max_links(self):
        """The link over max-links is refused with resource-limit-exceeded; existing links keep working."""
        with Broker(listener="max-links = 2\n") as b:
            c = connect(b.url())
            snd = c.create_sender("links.q")
            rcv = c.create_receiver("links.q", credit=10)
            with self.assertRaises(LinkDetached) as cm:
                c.create_sender("links.other")
            self.assertEqual(cm.exception.condition, LIMIT)
            snd.send(Message(body="still"))
            self.assertEqual(rcv.receive(timeout=10 * SLOW).body, "still")
            rcv.accept()
            # Detaching one lets a new one in.
            snd.close()
            self.assertTrue(round_trip_on(c, "links.q", rcv))
            c.close()


class Framing(unittest.TestCase):

    def test_frame_size_and_channel_max_advertised(self):
        """max-frame-size and channel-max are the values the broker's open advertises."""
        with Broker(listener="max-frame-size = 4096\nchannel-max = 7\n") as b:
            c = connect(b.url())
            t = c.conn.transport
            self.assertEqual(t.remote_max_frame_size, 4096)
            self.assertEqual(t.remote_channel_max, 7)
            # A message larger than a frame still travels (split into transfers).
            body = "x" * 20000
            s = c.create_sender("frames.q")
            s.send(Message(body=body))
            r = c.create_receiver("frames.q")
            self.assertEqual(r.receive(timeout=10 * SLOW).body, body)
            r.accept()
            c.close()

    def test_defaults_advertised(self):
        """Without settings the open advertises the documented defaults (128K frames, channel-max 1023)."""
        with Broker() as b:
            c = connect(b.url())
            t = c.conn.transport
            self.assertEqual(t.remote_max_frame_size, 128 * 1024)
            self.assertEqual(t.remote_channel_max, 1023)
            self.assertGreater(t.remote_idle_timeout, 0)
            self.assertLessEqual(t.remote_idle_timeout, 60)
            c.close()


class IdleTimeout(unittest.TestCase):
    IDLE = 2.0

    def broker(self):
        # handshake-timeout covers peers that never get as far as an open.
        return Broker(listener="idle-timeout = %dms\nhandshake-timeout = %dms\n"
                      % (int(self.IDLE * 1000), int(self.IDLE * 1000)))

    def test_advertised(self):
        """The open carries an idle-time-out no larger than the configured one (peers must beat faster)."""
        with self.broker() as b:
            c = connect(b.url())
            adv = c.conn.transport.remote_idle_timeout
            self.assertGreater(adv, 0)
            self.assertLessEqual(adv, self.IDLE)
            c.close()

    def test_stalled_after_open(self):
        """A peer that opens and then goes quiet is closed within a bounded time; a beating client stays."""
        with self.broker() as b:
            good = connect(b.url())
            s = raw_socket(b.port)
            s.sendall(b"AMQP\x00\x01\x00\x00" + amqp_frame(0x10, ["stalled-peer"]))
            start = time.time()
            # Drive the good client's heartbeats while watching the stalled one.
            took = None
            s.settimeout(0.1)
            while time.time() - start < (self.IDLE * 2 + 5) * SLOW:
                pump(good, 0.1)
                try:
                    if not s.recv(65536):
                        took = time.time() - start
                        break
                except socket.timeout:
                    pass
            s.close()
            self.assertIsNotNone(took, "stalled peer still connected after %.1fs" % (time.time() - start))
            self.assertGreaterEqual(took, self.IDLE * 0.5, "closed before any timeout could expire")
            b.wait_log(r"container 'stalled-peer'")
            # The good client outlived the stalled one and still works.
            pump(good, self.IDLE)
            self.assertTrue(round_trip(good))
            good.close()
            self.assertNotRegex(b.log(), r"connection 1 from \S+, closed: .*idle")

    def test_silent_after_header(self):
        """A peer that sends only the protocol header and then nothing is closed within a bounded time."""
        with self.broker() as b:
            s = raw_socket(b.port)
            s.sendall(b"AMQP\x00\x01\x00\x00")
            took = seconds_until_closed(s, (self.IDLE * 2 + 5) * SLOW)
            s.close()
            self.assertIsNotNone(took, "peer silent after its header was never closed")

    def test_silent_from_connect(self):
        """A peer that connects and never sends a byte is closed after handshake-timeout (no slot held forever)."""
        with self.broker() as b:
            s = raw_socket(b.port)
            took = seconds_until_closed(s, (self.IDLE * 2 + 5) * SLOW)
            s.close()
            self.assertIsNotNone(took, "silent peer still connected after %.0fs"
                                 % ((self.IDLE * 2 + 5) * SLOW))
            self.assertGreaterEqual(took, self.IDLE * 0.9, "closed before handshake-timeout")
            b.wait_log(r"connection 1 from \S+, closed: .*handshake-timeout")


class Memory(unittest.TestCase):
    SIZE = 64 * 1024

    def test_memory_limit(self):
        """At memory-limit producers get no more credit; after a consumer drains, they get credit again."""
        window = 4
        with Broker(broker="memory-limit = 1M\ncredit-window = %d\n" % window) as b:
            c = connect(b.url())
            snd = c.create_sender("mem.q")
            body = "x" * self.SIZE
            sent = 0
            blocked = False
            # Bounded: far more than 1M worth, so a broker that never blocks fails here.
            while sent < 200:
                try:
                    snd.send(Message(body=body), timeout=2 * SLOW)
                    sent += 1
                except Timeout:
                    blocked = True
                    break
            self.assertTrue(blocked, "producer never ran out of credit (%d x 64K sent)" % sent)
            held = sent * self.SIZE
            self.assertGreaterEqual(held, 900 * 1024, "blocked with only %d bytes held" % held)
            self.assertLessEqual(held, (1 << 20) + (window + 2) * self.SIZE,
                                 "blocked only at %d bytes" % held)
            # The message that timed out waits in the client for credit that does not come.
            pump(c, 1)
            self.assertEqual(snd.link.credit, -1)

            # Drain on another connection.
            d = connect(b.url())
            rcv = d.create_receiver("mem.q", credit=50)
            for i in range(sent):
                m = rcv.receive(timeout=10 * SLOW)
                self.assertEqual(len(m.body), self.SIZE)
                rcv.accept()
            # The blocked producer resumes: the waiting message, then a new one, get through.
            snd.send(Message(body="after"), timeout=10 * SLOW)
            self.assertEqual(len(rcv.receive(timeout=10 * SLOW).body), self.SIZE)
            rcv.accept()
            self.assertEqual(rcv.receive(timeout=10 * SLOW).body, "after")
            rcv.accept()
            d.close()
            c.close()


class MessageSize(unittest.TestCase):

    def test_max_message_size(self):
        """A message over max-message-size closes the link with amqp:link:message-size-exceeded."""
        with Broker(broker="max-message-size = 10K\n") as b:
            c = connect(b.url())
            snd = c.create_sender("size.q")
            self.assertEqual(snd.link.remote_max_message_size, 10 * 1024)
            snd.send(Message(body="y" * 9000))
            with self.assertRaises(LinkDetached) as cm:
                snd.send(Message(body="z" * 20000))
            self.assertEqual(cm.exception.condition, "amqp:link:message-size-exceeded")
            # The connection and new links are fine; the big message was not queued.
            rcv = c.create_receiver("size.q", credit=10)
            m = rcv.receive(timeout=10 * SLOW)
            self.assertEqual(len(m.body), 9000)
            rcv.accept()
            with self.assertRaises(Timeout):
                rcv.receive(timeout=1)
            self.assertTrue(round_trip(c, "size.other"))
            c.close()


class LogVolume(unittest.TestCase):

    def test_nothing_per_message_at_info(self):
        """Sending and receiving 200 messages adds no per-message lines to an info-level log."""
        with Broker() as b:
            c = connect(b.url())
            snd = c.create_sender("quiet.q")
            rcv = c.create_receiver("quiet.q", credit=50)
            self.assertTrue(round_trip(c, "quiet.warmup"))
            before = b.log().splitlines()
            for i in range(200):
                snd.send(Message(body="m%d" % i))
            for i in range(200):
                rcv.receive(timeout=10 * SLOW)
                rcv.accept()
            time.sleep(1.5)  # past a tick, so periodic reports would show
            added = b.log().splitlines()[len(before):]
            self.assertEqual(added, [], "log lines during the traffic")
            c.close()


if __name__ == "__main__":
    hadron_test.main()
