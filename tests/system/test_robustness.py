"""Hostile and broken peers on raw sockets: the broker answers or hangs up,
keeps running, releases what the peer held, and still serves a proper client."""

import os
import re
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadron_test  # noqa: E402
from hadron_test import Broker, SLOW, raw_socket  # noqa: E402

from proton import ConnectionException, Data, Message  # noqa: E402
from proton.utils import BlockingConnection  # noqa: E402

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
CLOSE = 0x18

# A drain-timeout longer than the harness waits on stop: a connection the
# broker forgot to close makes stop() fail instead of hiding behind it.
BROKER = "drain-timeout = 60s\n"


def read_until_closed(s, limit=5):
    """Everything the peer sends until it closes; (bytes, closed?) within `limit` seconds."""
    out = b""
    s.settimeout(0.25)
    deadline = time.time() + limit * SLOW
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        out += chunk
    return out, False


def parse_frames(data):
    """Split bytes after a protocol header into (performative code, fields) pairs."""
    frames = []
    while len(data) >= 8:
        size, doff = struct.unpack(">IB", data[:5])
        if size < 8 or len(data) < size:
            break
        body = data[doff * 4:size]
        data = data[size:]
        if not body:
            frames.append((None, None))  # heartbeat
            continue
        d = Data()
        d.decode(body)
        d.rewind()
        d.next()
        obj = d.get_object()
        frames.append((int(obj.descriptor), obj.value))
    return frames


def probe(port, payload, half_close=False, limit=5):
    """Send `payload` on a fresh socket; return (reply, closed?)."""
    s = raw_socket(port)
    try:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_until_closed(s, limit)
    finally:
        s.close()


def sasl_frame(body):
    return struct.pack(">IBBH", 8 + len(body), 2, 1, 0) + body


def drop(s):
    """Close with RST rather than FIN: the most abrupt way to go."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class Robustness(unittest.TestCase):

    def assert_refusal(self, reply, closed):
        """The broker hung up, and whatever it said first was an AMQP header and, if any, a close."""
        self.assertTrue(closed, "socket still open; broker said %r" % reply[:200])
        if not reply:
            return
        self.assertEqual(reply[:4], b"AMQP", reply[:60])
        self.assertIn(reply[:8], (AMQP_HEADER, SASL_HEADER))
        if reply[:8] == AMQP_HEADER and len(reply) > 8:
            frames = [f for f in parse_frames(reply[8:]) if f[0] is not None]
            self.assertTrue(frames, reply)
            self.assertEqual(frames[-1][0], CLOSE, frames)
            error = frames[-1][1][0] if frames[-1][1] else None
            self.assertIsNotNone(error, "close without an error")
            self.assertTrue(str(error.value[0]).startswith("amqp:"), error)

    def assert_healthy(self, b):
        """Still running, every connection it accepted is closed, and a real client gets a round trip."""
        self.assertIsNone(b.proc.poll(), "hadrond died:\n" + b.log())
        c = BlockingConnection(b.url(), timeout=10 * SLOW)
        try:
            s = c.create_sender("robust.q")
            s.send(Message(body="alive"))
            r = c.create_receiver("robust.q")
            self.assertEqual(r.receive(timeout=10 * SLOW).body, "alive")
            r.accept()
        finally:
            c.close()
        deadline = time.time() + 10 * SLOW
        while True:
            text = b.log()
            seen = set(re.findall(r"connection (\d+) from \S+?, ", text))
            closed = set(re.findall(r"connection (\d+) from \S+?, closed", text))
            if seen <= closed or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(seen - closed, set(), "connections never closed")

    def test_garbage(self):
        """Bytes that are not AMQP at all: a refusal or a hang-up, and the broker serves on."""
        with Broker(broker=BROKER) as b:
            for name, payload in (("http", b"GET / HTTP/1.1\r\nHost: hadron\r\n\r\n"),
                                  ("binary", bytes(range(256)) * 4),
                                  ("zeros", b"\x00" * 8)):
                with self.subTest(name):
                    self.assert_refusal(*probe(b.port, payload))
            # These peers waited for the broker to hang up; the log must not blame them.
            self.assertNotIn("aborted by the peer", b.log())
            self.assertRegex(b.log(), r"closed: amqp:connection:framing-error")
            self.assert_healthy(b)

    def test_amqp_0_9_1_header(self):
        """An AMQP 0-9-1 header gets a header the broker supports, then the socket closes (spec 2.2)."""
        with Broker(broker=BROKER) as b:
            reply, closed = probe(b.port, b"AMQP\x00\x00\x09\x01")
            self.assert_refusal(reply, closed)
            self.assertIn(reply[:8], (AMQP_HEADER, SASL_HEADER), "no protocol header in reply")
            self.assert_healthy(b)

    def test_truncated_frame_then_close(self):
        """A header and half a frame, then the socket closes: the connection is cleaned up."""
        with Broker(broker=BROKER) as b:
            partial = struct.pack(">IBBH", 64, 2, 0, 0) + b"\x00S\x10\xc0"
            s = raw_socket(b.port)
            s.sendall(AMQP_HEADER + partial)
            s.settimeout(5 * SLOW)
            self.assertEqual(s.recv(8), AMQP_HEADER)
            s.close()
            b.wait_log(r"connection 1 from \S+, closed")
            self.assert_healthy(b)

    def test_truncated_frame_then_half_close(self):
        """Half a frame and then end-of-stream (shutdown SHUT_WR): the broker hangs up promptly."""
        with Broker(broker=BROKER) as b:
            partial = struct.pack(">IBBH", 64, 2, 0, 0) + b"\x00S\x10\xc0"
            reply, closed = probe(b.port, AMQP_HEADER + partial, half_close=True)
            self.assert_refusal(reply, closed)
            self.assert_healthy(b)

    def test_bad_frame_sizes(self):
        """A frame header claiming 4 GiB, or less than the 8-byte minimum, is a framing error."""
        with Broker(broker=BROKER) as b:
            for name, size in (("4 GiB", 0xFFFFFFFF), ("2 GiB", 0x80000000), ("below minimum", 4)):
                with self.subTest(name):
                    reply, closed = probe(b.port, AMQP_HEADER + struct.pack(">IBBH", size, 2, 0, 0))
                    self.assert_refusal(reply, closed)
                    # Hanging up is enough; if it explains, it must say framing-error.
                    frames = [f for f in parse_frames(reply[8:]) if f[0] is not None]
                    if frames:
                        self.assertEqual(str(frames[-1][1][0].value[0]), "amqp:connection:framing-error")
            self.assert_healthy(b)

    def test_sasl_header_then_junk(self):
        """A SASL header followed by junk: the broker hangs up and serves on."""
        for name, junk in (("text", b"junk" * 16),
                           ("frame of junk", sasl_frame(b"\xff" * 16)),
                           ("sasl-init without mechanism", sasl_frame(b"\x00S\x41\x45")),
                           ("sasl-init with a string mechanism",
                            sasl_frame(b"\x00S\x41\xc0\x0c\x01\xa1\x09ANONYMOUS"))):
            # One broker each, so that a crash on one case does not hide the others.
            with self.subTest(name), Broker(broker=BROKER) as b:
                reply, closed = probe(b.port, SASL_HEADER + junk)
                self.assertIsNone(b.proc.poll(), "hadrond died (exit %s)" % b.proc.poll())
                self.assert_refusal(reply, closed)
                if reply:
                    self.assertEqual(reply[:8], SASL_HEADER)
                self.assert_healthy(b)

    def test_many_abrupt_connections(self):
        """Many peers that connect and vanish (RST) at every stage leave no connection slot behind."""
        limit = 20
        with Broker(broker=BROKER + "max-connections = %d\n" % limit) as b:
            stages = (b"", AMQP_HEADER, SASL_HEADER, AMQP_HEADER + b"\x00\x00\x00",
                      AMQP_HEADER + struct.pack(">IBBH", 64, 2, 0, 0))
            total = 0
            for batch in range(10):
                socks = []
                for i in range(limit // 2):
                    s = raw_socket(b.port)
                    payload = stages[(batch + i) % len(stages)]
                    if payload:
                        s.sendall(payload)
                    socks.append(s)
                time.sleep(0.05)
                for s in socks:
                    drop(s)
                total += len(socks)
            # Each accepted connection is logged as closed, and the slots are free again.
            b.wait_log(r"connection \d+ from \S+, closed", count=total, timeout=20)
            self.assert_healthy(b)
            # All of max-connections is usable at once: nothing leaked.
            conns = [BlockingConnection(b.url(), timeout=10 * SLOW) for i in range(limit)]
            with self.assertRaises(ConnectionException):
                extra = BlockingConnection(b.url(), timeout=10 * SLOW)
                extra.create_sender("robust.q")
            for c in conns:
                c.close()


if __name__ == "__main__":
    hadron_test.main()
