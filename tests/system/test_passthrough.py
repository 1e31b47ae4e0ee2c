"""Message passthrough: the broker forwards the bare message byte for byte,
writes a fresh header per delivery, keeps message annotations and drops
delivery annotations.  Malformed payloads are rejected with
amqp:decode-error.  The open frame names the product and version."""

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from proton import Condition, Data, Delivery, Described, Handler, symbol

import hadron_test
from hadron_test import SharedBroker, WAIT, run_hadrond


# ---- a small AMQP encoder -------------------------------------------------
# Hand-built so that the message uses encodings a re-encoding broker would
# change: wide forms where narrow ones would do, a full ulong descriptor, a
# symbolic descriptor.


def null():
    return b"\x40"


def boolean(v):
    return b"\x41" if v else b"\x42"


def ubyte(v):
    return b"\x50" + bytes([v])


def uint(v):
    return b"\x70" + struct.pack(">I", v)


def ulong(v):
    return b"\x80" + struct.pack(">Q", v)


def long_(v):
    return b"\x81" + struct.pack(">q", v)


def timestamp(ms):
    return b"\x83" + struct.pack(">q", ms)


def str8(s):
    b = s.encode()
    return b"\xa1" + bytes([len(b)]) + b


def str32(s):
    b = s.encode()
    return b"\xb1" + struct.pack(">I", len(b)) + b


def sym8(s):
    b = s.encode()
    return b"\xa3" + bytes([len(b)]) + b


def bin8(b):
    return b"\xa0" + bytes([len(b)]) + b


def bin32(b):
    return b"\xb0" + struct.pack(">I", len(b)) + b


def list8(items):
    body = b"".join(items)
    return b"\xc0" + bytes([len(body) + 1, len(items)]) + body


def list32(items):
    body = b"".join(items)
    return b"\xd0" + struct.pack(">II", len(body) + 4, len(items)) + body


def map8(pairs):
    body = b"".join(k + v for k, v in pairs)
    return b"\xc1" + bytes([len(body) + 1, 2 * len(pairs)]) + body


def map32(pairs):
    body = b"".join(k + v for k, v in pairs)
    return b"\xd1" + struct.pack(">II", len(body) + 4, 2 * len(pairs)) + body


def section(code, value):
    return b"\x00\x53" + bytes([code]) + value


def section_wide(code, value):
    """The same section with its descriptor as a full 8-byte ulong."""
    return b"\x00" + ulong(code) + value


def section_symbolic(name, value):
    return b"\x00" + sym8(name) + value


HEADER = section(0x70, list8([boolean(True), ubyte(9), uint(60000), boolean(False)]))
DELIVERY_ANNOTATIONS = section(0x71, map8([(sym8("x-opt-hop"), str8("next-hop-only"))]))
MESSAGE_ANNOTATIONS = section_wide(0x72, map32([(sym8("x-opt-kept"), str32("kept")),
                                                (sym8("x-opt-n"), ulong(42))]))
PROPERTIES = section(0x73, list32([
    str32("msg-id-1"),                 # message-id
    bin8(b"anonymous"),                # user-id
    str8("pt.q"),                      # to
    str32("a subject"),                # subject
    str8("reply.here"),                # reply-to
    ulong(77),                         # correlation-id
    sym8("application/octet-stream"),  # content-type
    sym8("identity"),                  # content-encoding
    timestamp(4102444800000),          # absolute-expiry-time (2100-01-01)
    timestamp(1700000000000),          # creation-time
    str8("group-g"),                   # group-id
    uint(5),                           # group-sequence
    str32("reply-group"),              # reply-to-group-id
]))
APP_PROPERTIES = section(0x74, map8([(str8("k1"), long_(-5)), (str8("k2"), str32("v2")),
                                     (str8("k3"), boolean(True)), (str8("k4"), null())]))
BODY = (section(0x75, bin8(b"part one|"))
        + section_symbolic("amqp:data:binary", bin32(b"part two|"))
        + section_wide(0x75, bin8(b""))
        + section(0x75, bin32(bytes(range(256)))))
FOOTER = section(0x78, map8([(sym8("x-opt-footer"), str8("f"))]))
BARE = PROPERTIES + APP_PROPERTIES + BODY + FOOTER
FULL = HEADER + DELIVERY_ANNOTATIONS + MESSAGE_ANNOTATIONS + BARE

HEADER_DEFAULTS = [False, 4, None, False, 0]


def split_header(raw):
    """(header fields with defaults filled in, the bytes after the header)."""
    data = Data()
    n = data.decode(raw)
    data.rewind()
    data.next()
    value = data.get_object()
    assert isinstance(value, Described) and value.descriptor == 0x70, repr(value)
    fields = list(value.value) + [None] * (5 - len(value.value))
    fields = [d if v is None else v for v, d in zip(fields, HEADER_DEFAULTS)]
    return fields, raw[n:]


def decode_section(raw, code):
    """The value of the one section `raw` holds, checking its descriptor."""
    data = Data()
    n = data.decode(raw)
    assert n == len(raw), "%d of %d bytes decoded" % (n, len(raw))
    data.rewind()
    data.next()
    value = data.get_object()
    assert isinstance(value, Described) and value.descriptor == code, repr(value)
    return {str(k): v for k, v in value.value.items()}


class RawReceiver(Handler):
    """Collects each incoming delivery's bytes as they came on the wire."""

    def __init__(self):
        super(RawReceiver, self).__init__()
        self.got = []

    def on_delivery(self, event):
        d, link = event.delivery, event.link
        if d.readable and not d.partial:
            self.got.append((link.recv(d.pending), d))
            link.advance()


class PassthroughTest(SharedBroker):
    broker_args = dict(name="passthrough")

    def setUp(self):
        super().setUp()
        self.conn = self.connect()
        self.links = 0

    def send_raw(self, address, payload):
        """Send payload as one transfer; returns the settled-by-broker delivery."""
        c = self.conn
        self.links += 1
        s = c.create_sender(address, name="raw-%d" % self.links)
        c.wait(lambda: s.link.credit > 0, timeout=WAIT, msg="waiting for credit")
        d = s.link.delivery(s.link.delivery_tag())
        s.link.send(payload)
        s.link.advance()
        c.wait(lambda: d.remote_state or d.settled, timeout=WAIT, msg="waiting for an outcome")
        return d

    def raw_receiver(self, address):
        h = RawReceiver()
        r = self.conn.create_receiver(address, credit=0, handler=h)
        return r, h

    def next_raw(self, r, h):
        r.link.flow(1)
        self.conn.wait(lambda: h.got, timeout=WAIT, msg="waiting for a message")
        return h.got.pop(0)

    def settle(self, d, state, failed=False):
        d.local.failed = failed
        d.update(state)
        d.settle()
        # Round trip so that the outcome is in before the next flow.
        self.links += 1
        self.conn.create_sender("sync", name="sync-%d" % self.links).close()

    def test_bare_message_byte_for_byte(self):
        """The bare message (properties through footer) arrives exactly as
        sent; delivery annotations are gone; message annotations are the
        bytes sent; the header keeps durable/priority/ttl and says
        first-acquirer on the first delivery."""
        d = self.send_raw("pt.q", FULL)
        self.assertEqual(d.remote_state, Delivery.ACCEPTED)
        r, h = self.raw_receiver("pt.q")
        raw, dlv = self.next_raw(r, h)
        header, rest = split_header(raw)
        self.assertEqual(header, [True, 9, 60000, True, 0])
        self.assertEqual(rest, MESSAGE_ANNOTATIONS + BARE)
        self.assertNotIn(b"next-hop-only", raw)

        # Per delivery: released keeps delivery-count, first-acquirer false.
        self.settle(dlv, Delivery.RELEASED)
        raw, dlv = self.next_raw(r, h)
        header, rest = split_header(raw)
        self.assertEqual(header, [True, 9, 60000, False, 0])
        self.assertEqual(rest, MESSAGE_ANNOTATIONS + BARE)

        # A failed delivery counts.
        self.settle(dlv, Delivery.MODIFIED, failed=True)
        raw, dlv = self.next_raw(r, h)
        header, rest = split_header(raw)
        self.assertEqual(header, [True, 9, 60000, False, 1])
        self.assertEqual(rest, MESSAGE_ANNOTATIONS + BARE)
        self.settle(dlv, Delivery.ACCEPTED)

    def test_bare_message_only(self):
        """A message of only a bare part comes back as header + the same
        bytes: no annotations section is invented."""
        payload = PROPERTIES + BODY
        self.assertEqual(self.send_raw("pt.bare", payload).remote_state, Delivery.ACCEPTED)
        r, h = self.raw_receiver("pt.bare")
        raw, dlv = self.next_raw(r, h)
        header, rest = split_header(raw)
        self.assertEqual(header, [False, 4, None, True, 0])
        self.assertEqual(rest, payload)
        self.settle(dlv, Delivery.ACCEPTED)

    def test_large_message_over_many_frames(self):
        """A message larger than a frame (sent and delivered in several
        transfer frames) also passes byte for byte."""
        chunk = bytes(range(256)) * 1024  # 256 KiB, two frames' worth at the 128K default
        payload = MESSAGE_ANNOTATIONS + PROPERTIES + section(0x75, bin32(chunk)) + \
            section(0x75, bin32(chunk[::-1])) + FOOTER
        self.assertEqual(self.send_raw("pt.large", payload).remote_state, Delivery.ACCEPTED)
        r, h = self.raw_receiver("pt.large")
        raw, dlv = self.next_raw(r, h)
        header, rest = split_header(raw)
        self.assertEqual(header, [False, 4, None, True, 0])
        self.assertEqual(len(rest), len(payload))
        self.assertTrue(rest == payload, "the large message changed on its way")
        self.settle(dlv, Delivery.ACCEPTED)

    def test_amqp_value_and_sequence_bodies(self):
        """amqp-value and amqp-sequence bodies pass unchanged too."""
        for address, body in (
                ("pt.value", section(0x77, list32([str32("v"), ulong(1)]))),
                ("pt.seq", section(0x76, list8([uint(1)])) + section_wide(0x76, list32([null()])))):
            payload = APP_PROPERTIES + body
            self.assertEqual(self.send_raw(address, payload).remote_state, Delivery.ACCEPTED)
            r, h = self.raw_receiver(address)
            raw, dlv = self.next_raw(r, h)
            self.assertEqual(split_header(raw)[1], payload, address)
            self.settle(dlv, Delivery.ACCEPTED)

    def test_dead_letter_copy_keeps_bare_bytes(self):
        """A message rejected with a condition reaches DLQ with its bare
        message byte for byte; its annotations are the original ones plus
        the dead-letter ones."""
        self.assertEqual(self.send_raw("pt.dl", FULL).remote_state, Delivery.ACCEPTED)
        r, h = self.raw_receiver("pt.dl")
        raw, dlv = self.next_raw(r, h)
        dlv.local.condition = Condition("app:bad", "no thanks")
        self.settle(dlv, Delivery.REJECTED)
        r, h = self.raw_receiver("DLQ")
        raw, dlv = self.next_raw(r, h)
        header, rest = split_header(raw)
        self.assertEqual(header, [True, 9, 60000, True, 0])
        self.assertTrue(rest.endswith(BARE), "the bare message changed on its way to DLQ")
        annotations = decode_section(rest[:len(rest) - len(BARE)], 0x72)
        self.assertEqual(annotations, {
            "x-opt-kept": "kept", "x-opt-n": 42,
            "x-opt-dead-letter-reason": "rejected",
            "x-opt-dead-letter-description": "app:bad: no thanks",
            "x-opt-original-address": "pt.dl"})
        self.settle(dlv, Delivery.ACCEPTED)

    def test_modified_annotations_keep_bare_bytes(self):
        """Annotations added by a modified outcome change only the
        message-annotations section; the bare message stays byte for byte."""
        payload = PROPERTIES + APP_PROPERTIES + BODY + FOOTER
        self.assertEqual(self.send_raw("pt.mod", payload).remote_state, Delivery.ACCEPTED)
        r, h = self.raw_receiver("pt.mod")
        raw, dlv = self.next_raw(r, h)
        dlv.local.annotations = {symbol("x-opt-added"): "yes"}
        self.settle(dlv, Delivery.MODIFIED)
        raw, dlv = self.next_raw(r, h)
        header, rest = split_header(raw)
        self.assertTrue(rest.endswith(payload), "the bare message changed")
        self.assertEqual(decode_section(rest[:len(rest) - len(payload)], 0x72),
                         {"x-opt-added": "yes"})
        self.settle(dlv, Delivery.ACCEPTED)

    def test_malformed_rejected(self):
        """Malformed payloads are rejected with amqp:decode-error and are not
        enqueued; the link stays usable."""
        bad = {
            "not described": b"\xa1\x03abc",
            "truncated body": section(0x75, b"\xa0\x10abc"),
            "truncated list": PROPERTIES[:-3],
            "unknown section": section(0x79, null()),
            "out of order": BODY + PROPERTIES,
            "repeated properties": PROPERTIES + PROPERTIES + BODY,
            "bad symbolic descriptor": section_symbolic("amqp:nonsense:list", list8([])),
            "empty": b"",
        }
        for why, payload in bad.items():
            d = self.send_raw("pt.bad", payload)
            self.assertEqual(d.remote_state, Delivery.REJECTED, why)
            self.assertEqual(d.remote.condition.name, "amqp:decode-error", why)
            d.settle()
        good = PROPERTIES + BODY
        self.assertEqual(self.send_raw("pt.bad", good).remote_state, Delivery.ACCEPTED)
        r, h = self.raw_receiver("pt.bad")
        raw, dlv = self.next_raw(r, h)
        self.assertEqual(split_header(raw)[1], good, "a rejected message was enqueued")
        self.settle(dlv, Delivery.ACCEPTED)

    def test_open_properties(self):
        """The open frame carries product "hadron" and the version that
        hadrond --version prints."""
        props = self.conn.conn.remote_properties
        self.assertEqual(props.get("product"), "hadron")
        code, out, err = run_hadrond(["--version"])
        self.assertEqual(code, 0, err)
        version = props.get("version")
        self.assertTrue(version, props)
        self.assertIn(version, out)


if __name__ == "__main__":
    hadron_test.main()
