/* modules/route/route_rules.h: address patterns, rule and alias syntax,
 * and first-match-wins lookup. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "route_rules.h"

static char err[512];

static void match(const char *pattern, const char *address, bool want) {
  err[0] = '\0';
  if (hd_route_pattern_check(pattern, err, sizeof err) != 0) fail_msg("pattern '%s' refused: %s", pattern, err);
  if (hd_route_match(pattern, address) != want)
    fail_msg("'%s' %s '%s'", pattern, want ? "should match" : "should not match", address);
}

static void t_match_exact(void **state) {
  (void)state;
  match("orders", "orders", true);
  match("orders.eu", "orders.eu", true);
  match("orders.eu", "orders.us", false);
  match("orders.eu", "orders", false);
  match("orders", "orders.eu", false);
  match("orders.eu", "orders.eu.x", false);
  match("orders", "order", false);
  match("order", "orders", false);
  match("orders.eu", "orders.eu.", false);
  match("a.b", "ab", false);
}

/* '*' is exactly one whole word. */
static void t_match_star(void **state) {
  (void)state;
  match("*", "orders", true);
  match("*", "orders.eu", false);
  match("orders.*", "orders.eu", true);
  match("orders.*", "orders", false);
  match("orders.*", "orders.eu.de", false);
  match("*.eu", "orders.eu", true);
  match("*.eu", "eu", false);
  match("a.*.c", "a.b.c", true);
  match("a.*.c", "a.c", false);
  match("a.*.c", "a.b.b.c", false);
  match("*.*", "a.b", true);
  match("*.*", "a", false);
}

/* '#' is zero or more words, at the start, middle or end of a pattern. */
static void t_match_hash(void **state) {
  (void)state;
  match("#", "a", true);
  match("#", "a.b.c", true);
  match("orders.#", "orders", true); /* zero words */
  match("orders.#", "orders.eu", true);
  match("orders.#", "orders.eu.de.x", true);
  match("orders.#", "order", false);
  match("orders.#", "ordersx.eu", false);
  match("#.audit", "audit", true); /* zero words */
  match("#.audit", "x.audit", true);
  match("#.audit", "x.y.z.audit", true);
  match("#.audit", "x.audit.y", false);
  match("#.audit", "xaudit", false);
  match("a.#.z", "a.z", true); /* zero words */
  match("a.#.z", "a.b.z", true);
  match("a.#.z", "a.b.c.d.z", true);
  match("a.#.z", "a.b.c", false);
  match("a.#.z", "a", false);
  match("a.#.z", "z", false);
  match("a.#.*", "a.b", true);
  match("a.#.*", "a", false);
  match("#.b.#", "b", true);
  match("#.b.#", "x.b.y", true);
  match("#.b.#", "x.c.y", false);
}

/* 'abc*' matches words starting with abc, within one word only. */
static void t_match_prefix(void **state) {
  (void)state;
  match("audit-*", "audit-", true);
  match("audit-*", "audit-eu", true);
  match("audit-*", "audit", false);
  match("audit-*", "audi-eu", false);
  match("audit-*", "audit-eu.x", false); /* no match across dots */
  match("audit-*", "x.audit-eu", false);
  match("q.tmp*.in", "q.tmp42.in", true);
  match("q.tmp*.in", "q.tmp.in", true);
  match("q.tmp*.in", "q.tm.in", false);
  match("q.tmp*.in", "q.tmp4.2.in", false);
}

static void pattern_refused(const char *pattern, const char *word) {
  err[0] = '\0';
  if (hd_route_pattern_check(pattern, err, sizeof err) == 0) fail_msg("pattern '%s' accepted", pattern);
  if (!strstr(err, word)) fail_msg("'%s': error '%s' lacks '%s'", pattern, err, word);
}

/* Empty words, '#' inside a word and '*' not at a word's end are refused. */
static void t_pattern_check(void **state) {
  (void)state;
  pattern_refused("", "empty pattern");
  pattern_refused("a..b", "empty word");
  pattern_refused(".a", "empty word");
  pattern_refused("a.", "empty word");
  pattern_refused(".", "empty word");
  pattern_refused("a.b#", "'#' must be a whole word");
  pattern_refused("#a", "'#' must be a whole word");
  pattern_refused("a*b", "'*' may only end a word");
  pattern_refused("*a", "'*' may only end a word");
  pattern_refused("a.**", "'*' may only end a word");
  static const char *const good[] = {"a", "a.b", "*", "#", "a.*", "#.a", "a.#.b", "ab*", "x.ab*.#"};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++)
    if (hd_route_pattern_check(good[i], err, sizeof err) != 0) fail_msg("'%s' refused: %s", good[i], err);
}

static hd_route_rule_t rule_ok(const char *text) {
  hd_route_rule_t r;
  err[0] = '\0';
  if (hd_route_parse_rule(text, &r, err, sizeof err) != 0) fail_msg("rule '%s' refused: %s", text, err);
  return r;
}

static void rule_refused(const char *text, const char *word) {
  hd_route_rule_t r;
  err[0] = '\0';
  if (hd_route_parse_rule(text, &r, err, sizeof err) == 0) {
    hd_route_rule_free(&r);
    fail_msg("rule '%s' accepted", text);
  }
  if (!strstr(err, word)) fail_msg("'%s': error '%s' lacks '%s'", text, err, word);
  /* A refused rule owns nothing. */
  assert_null(r.pattern);
  assert_null(r.dead_letter_address);
  assert_null(r.expiry_address);
}

/* A bare pattern leaves everything unset. */
static void t_rule_defaults(void **state) {
  (void)state;
  hd_route_rule_t r = rule_ok("orders.#");
  assert_string_equal(r.pattern, "orders.#");
  assert_int_equal(r.type, HD_NODE_UNSPEC);
  assert_int_equal(r.auto_create, -1);
  assert_null(r.dead_letter_address);
  assert_null(r.expiry_address);
  assert_int_equal(r.max_deliveries, -1);
  assert_int_equal(r.max_depth, -1);
  hd_route_rule_free(&r);
}

static void t_rule_options(void **state) {
  (void)state;
  hd_route_rule_t r = rule_ok("  orders.*   queue auto-create=no dead-letter-address=dlq.orders "
                              "expiry-address=expired max-deliveries=3\tmax-depth=1000 ");
  assert_string_equal(r.pattern, "orders.*");
  assert_int_equal(r.type, HD_NODE_QUEUE);
  assert_int_equal(r.auto_create, 0);
  assert_string_equal(r.dead_letter_address, "dlq.orders");
  assert_string_equal(r.expiry_address, "expired");
  assert_int_equal(r.max_deliveries, 3);
  assert_int_equal(r.max_depth, 1000);
  hd_route_rule_free(&r);

  r = rule_ok("news.# topic auto-create=yes");
  assert_int_equal(r.type, HD_NODE_TOPIC);
  assert_int_equal(r.auto_create, 1);
  hd_route_rule_free(&r);

  r = rule_ok("x any auto-create=on max-deliveries=0 max-depth=0");
  assert_int_equal(r.type, HD_NODE_UNSPEC);
  assert_int_equal(r.auto_create, 1);
  assert_int_equal(r.max_deliveries, 0);
  assert_int_equal(r.max_depth, 0);
  hd_route_rule_free(&r);

  /* Options without a type; an empty value means "none". */
  r = rule_ok("x auto-create=false dead-letter-address=");
  assert_int_equal(r.type, HD_NODE_UNSPEC);
  assert_int_equal(r.auto_create, 0);
  assert_string_equal(r.dead_letter_address, "");
  hd_route_rule_free(&r);

  /* Given twice, the last one counts (and the first is not leaked). */
  r = rule_ok("x dead-letter-address=a dead-letter-address=b expiry-address=c expiry-address=d");
  assert_string_equal(r.dead_letter_address, "b");
  assert_string_equal(r.expiry_address, "d");
  hd_route_rule_free(&r);

  r = rule_ok("x max-deliveries=1000000");
  assert_int_equal(r.max_deliveries, 1000000);
  hd_route_rule_free(&r);
}

static void t_rule_errors(void **state) {
  (void)state;
  rule_refused("", "empty rule");
  rule_refused("   ", "empty rule");
  rule_refused("a..b queue", "empty word");
  rule_refused("a queues", "node type 'queues' must be queue, topic or any");
  rule_refused("a queue topic", "expected key=value, got 'topic'");
  rule_refused("a queue auto-create=maybe", "auto-create must be yes or no");
  rule_refused("a max-deliveries=-1", "max-deliveries must be 0..1000000");
  rule_refused("a max-deliveries=1000001", "max-deliveries must be 0..1000000");
  rule_refused("a max-deliveries=3x", "max-deliveries");
  rule_refused("a max-deliveries=", "max-deliveries");
  rule_refused("a max-depth=-5", "max-depth must be a number");
  rule_refused("a max-depth=lots", "max-depth");
  rule_refused("a queue colour=blue", "unknown option 'colour'");
  rule_refused("a queue colour=blue", "known: auto-create, dead-letter-address");
  /* The message quotes the whole rule as written. */
  rule_refused("orders.* queue max-depth=x", "rule 'orders.* queue max-depth=x'");
  /* Options already parsed are freed when a later one fails. */
  rule_refused("a dead-letter-address=d expiry-address=e max-depth=no", "max-depth");

  char big[1200];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  rule_refused(big, "too long");
}

static void t_alias(void **state) {
  (void)state;
  hd_route_alias_t a;
  assert_int_equal(hd_route_parse_alias("  old.name   new.name ", &a, err, sizeof err), 0);
  assert_string_equal(a.name, "old.name");
  assert_string_equal(a.target, "new.name");
  free(a.name);
  free(a.target);

  static const char *const bad[] = {"", "onlyone", "a b c"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    err[0] = '\0';
    if (hd_route_parse_alias(bad[i], &a, err, sizeof err) == 0) fail_msg("alias '%s' accepted", bad[i]);
    if (!strstr(err, "alias = NAME TARGET")) fail_msg("'%s': error '%s'", bad[i], err);
  }
  assert_true(hd_route_parse_alias("same same", &a, err, sizeof err) != 0);
  assert_non_null(strstr(err, "points at itself"));
}

/* Rules are tried in order and the first match decides; aliases map exact
 * names only. */
static void t_find_first_match(void **state) {
  (void)state;
  hd_route_table_t *t = calloc(1, sizeof *t);
  assert_non_null(t);
  static const char *const rules[] = {
      "orders.special queue max-depth=1",
      "orders.* queue max-depth=2",
      "orders.# topic max-depth=3",
      "# any max-depth=4",
  };
  t->n_rules = sizeof rules / sizeof *rules;
  t->rules = calloc(t->n_rules, sizeof *t->rules);
  assert_non_null(t->rules);
  for (size_t i = 0; i < t->n_rules; i++) t->rules[i] = rule_ok(rules[i]);
  t->n_aliases = 1;
  t->aliases = calloc(1, sizeof *t->aliases);
  assert_non_null(t->aliases);
  assert_int_equal(hd_route_parse_alias("legacy orders.eu", &t->aliases[0], err, sizeof err), 0);

  static const struct {
    const char *address;
    int64_t depth;
  } cases[] = {{"orders.special", 1}, {"orders.eu", 2}, {"orders", 3},
               {"orders.eu.de", 3},   {"billing", 4},   {"a.b.c", 4}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const hd_route_rule_t *r = hd_route_find(t, cases[i].address);
    if (!r) fail_msg("'%s' matched nothing", cases[i].address);
    if (r->max_depth != cases[i].depth)
      fail_msg("'%s' matched '%s'", cases[i].address, r->pattern);
  }
  assert_string_equal(hd_route_alias_of(t, "legacy"), "orders.eu");
  assert_null(hd_route_alias_of(t, "legacy.x"));
  assert_null(hd_route_alias_of(t, "orders.eu"));

  /* Without the catch-all, other addresses match nothing. */
  t->n_rules = 3;
  assert_null(hd_route_find(t, "billing"));
  t->n_rules = 4;
  hd_route_table_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(t_match_exact),
      cmocka_unit_test(t_match_star),
      cmocka_unit_test(t_match_hash),
      cmocka_unit_test(t_match_prefix),
      cmocka_unit_test(t_pattern_check),
      cmocka_unit_test(t_rule_defaults),
      cmocka_unit_test(t_rule_options),
      cmocka_unit_test(t_rule_errors),
      cmocka_unit_test(t_alias),
      cmocka_unit_test(t_find_first_match),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
