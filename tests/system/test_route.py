"""The route module: address patterns choose node type, creation and
per-node settings; aliases; fallback to the core defaults; reload on SIGHUP;
bad rules stop hadrond from starting."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import unittest

from proton import Delivery, Message
from proton.utils import BlockingConnection, LinkDetached

import hadron_test
from hadron_test import Broker, BrokerError, Caps, SharedBroker, WAIT, caps_of, receiver, run_hadrond, send_wait, take


RULES = """
    [module route]
    rule = exact.one topic
    rule = fixed.* any auto-create=no
    rule = events.# topic
    rule = audit-* topic
    rule = orders.# queue dead-letter-address=orders.DLQ max-deliveries=2
    rule = mixed.*.end queue max-depth=1
    rule = first.# topic
    rule = first.special queue
    rule = second.special queue
    rule = second.# topic
    rule = deep.#.leaf topic
    rule = hup.# queue
    rule = anyof.* any
    rule = exp.# queue expiry-address=exp.gone
    alias = legacy.orders orders.main
    alias = fixed.alias fixed.target
    alias = old.news news.feed
    """


class RouteTest(SharedBroker):
    broker_args = dict(name="route", config=RULES)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.broker.wait_log(r"route.*14 rules and 3 aliases", timeout=5)

    def setUp(self):
        super().setUp()
        self.conn = self.connect()
        self.links = 0

    def name(self):
        self.links += 1
        return "link-%d" % self.links

    def node_type(self, address):
        """The node type the broker answers an attach to address with."""
        r = receiver(self.conn, address, 0, name=self.name())
        caps = caps_of(r.link.remote_source)
        r.close()
        self.assertEqual(len(caps), 1, caps)
        return caps[0]

    def refusal(self, address, sender=False):
        """The condition an attach to address is refused with (None: not refused)."""
        try:
            if sender:
                self.conn.create_sender(address, name=self.name()).close()
            else:
                receiver(self.conn, address, 0, name=self.name()).close()
        except LinkDetached as e:
            return e.condition
        return None

    def put(self, address, *bodies):
        s = self.conn.create_sender(address, name=self.name())
        for b in bodies:
            self.assertEqual(send_wait(self.conn, s, Message(body=b)).remote_state,
                             Delivery.ACCEPTED)
        s.close()

    def get(self, address):
        r = receiver(self.conn, address, 1, name=self.name())
        m, d = take(self.conn, r)
        d.update(Delivery.ACCEPTED)
        d.settle()
        r.close()
        return m

    def test_exact_pattern(self):
        """An exact pattern matches that address only."""
        self.assertEqual(self.node_type("exact.one"), "topic")
        self.assertEqual(self.node_type("exact.one.two"), "queue")
        self.assertEqual(self.node_type("exact"), "queue")

    def test_star_matches_one_word(self):
        """'*' stands for exactly one word: fixed.a matches (and is refused,
        auto-create=no), fixed.a.b and fixed do not."""
        self.assertEqual(self.refusal("fixed.a"), "amqp:not-found")
        self.assertEqual(self.refusal("fixed.a", sender=True), "amqp:not-found")
        self.assertIsNone(self.refusal("fixed.a.b"))
        self.assertIsNone(self.refusal("fixed"))

    def test_auto_create_no_with_relay(self):
        """A relayed message to an address a rule keeps from being created is
        rejected with amqp:not-found."""
        s = self.conn.create_sender(None, name=self.name())
        dlv = send_wait(self.conn, s, Message(address="fixed.relay", body="x"))
        self.assertEqual(dlv.remote_state, Delivery.REJECTED)
        self.assertEqual(dlv.remote.condition.name, "amqp:not-found")

    def test_hash_matches_any_number_of_words(self):
        """'#' stands for zero or more words."""
        for address in ("events", "events.a", "events.a.b.c"):
            self.assertEqual(self.node_type(address), "topic", address)
        self.assertEqual(self.node_type("eventsx"), "queue")
        self.assertEqual(self.node_type("deep.leaf"), "topic")
        self.assertEqual(self.node_type("deep.x.y.leaf"), "topic")
        self.assertEqual(self.node_type("deep.x.y.leaf.no"), "queue")

    def test_word_prefix(self):
        """'abc*' matches words starting with abc."""
        self.assertEqual(self.node_type("audit-log"), "topic")
        self.assertEqual(self.node_type("audit-"), "topic")
        self.assertEqual(self.node_type("audit"), "queue")
        self.assertEqual(self.node_type("xaudit-log"), "queue")
        self.assertEqual(self.node_type("audit-log.more"), "queue")

    def test_first_match_wins(self):
        """Rules are tried in file order: a broader rule before a narrower
        one hides it; a narrower one first wins for its address."""
        self.assertEqual(self.node_type("first.special"), "topic")
        self.assertEqual(self.node_type("second.special"), "queue")
        self.assertEqual(self.node_type("second.other"), "topic")

    def test_any_lets_capability_decide(self):
        """A rule of type any leaves the type to the link's capability, and
        without one to the core default."""
        r = receiver(self.conn, "anyof.t", 0, name=self.name(), options=Caps("topic"))
        self.assertEqual(caps_of(r.link.remote_source), ["topic"])
        r = receiver(self.conn, "anyof.q", 0, name=self.name(), options=Caps("queue"))
        self.assertEqual(caps_of(r.link.remote_source), ["queue"])
        self.assertEqual(self.node_type("anyof.plain"), "queue")

    def test_rule_type_contradicted_by_capability(self):
        """A capability that contradicts the type a rule gives is refused
        with amqp:precondition-failed."""
        with self.assertRaises(LinkDetached) as cm:
            receiver(self.conn, "events.cap", 0, name=self.name(), options=Caps("queue"))
        self.assertEqual(cm.exception.condition, "amqp:precondition-failed")

    def test_rule_dead_letter_and_max_deliveries(self):
        """A rule's dead-letter-address and max-deliveries apply to the nodes
        it creates: two failed deliveries move the message to orders.DLQ."""
        self.put("orders.new", "order-1")
        r = receiver(self.conn, "orders.new", 0, name=self.name())
        for expected in (0, 1):
            r.link.flow(1)
            m, d = take(self.conn, r)
            self.assertEqual(m.delivery_count, expected)
            d.local.failed = True
            d.update(Delivery.MODIFIED)
            d.settle()
        r.close()
        dead = self.get("orders.DLQ")
        self.assertEqual(dead.body, "order-1")
        self.assertEqual(dead.annotations["x-opt-dead-letter-reason"], "max-deliveries")
        self.assertEqual(dead.annotations["x-opt-original-address"], "orders.new")

    def test_rule_max_depth(self):
        """A rule's max-depth limits the queues it creates."""
        self.put("mixed.x.end", "one")
        s = self.conn.create_sender("mixed.x.end", name=self.name())
        dlv = send_wait(self.conn, s, Message(body="two"))
        self.assertEqual(dlv.remote_state, Delivery.REJECTED)
        self.assertEqual(dlv.remote.condition.name, "amqp:resource-limit-exceeded")
        dlv.settle()
        self.assertEqual(self.get("mixed.x.end").body, "one")

    def test_alias(self):
        """Links to an alias reach the target's node: messages sent to the
        alias come out of the target and the other way round; the target's
        rule applies (type and dead-letter address)."""
        self.assertEqual(self.node_type("legacy.orders"), "queue")
        self.put("legacy.orders", "via-alias")
        self.assertEqual(self.get("orders.main").body, "via-alias")
        self.put("orders.main", "via-target")
        self.assertEqual(self.get("legacy.orders").body, "via-target")
        self.put("legacy.orders", "reject-me")
        r = receiver(self.conn, "legacy.orders", 1, name=self.name())
        m, d = take(self.conn, r)
        d.update(Delivery.REJECTED)
        d.settle()
        r.close()
        dead = self.get("orders.DLQ")
        self.assertEqual(dead.body, "reject-me")
        self.assertEqual(dead.annotations["x-opt-original-address"], "orders.main")

    def test_alias_to_forbidden_target(self):
        """An alias whose target a rule keeps from being created is refused
        like the target itself (amqp:not-found)."""
        self.assertEqual(self.refusal("fixed.alias"), "amqp:not-found")
        self.assertEqual(self.refusal("fixed.target"), "amqp:not-found")

    def test_rule_expiry_address(self):
        """A rule's expiry-address receives the expired messages of the nodes
        the rule creates."""
        s = self.conn.create_sender("exp.q", name=self.name())
        s.send(Message(body="short", ttl=0.2))
        s.close()
        moved = self.get("exp.gone")
        self.assertEqual(moved.body, "short")
        self.assertEqual(moved.annotations["x-opt-original-address"], "exp.q")

    def test_alias_to_existing_target(self):
        """An alias whose target already exists joins that node."""
        self.put("news.feed", "before-alias-use")
        self.assertEqual(self.get("old.news").body, "before-alias-use")

    def test_fallback_to_core_defaults(self):
        """Addresses no rule matches get the core defaults: queue unless the
        topic prefix, dead letters to DLQ."""
        self.assertEqual(self.node_type("nomatch.q"), "queue")
        self.assertEqual(self.node_type("topic.nomatch"), "topic")
        self.put("nomatch.dl", "to-core-dlq")
        r = receiver(self.conn, "nomatch.dl", 1, name=self.name())
        m, d = take(self.conn, r)
        d.update(Delivery.REJECTED)
        d.settle()
        r.close()
        dead = self.get("DLQ")
        self.assertEqual(dead.body, "to-core-dlq")
        self.assertEqual(dead.annotations["x-opt-original-address"], "nomatch.dl")


class ReloadTest(unittest.TestCase):
    def test_sighup_applies_to_new_nodes(self):
        """After SIGHUP with changed rules, new nodes follow the new rules;
        nodes that exist keep their type.  A bad rule at reload is refused
        and the running rules stay."""
        with Broker(name="route-hup", config="[module route]\nrule = hup.# queue\n") as b:
            c = BlockingConnection(b.url(), timeout=WAIT)
            try:
                r = receiver(c, "hup.old", 0, name="old")
                self.assertEqual(caps_of(r.link.remote_source), ["queue"])
                with open(b.conf) as f:
                    text = f.read()
                with open(b.conf, "w") as f:
                    f.write(text.replace("rule = hup.# queue", "rule = hup.# topic"))
                b.reload()
                b.wait_log(r"reloaded: 1 rules", timeout=5)
                r = receiver(c, "hup.new", 0, name="new")
                self.assertEqual(caps_of(r.link.remote_source), ["topic"])
                r = receiver(c, "hup.old", 0, name="old-again")
                self.assertEqual(caps_of(r.link.remote_source), ["queue"])

                with open(b.conf, "w") as f:
                    f.write(text.replace("rule = hup.# queue", "rule = hup..# queue"))
                b.reload()
                b.wait_log(r"reload failed, keeping the running configuration", timeout=5)
                r = receiver(c, "hup.newer", 0, name="newer")
                self.assertEqual(caps_of(r.link.remote_source), ["topic"])
            finally:
                c.close()


class BadRuleTest(unittest.TestCase):
    BAD = [
        ("rule = a..b queue", "empty word"),
        ("rule = a.b#c queue", "'#' must be a whole word"),
        ("rule = a*b.c queue", "'*' may only end a word"),
        ("rule = a.# quux", "must be queue, topic or any"),
        ("rule = a.# queue bogus=1", ""),
        ("rule = a.# queue max-deliveries=-1", "max-deliveries"),
        ("rule = a.# queue auto-create=maybe", "auto-create"),
        ("alias = lonely", "alias"),
    ]

    def test_bad_rule_refuses_start(self):
        """Each bad rule or alias makes --check-config and a real start fail
        with exit 1 and an error naming FILE:LINE of the bad line."""
        for line, why in self.BAD:
            with self.subTest(line=line):
                b = Broker(name="route-bad",
                           config="[module route]\nrule = good.# queue\n%s\n" % line)
                with open(b.conf) as f:
                    lineno = f.read().splitlines().index(line) + 1
                where = "%s:%d:" % (b.conf, lineno)
                code, out, err = run_hadrond(["-c", b.conf, "--check-config"])
                self.assertEqual(code, 1, out + err)
                self.assertIn(where, err)
                self.assertIn(why, err)
                with self.assertRaises(BrokerError) as cm:
                    b.start()
                self.assertIn("exited with 1", str(cm.exception))
                self.assertIn(where, b.log())
                b.stop(expect_code=None)
                b.cleanup()

    def test_good_rules_check_ok(self):
        """The rules used above pass --check-config (so the failures come
        from the bad line alone)."""
        b = Broker(name="route-good", config=RULES)
        code, out, err = run_hadrond(["-c", b.conf, "--check-config"])
        self.assertEqual(code, 0, out + err)
        self.assertIn("configuration ok", out)
        b.cleanup()


if __name__ == "__main__":
    hadron_test.main()
