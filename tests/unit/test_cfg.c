/* core/cfg.h and core/settings.h: INI parsing with exact file:line, checking
 * sections against directive tables, value syntax, and the broker's own
 * settings built from a parsed file. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cfg.h"
#include "hadron/module.h"
#include "settings.h"

#define SRC "test.conf"

static char err[2048];

static hd_config_t *parse_ok(const char *text) {
  hd_config_t *cfg = NULL;
  err[0] = '\0';
  int rc = hd_cfg_parse_string(text, SRC, &cfg, err, sizeof err);
  if (rc != 0) fail_msg("parse failed: %s", err);
  assert_non_null(cfg);
  return cfg;
}

/* Parse must fail with an error that starts with `prefix` and contains
 * `word`. */
static void parse_fails(const char *text, const char *prefix, const char *word) {
  hd_config_t *cfg = NULL;
  err[0] = '\0';
  int rc = hd_cfg_parse_string(text, SRC, &cfg, err, sizeof err);
  if (rc == 0) {
    hd_cfg_free(cfg);
    fail_msg("parse accepted: expected '%s ... %s'", prefix, word);
  }
  assert_int_equal(rc, HD_ECONFIG);
  if (strncmp(err, prefix, strlen(prefix)) != 0) fail_msg("error '%s' does not start with '%s'", err, prefix);
  if (!strstr(err, word)) fail_msg("error '%s' lacks '%s'", err, word);
}

static void assert_contains(const char *text, const char *word) {
  if (!strstr(text, word)) fail_msg("'%s' lacks '%s'", text, word);
}

static hd_cfg_section_t *nth_section(hd_config_t *cfg, size_t n) {
  hd_cfg_section_t *s = cfg->sections;
  while (s && n--) s = s->next;
  assert_non_null(s);
  return s;
}

static size_t count_sections(const hd_config_t *cfg) {
  size_t n = 0;
  for (hd_cfg_section_t *s = cfg->sections; s; s = s->next) n++;
  return n;
}

/* ---- parsing ------------------------------------------------------------- */

/* "[kind]" and "[kind name]" headers, keys and values in file order. */
static void t_parse_sections(void **state) {
  (void)state;
  hd_config_t *cfg = parse_ok("[broker]\n"
                              "workers = 2\n"
                              "[listener amqp]\n"
                              "host=127.0.0.1\n"
                              "  port   =   5672  \n"
                              "[queue   orders.eu]\n");
  assert_string_equal(cfg->source, SRC);
  assert_int_equal(count_sections(cfg), 3);
  hd_cfg_section_t *b = nth_section(cfg, 0);
  assert_string_equal(b->kind, "broker");
  assert_null(b->name);
  assert_non_null(b->values);
  assert_string_equal(b->values->key, "workers");
  assert_string_equal(b->values->value, "2");
  assert_null(b->values->next);

  hd_cfg_section_t *l = nth_section(cfg, 1);
  assert_string_equal(l->kind, "listener");
  assert_string_equal(l->name, "amqp");
  assert_string_equal(l->values->key, "host");
  assert_string_equal(l->values->value, "127.0.0.1");
  assert_string_equal(l->values->next->key, "port");
  assert_string_equal(l->values->next->value, "5672");

  hd_cfg_section_t *q = nth_section(cfg, 2);
  assert_string_equal(q->kind, "queue");
  assert_string_equal(q->name, "orders.eu");

  /* hd_cfg_next filters by kind, and NULL kind walks all. */
  assert_ptr_equal(hd_cfg_next(cfg, NULL, "listener"), l);
  assert_null(hd_cfg_next(cfg, l, "listener"));
  assert_ptr_equal(hd_cfg_next(cfg, NULL, NULL), b);
  assert_ptr_equal(hd_cfg_next(cfg, b, NULL), l);
  assert_null(hd_cfg_next(cfg, NULL, "topic"));
  hd_cfg_free(cfg);
}

/* Blanks around the words of a header are not part of them. */
static void t_parse_header_blanks(void **state) {
  (void)state;
  hd_config_t *cfg = parse_ok("[ broker ]\n"
                              "workers = 2\n"
                              "[  queue   orders.eu ]\n"
                              "max-depth = 3\n");
  assert_int_equal(count_sections(cfg), 2);
  assert_string_equal(nth_section(cfg, 0)->kind, "broker");
  assert_null(nth_section(cfg, 0)->name);
  assert_string_equal(nth_section(cfg, 0)->values->value, "2");
  assert_string_equal(nth_section(cfg, 1)->kind, "queue");
  assert_string_equal(nth_section(cfg, 1)->name, "orders.eu");
  assert_string_equal(nth_section(cfg, 1)->values->where, SRC ":4");
  hd_cfg_free(cfg);
}

/* Sections without any key are kept (inih alone would not report them). */
static void t_parse_empty_sections(void **state) {
  (void)state;
  hd_config_t *cfg = parse_ok("[queue a]\n"
                              "[queue b]\n"
                              "; nothing here\n"
                              "[topic t]\n"
                              "[broker]");
  assert_int_equal(count_sections(cfg), 4);
  static const char *const kinds[] = {"queue", "queue", "topic", "broker"};
  static const char *const wheres[] = {SRC ":1", SRC ":2", SRC ":4", SRC ":5"};
  for (size_t i = 0; i < 4; i++) {
    hd_cfg_section_t *s = nth_section(cfg, i);
    assert_string_equal(s->kind, kinds[i]);
    assert_null(s->values);
    assert_string_equal(s->where, wheres[i]);
  }
  assert_string_equal(nth_section(cfg, 1)->name, "b");

  /* An empty file parses to no sections. */
  hd_config_t *none = parse_ok("");
  assert_null(none->sections);
  hd_cfg_free(none);
  hd_cfg_free(cfg);
}

/* Every value and section remembers its exact line, after comments, blank
 * lines, inline comments and CRLF line ends. */
static void t_parse_line_numbers(void **state) {
  (void)state;
  hd_config_t *cfg = parse_ok("# leading comment\n"          /* 1 */
                              "\n"                           /* 2 */
                              "; another\n"                  /* 3 */
                              "[broker]\n"                   /* 4 */
                              "workers = 3 ; inline\n"       /* 5 */
                              "\n"                           /* 6 */
                              "   \n"                        /* 7 */
                              "# [listener fake]\n"          /* 8 */
                              "data-dir = /tmp/x\n"          /* 9 */
                              "[listener a]\r\n"             /* 10 */
                              "\r\n"                         /* 11 */
                              "port = 1\r\n"                 /* 12 */
                              "   ; indented comment\n"      /* 13 */
                              "host = ::\n");                /* 14 */
  assert_int_equal(count_sections(cfg), 2);
  hd_cfg_section_t *b = nth_section(cfg, 0), *l = nth_section(cfg, 1);
  assert_string_equal(b->where, SRC ":4");
  assert_string_equal(b->values->where, SRC ":5");
  assert_string_equal(b->values->value, "3");
  assert_string_equal(b->values->next->where, SRC ":9");
  assert_string_equal(l->where, SRC ":10");
  assert_string_equal(l->values->where, SRC ":12");
  assert_string_equal(l->values->value, "1");
  assert_string_equal(l->values->next->where, SRC ":14");
  assert_string_equal(l->values->next->value, "::");
  hd_cfg_free(cfg);
}

static void t_parse_key_before_section(void **state) {
  (void)state;
  parse_fails("workers = 1\n[broker]\n", SRC ":1: ", "'workers' appears before any section");
  parse_fails("# comment\n\nworkers = 1\n", SRC ":3: ", "before any section");
}

static void t_parse_bad_headers(void **state) {
  (void)state;
  parse_fails("[broker]\n\n[queue a b]\n", SRC ":3: ", "more than two words");
  parse_fails("[broker]\n[]\n", SRC ":2: ", "empty section header");
  parse_fails("[broker]\nworkers = 1\n[listener a\n", SRC ":3: ", "syntax error");
}

/* A line that is neither a header, a key = value nor a comment. */
static void t_parse_syntax_error(void **state) {
  (void)state;
  parse_fails("[broker]\n"
              "# fine\n"
              "workers = 1\n"
              "\n"
              "this line has no equals sign\n"
              "data-dir = x\n",
              SRC ":5: ", "syntax error");
}

/* A 5000-character line is refused with its line number. */
static void t_parse_line_too_long(void **state) {
  (void)state;
  static char text[5000 + 64];
  size_t vlen = 5000;
  int n = snprintf(text, 64, "[broker]\n# c\ndata-dir = ");
  memset(text + n, 'x', vlen);
  strcpy(text + n + vlen, "\nworkers = 1\n");
  parse_fails(text, SRC ":3: ", "line longer than");
}

/* Long lines below the parser's limit (ini_max_line = 4096 in cfg.c) are
 * kept whole, with exact line numbers after them. */
static void t_parse_long_line_fits(void **state) {
  (void)state;
  static char text[3000 + 64];
  size_t vlen = 3000;
  int n = snprintf(text, 64, "[broker]\n# c\ndata-dir = ");
  memset(text + n, 'y', vlen);
  strcpy(text + n + vlen, "\nworkers = 1\n");
  hd_config_t *cfg = parse_ok(text);
  hd_cfg_section_t *b = nth_section(cfg, 0);
  assert_int_equal(strlen(b->values->value), vlen);
  assert_string_equal(b->values->where, SRC ":3");
  assert_string_equal(b->values->next->where, SRC ":4");
  hd_cfg_free(cfg);
}

/* The file variant names the path and reports a missing file. */
static void t_parse_file(void **state) {
  (void)state;
  char path[] = "/tmp/hd-test-cfg-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  assert_non_null(f);
  fputs("[broker]\n\nworkers = 4\n[bogus words here]\n", f);
  fclose(f);
  hd_config_t *cfg = NULL;
  int rc = hd_cfg_parse_file(path, &cfg, err, sizeof err);
  assert_int_equal(rc, HD_ECONFIG);
  char want[128];
  snprintf(want, sizeof want, "%s:4: ", path);
  if (strncmp(err, want, strlen(want)) != 0) fail_msg("'%s' does not start with '%s'", err, want);

  f = fopen(path, "w");
  assert_non_null(f);
  fputs("[broker]\n\nworkers = 4\n", f);
  fclose(f);
  rc = hd_cfg_parse_file(path, &cfg, err, sizeof err);
  assert_int_equal(rc, 0);
  snprintf(want, sizeof want, "%s:3", path);
  assert_string_equal(cfg->sections->values->where, want);
  hd_cfg_free(cfg);
  unlink(path);

  rc = hd_cfg_parse_file(path, &cfg, err, sizeof err);
  assert_true(rc < 0);
  assert_contains(err, path);
}

/* ---- checking against a table -------------------------------------------- */

static const char *const modes[] = {"fast", "safe", NULL};
static const hd_directive_t schema[] = {
    {"port", HD_CFG_INT, 0, 1, 100, "10", NULL, "a port"},
    {"name", HD_CFG_STRING, HD_CFG_REQUIRED, 0, 0, NULL, NULL, "the thing's name"},
    {"tag", HD_CFG_STRING, HD_CFG_MULTI, 0, 0, NULL, NULL, "labels"},
    {"mode", HD_CFG_ENUM, 0, 0, 0, "safe", modes, "how"},
    {"on", HD_CFG_BOOL, 0, 0, 0, "no", NULL, "switch"},
    {"size", HD_CFG_SIZE, 0, 0, 0, "1K", NULL, "bytes"},
    {"wait", HD_CFG_DURATION, 0, 0, 60000, "1s", NULL, "time"},
    {"free", HD_CFG_INT, 0, 0, 0, NULL, NULL, "any integer"},
    HD_DIRECTIVE_END};

/* Parse one section of text and check it against `schema`. */
static int check_text(const char *text, hd_config_t **out) {
  hd_config_t *cfg = parse_ok(text);
  err[0] = '\0';
  int rc = hd_cfg_check(cfg->sections, schema, err, sizeof err);
  if (out) *out = cfg; else hd_cfg_free(cfg);
  return rc;
}

static void check_fails(const char *text, const char *prefix, const char *word) {
  int rc = check_text(text, NULL);
  if (rc == 0) fail_msg("check accepted '%s'", text);
  assert_int_equal(rc, HD_ECONFIG);
  if (strncmp(err, prefix, strlen(prefix)) != 0) fail_msg("error '%s' does not start with '%s'", err, prefix);
  if (!strstr(err, word)) fail_msg("error '%s' lacks '%s'", err, word);
}

/* A valid section: values, defaults for absent keys, MULTI items in order
 * with their lines. */
static void t_check_accessors(void **state) {
  (void)state;
  hd_config_t *cfg;
  int rc = check_text("[thing x]\n"
                      "name = n1\n"
                      "tag = a\n"
                      "size = 64K\n"
                      "tag = b\n"
                      "\n"
                      "tag = c\n"
                      "wait = 50s\n"
                      "on = YES\n"
                      "free = -7\n",
                      &cfg);
  if (rc) fail_msg("check failed: %s", err);
  hd_cfg_section_t *s = cfg->sections;
  assert_ptr_equal(s->schema, schema);
  assert_string_equal(hd_cfg_str(s, "name"), "n1");
  assert_int_equal(hd_cfg_int(s, "port"), 10); /* default */
  assert_string_equal(hd_cfg_str(s, "mode"), "safe");
  assert_int_equal(hd_cfg_int(s, "size"), 65536);
  assert_int_equal(hd_cfg_int(s, "wait"), 50000);
  assert_true(hd_cfg_bool(s, "on"));
  assert_int_equal(hd_cfg_int(s, "free"), -7);
  assert_true(hd_cfg_has(s, "size"));
  assert_false(hd_cfg_has(s, "port"));
  assert_int_equal(hd_cfg_count(s, "tag"), 3);
  assert_string_equal(hd_cfg_item(s, "tag", 0), "a");
  assert_string_equal(hd_cfg_item(s, "tag", 1), "b");
  assert_string_equal(hd_cfg_item(s, "tag", 2), "c");
  assert_null(hd_cfg_item(s, "tag", 3));
  assert_string_equal(hd_cfg_where(s, "tag", 0), SRC ":3");
  assert_string_equal(hd_cfg_where(s, "tag", 2), SRC ":7");
  assert_string_equal(hd_cfg_where(s, "port", 0), SRC ":1"); /* absent: the section */
  hd_cfg_free(cfg);
}

/* An unknown key names file:line and the section, and lists the known keys. */
static void t_check_unknown_key(void **state) {
  (void)state;
  check_fails("[thing x]\nname = n\n\n# typo next\nprot = 5\n", SRC ":5: ", "unknown key 'prot'");
  assert_contains(err, "[thing x]");
  assert_contains(err, "known keys: port name tag mode on size wait free");
}

/* A single key given twice names both lines; a MULTI key may repeat. */
static void t_check_repeated(void **state) {
  (void)state;
  check_fails("[thing x]\nname = n\nport = 1\nport = 2\n", SRC ":4: ", "'port' is already set");
  assert_contains(err, SRC ":3");
  assert_int_equal(check_text("[thing x]\nname = n\ntag = 1\ntag = 1\n", NULL), 0);
}

static void t_check_types_ranges(void **state) {
  (void)state;
  check_fails("[thing]\nname = n\nport = abc\n", SRC ":3: ", "must be an integer");
  assert_contains(err, "'port = abc'");
  assert_contains(err, "[thing]");
  check_fails("[thing]\nname = n\nport = 0\n", SRC ":3: ", "between 1 and 100");
  check_fails("[thing]\nname = n\nport = 101\n", SRC ":3: ", "between 1 and 100");
  assert_int_equal(check_text("[thing]\nname = n\nport = 100\n", NULL), 0);
  assert_int_equal(check_text("[thing]\nname = n\nport = 1\n", NULL), 0);
  check_fails("[thing]\nname = n\nport = 5x\n", SRC ":3: ", "integer");
  check_fails("[thing]\nname = n\nmode = quick\n", SRC ":3: ", "must be one of: fast, safe");
  check_fails("[thing]\nname = n\non = maybe\n", SRC ":3: ", "yes or no");
  check_fails("[thing]\nname = n\nsize = 12Q\n", SRC ":3: ", "size");
  check_fails("[thing]\nname = n\nwait = 5 parsecs\n", SRC ":3: ", "duration");
  check_fails("[thing]\nname = n\nwait = 2m\n", SRC ":3: ", "between 0 and 60000");
  /* min == max == 0 means no range. */
  assert_int_equal(check_text("[thing]\nname = n\nfree = -99999999999\n", NULL), 0);
}

static void t_check_required(void **state) {
  (void)state;
  check_fails("\n[thing x]\nport = 3\n", SRC ":2: ", "[thing x] needs 'name'");
  assert_contains(err, "the thing's name");
}

/* ---- value syntax ----------------------------------------------------------- */

static void t_values_bool(void **state) {
  (void)state;
  static const char *const yes[] = {"yes", "true", "on", "1", "YES", "True", "On"};
  static const char *const no[] = {"no", "false", "off", "0", "NO", "False", "OFF"};
  static const char *const bad[] = {"", "y", "n", "2", "yess", "enabled", " yes"};
  for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
    bool b = false;
    assert_int_equal(hd_cfg_parse_bool(yes[i], &b), 0);
    assert_true(b);
  }
  for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
    bool b = true;
    assert_int_equal(hd_cfg_parse_bool(no[i], &b), 0);
    assert_false(b);
  }
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    bool b;
    if (hd_cfg_parse_bool(bad[i], &b) != HD_ECONFIG) fail_msg("'%s' accepted", bad[i]);
  }
}

static void t_values_size(void **state) {
  (void)state;
  static const struct {
    const char *t;
    int64_t v;
  } ok[] = {
      {"0", 0},          {"512", 512},           {"64K", 65536},        {"64k", 65536},
      {"64KB", 65536},   {"64KiB", 65536},       {"1M", 1048576},       {"1 MiB", 1048576},
      {"2G", 2147483648}, {"1GiB", 1073741824},  {"3gb", 3221225472},   {"1T", 1099511627776},
      {"10b", 10},       {"9223372036854775807", INT64_MAX},
      {"8388607T", 8388607LL << 40},
  };
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
    int64_t v = -1;
    if (hd_cfg_parse_size(ok[i].t, &v) != 0) fail_msg("'%s' refused", ok[i].t);
    if (v != ok[i].v) fail_msg("'%s' -> %lld", ok[i].t, (long long)v);
  }
  static const char *const bad[] = {
      "", "K", "-1", "1X", "1.5M", "+5", " 5", "1KK", "5ms",
      "9223372036854775808",    /* INT64_MAX + 1 */
      "99999999999999999999",   /* beyond unsigned long long */
      "9007199254740992K",      /* 2^63 */
      "8589934592G",            /* 2^63 */
      "8388608T",               /* 2^63 */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int64_t v = 12345;
    if (hd_cfg_parse_size(bad[i], &v) != HD_ECONFIG) fail_msg("'%s' accepted as %lld", bad[i], (long long)v);
  }
}

static void t_values_duration(void **state) {
  (void)state;
  static const struct {
    const char *t;
    int64_t v;
  } ok[] = {{"0", 0},        {"250", 250},       {"250ms", 250}, {"30s", 30000},
            {"5m", 300000},  {"2h", 7200000},    {"1 s", 1000},  {"10MS", 10},
            {"2562047788015h", 2562047788015LL * 3600000}};
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
    int64_t v = -1;
    if (hd_cfg_parse_duration(ok[i].t, &v) != 0) fail_msg("'%s' refused", ok[i].t);
    if (v != ok[i].v) fail_msg("'%s' -> %lld", ok[i].t, (long long)v);
  }
  static const char *const bad[] = {"", "s", "-5s", "1.5s", "5d", "5 days", "1K",
                                    "2562047788016h", /* overflows int64 ms */
                                    "153722867280913m"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int64_t v = 12345;
    if (hd_cfg_parse_duration(bad[i], &v) != HD_ECONFIG) fail_msg("'%s' accepted as %lld", bad[i], (long long)v);
  }
}

static void t_values_int(void **state) {
  (void)state;
  int64_t v;
  assert_int_equal(hd_cfg_parse_int("42", &v), 0);
  assert_int_equal(v, 42);
  assert_int_equal(hd_cfg_parse_int("-42", &v), 0);
  assert_int_equal(v, -42);
  assert_int_equal(hd_cfg_parse_int("9223372036854775807", &v), 0);
  assert_true(v == INT64_MAX);
  static const char *const bad[] = {"", "x", "4 2", "42k", "9223372036854775808",
                                    "-9223372036854775809"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    if (hd_cfg_parse_int(bad[i], &v) != HD_ECONFIG) fail_msg("'%s' accepted", bad[i]);
}

/* ---- settings ------------------------------------------------------------ */

static hd_settings_t *build_ok(const char *text) {
  hd_config_t *cfg = parse_ok(text);
  hd_settings_t *st = NULL;
  err[0] = '\0';
  int rc = hd_settings_build(cfg, &st, err, sizeof err);
  if (rc) fail_msg("build failed: %s", err);
  return st;
}

static void build_fails(const char *text, const char *prefix, const char *word) {
  hd_config_t *cfg = parse_ok(text);
  hd_settings_t *st = NULL;
  err[0] = '\0';
  int rc = hd_settings_build(cfg, &st, err, sizeof err); /* frees cfg on failure */
  if (rc == 0) {
    hd_settings_free(st);
    fail_msg("build accepted; expected '%s'", word);
  }
  assert_int_equal(rc, HD_ECONFIG);
  if (strncmp(err, prefix, strlen(prefix)) != 0) fail_msg("error '%s' does not start with '%s'", err, prefix);
  if (!strstr(err, word)) fail_msg("error '%s' lacks '%s'", err, word);
}

/* A file with only a listener runs on the documented [broker] defaults. */
static void t_settings_defaults(void **state) {
  (void)state;
  hd_settings_t *st = build_ok("[listener amqp]\n");
  assert_true(st->workers >= 1);
  assert_string_equal(st->data_dir, "./data");
  assert_null(st->users_file);
  assert_int_equal(st->log_level, HD_LOG_INFO);
  assert_false(st->log_syslog);
  assert_int_equal(st->max_connections, 65536);
  assert_int_equal(st->memory_limit, 1LL << 30);
  assert_int_equal(st->max_message_size, 64LL << 20);
  assert_int_equal(st->credit_window, 200);
  assert_int_equal(st->drain_timeout_ms, 10000);
  assert_true(st->auto_create);
  assert_string_equal(st->topic_prefix, "topic.");
  assert_string_equal(st->defaults.dead_letter_address, "DLQ");
  assert_string_equal(st->defaults.expiry_address, "");
  assert_int_equal(st->defaults.max_deliveries, 10);
  assert_int_equal(st->defaults.max_depth, 0);
  assert_null(st->nodes);

  hd_listener_conf_t *l = st->listeners;
  assert_non_null(l);
  assert_null(l->next);
  assert_string_equal(l->name, "amqp");
  assert_string_equal(l->where, SRC ":1");
  assert_string_equal(l->host, "127.0.0.1");
  assert_int_equal(l->port, 5672);
  assert_int_equal(l->mechs, HD_MECH_ANONYMOUS);
  assert_false(l->plain_over_cleartext);
  assert_null(l->tls_cert);
  assert_false(l->tls_client_auth);
  assert_int_equal(l->max_frame_size, 131072);
  assert_int_equal(l->channel_max, 1023);
  assert_int_equal(l->max_sessions, 64);
  assert_int_equal(l->max_links, 1024);
  assert_int_equal(l->idle_timeout_ms, 60000);
  assert_int_equal(l->max_connections, 0);
  hd_settings_free(st);

  /* The embedded default configuration builds. */
  st = build_ok(hd_default_config);
  assert_int_equal(st->listeners->port, 5672);
  hd_settings_free(st);
}

/* Values given in the file, nodes with their overrides (-1/NULL inherit). */
static void t_settings_values(void **state) {
  (void)state;
  hd_settings_t *st = build_ok("[broker]\n"
                               "workers = 3\n"
                               "memory-limit = 256M\n"
                               "drain-timeout = 2s\n"
                               "auto-create = no\n"
                               "dead-letter-address =\n"
                               "users-file = /etc/hadron/users\n"
                               "log-level = debug\n"
                               "[listener a]\n"
                               "port = 0\n"
                               "sasl-mechanisms = PLAIN, anonymous\n"
                               "plain-over-cleartext = yes\n"
                               "idle-timeout = 0\n"
                               "[queue q1]\n"
                               "max-depth = 5\n"
                               "[topic t1]\n"
                               "dead-letter-address = dlq.t\n");
  assert_int_equal(st->workers, 3);
  assert_int_equal(st->memory_limit, 256LL << 20);
  assert_int_equal(st->drain_timeout_ms, 2000);
  assert_false(st->auto_create);
  assert_string_equal(st->defaults.dead_letter_address, "");
  assert_string_equal(st->users_file, "/etc/hadron/users");
  assert_int_equal(st->log_level, HD_LOG_DEBUG);
  assert_int_equal(st->listeners->port, 0);
  assert_int_equal(st->listeners->mechs, HD_MECH_PLAIN | HD_MECH_ANONYMOUS);
  assert_int_equal(st->listeners->idle_timeout_ms, 0);

  const hd_node_conf_t *q = NULL, *t = NULL;
  for (const hd_node_conf_t *n = st->nodes; n; n = n->next) {
    if (strcmp(n->address, "q1") == 0) q = n;
    if (strcmp(n->address, "t1") == 0) t = n;
  }
  assert_non_null(q);
  assert_non_null(t);
  assert_int_equal(q->type, HD_NODE_QUEUE);
  assert_string_equal(q->where, SRC ":14");
  assert_int_equal(q->opts.max_depth, 5);
  assert_int_equal(q->opts.max_deliveries, -1);
  assert_null(q->opts.dead_letter_address);
  assert_int_equal(t->type, HD_NODE_TOPIC);
  assert_string_equal(t->opts.dead_letter_address, "dlq.t");
  assert_int_equal(t->opts.max_depth, -1);
  hd_settings_free(st);
}

/* Listener combinations that cannot work are refused with the listener's
 * line and what to change. */
static void t_settings_listener_validation(void **state) {
  (void)state;
  build_fails("[broker]\nusers-file = u\n[listener a]\nsasl-mechanisms = PLAIN\n", SRC ":3: ",
              "PLAIN without TLS");
  build_fails("[listener a]\nsasl-mechanisms = PLAIN\nplain-over-cleartext = yes\n", SRC ":1: ",
              "users-file");
  build_fails("[listener a]\ntls-cert = c.pem\ntls-key = k.pem\nsasl-mechanisms = EXTERNAL\n",
              SRC ":1: ", "EXTERNAL");
  assert_contains(err, "tls-client-auth = required");
  build_fails("\n[listener a]\ntls-cert = c.pem\n", SRC ":2: ", "tls-cert and tls-key go together");
  build_fails("[listener a]\ntls-key = k.pem\n", SRC ":1: ", "tls-cert and tls-key go together");
  build_fails("[listener a]\ntls-cert = c.pem\ntls-key = k.pem\ntls-client-auth = required\n",
              SRC ":1: ", "tls-ca");
  build_fails("[listener a]\nsasl-mechanisms = KERBEROS\n", SRC ":2: ", "ANONYMOUS, PLAIN and/or EXTERNAL");
  build_fails("[listener a]\nsasl-mechanisms =\n", SRC ":2: ", "sasl-mechanisms");
  build_fails("[listener]\n", SRC ":1: ", "needs a name");
  build_fails("[listener a]\nport = 70000\n", SRC ":2: ", "between 0 and 65535");
  build_fails("[broker]\nworkers = 2\n", SRC, "no [listener NAME] section");

  /* The same listeners made valid. */
  hd_settings_t *st = build_ok("[broker]\nusers-file = u\n"
                               "[listener a]\nsasl-mechanisms = PLAIN\ntls-cert = c\ntls-key = k\n"
                               "[listener b]\nsasl-mechanisms = EXTERNAL ANONYMOUS\ntls-cert = c\n"
                               "tls-key = k\ntls-ca = ca\ntls-client-auth = required\n");
  assert_string_equal(st->listeners->name, "a");
  assert_string_equal(st->listeners->next->name, "b");
  assert_true(st->listeners->next->tls_client_auth);
  assert_int_equal(st->listeners->next->mechs, HD_MECH_EXTERNAL | HD_MECH_ANONYMOUS);
  hd_settings_free(st);
}

static void t_settings_duplicates_and_kinds(void **state) {
  (void)state;
  build_fails("[listener a]\n\n[listener a]\nport = 1\n", SRC ":3: ", "listener 'a' is already defined at " SRC ":1");
  build_fails("[listener a]\n[queue q]\n[queue q]\n", SRC ":3: ", "address 'q' is already declared at " SRC ":2");
  build_fails("[listener a]\n[queue q]\n[topic q]\n", SRC ":3: ", "already declared");
  build_fails("[listener a]\n[exchange x]\n", SRC ":2: ", "unknown section [exchange]");
  build_fails("[broker]\n[listener a]\n[broker]\n", SRC ":3: ", "[broker] appears twice");
  build_fails("[broker main]\n[listener a]\n", SRC ":1: ", "[broker] takes no name");
  build_fails("[listener a]\n[queue]\n", SRC ":2: ", "needs an address");
  build_fails("[listener a]\n[module]\n", SRC ":2: ", "needs the module's name");
  build_fails("[listener a]\n[module m]\n[module m]\n", SRC ":3: ", "module 'm' is already loaded");
  build_fails("[broker]\nworkerz = 1\n[listener a]\n", SRC ":2: ", "unknown key 'workerz'");
  build_fails("[listener a]\n[queue q]\nmax-deliveries = -1\n", SRC ":3: ", "max-deliveries");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(t_parse_sections),
      cmocka_unit_test(t_parse_header_blanks),
      cmocka_unit_test(t_parse_empty_sections),
      cmocka_unit_test(t_parse_line_numbers),
      cmocka_unit_test(t_parse_key_before_section),
      cmocka_unit_test(t_parse_bad_headers),
      cmocka_unit_test(t_parse_syntax_error),
      cmocka_unit_test(t_parse_line_too_long),
      cmocka_unit_test(t_parse_long_line_fits),
      cmocka_unit_test(t_parse_file),
      cmocka_unit_test(t_check_accessors),
      cmocka_unit_test(t_check_unknown_key),
      cmocka_unit_test(t_check_repeated),
      cmocka_unit_test(t_check_types_ranges),
      cmocka_unit_test(t_check_required),
      cmocka_unit_test(t_values_bool),
      cmocka_unit_test(t_values_size),
      cmocka_unit_test(t_values_duration),
      cmocka_unit_test(t_values_int),
      cmocka_unit_test(t_settings_defaults),
      cmocka_unit_test(t_settings_values),
      cmocka_unit_test(t_settings_listener_validation),
      cmocka_unit_test(t_settings_duplicates_and_kinds),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
