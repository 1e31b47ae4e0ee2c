#include "config.h"

#include "settings.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

const char hd_default_config[] =
    "# Hadron's embedded default configuration (hadrond without -c).\n"
    "[broker]\n"
    "data-dir = ./data\n"
    "\n"
    "# Loopback only, so anonymous access reaches only local users.\n"
    "[listener amqp]\n"
    "host = 127.0.0.1\n"
    "port = 5672\n"
    "sasl-mechanisms = ANONYMOUS\n";

static const char *const log_levels[] = {"err", "warning", "notice", "info", "debug", NULL};
static const char *const log_targets[] = {"stderr", "syslog", NULL};
static const char *const store_flush[] = {"always", "interval", NULL};

const hd_directive_t hd_broker_directives[] = {
    {"workers", HD_CFG_INT, 0, 0, 256, "0", NULL, "worker threads; 0 means one per CPU core"},
    {"data-dir", HD_CFG_STRING, 0, 0, 0, "./data", NULL, "directory for durable state"},
    {"module-dir", HD_CFG_STRING, 0, 0, 0, HD_MODULE_DIR, NULL, "where NAME.so modules are found"},
    {"log-level", HD_CFG_ENUM, 0, 0, 0, "info", log_levels, "least severe level logged"},
    {"log-target", HD_CFG_ENUM, 0, 0, 0, "stderr", log_targets, "where log lines go"},
    {"max-connections", HD_CFG_INT, 0, 1, 1000000, "65536", NULL, "connections accepted at once"},
    {"memory-limit", HD_CFG_SIZE, 0, 1 << 20, INT64_MAX, "1G", NULL,
     "message bytes held in memory before producers stop getting credit"},
    {"max-message-size", HD_CFG_SIZE, 0, 512, 1LL << 32, "64M", NULL, "largest message accepted"},
    /* 200, not the 1,000 of Artemis: with more, an unpaced producer runs far
     * ahead of its consumers (hundreds of ms of messages, cold in memory by
     * the time they are sent), and with both connections always runnable the
     * proactor keeps each on its own thread, so every message crosses cores.
     * With 200 the producer pauses for credit now and then: 1+1 unsettled
     * 1 KiB +15-34% msgs/s in interleaved runs, durable +6-24%, p50 under
     * 1 ms instead of 0.2-0.5 s (docs/BENCHMARKS.md, seventh session).  Qpid
     * Dispatch gives 250. */
    {"credit-window", HD_CFG_INT, 0, 1, 1 << 20, "200", NULL, "credit given to each producer link"},
    {"drain-timeout", HD_CFG_DURATION, 0, 0, 3600000, "10s", NULL,
     "how long SIGTERM waits for peers before closing sockets"},
    {"users-file", HD_CFG_STRING, 0, 0, 0, NULL, NULL, "users and password hashes for SASL PLAIN"},
    {"auto-create", HD_CFG_BOOL, 0, 0, 0, "yes", NULL, "create nodes on attach when no rule decides"},
    {"topic-prefix", HD_CFG_STRING, 0, 0, 0, "topic.", NULL,
     "addresses starting with this are topics when no rule or capability decides"},
    {"dead-letter-address", HD_CFG_STRING, 0, 0, 0, "DLQ", NULL,
     "where rejected and poison messages go (empty: keep them in their queue)"},
    {"expiry-address", HD_CFG_STRING, 0, 0, 0, "", NULL,
     "where expired messages go (empty: drop and count them)"},
    {"max-deliveries", HD_CFG_INT, 0, 0, 1000000, "10", NULL,
     "failed deliveries before a message is dead-lettered (0: unlimited)"},
    {"max-depth", HD_CFG_INT, 0, 0, INT64_MAX, "0", NULL,
     "messages a queue holds before refusing more (0: unlimited)"},
    {"durable", HD_CFG_BOOL, 0, 0, 0, "yes", NULL,
     "queues keep durable messages in the store (survive crashes)"},
    {"store-flush", HD_CFG_ENUM, 0, 0, 0, "always", store_flush,
     "always: fsync every commit; interval: fsync every store-flush-interval (risk: see the man page)"},
    {"store-flush-interval", HD_CFG_DURATION, 0, 1, 60000, "10ms", NULL,
     "with store-flush = interval, how often commits are flushed to disk"},
    {"store-map-size", HD_CFG_SIZE, 0, 1 << 20, INT64_MAX, "1G", NULL,
     "initial size of the store's map; it doubles when full"},
    {"store-log-size", HD_CFG_SIZE, 0, 0, INT64_MAX, "256M", NULL,
     "size of the store's log, written in front of LMDB (0: no log, every commit goes to LMDB)"},
    {"store-reserve", HD_CFG_SIZE, 0, 0, INT64_MAX, "64M", NULL,
     "free disk space kept back: below it new messages are refused and producers wait"},
    {"queue-memory", HD_CFG_SIZE, 0, 1 << 20, INT64_MAX, "256M", NULL,
     "message bytes durable queues keep in memory; beyond it messages stay on disk"},
    HD_DIRECTIVE_END};

static const char *const client_auth[] = {"none", "required", NULL};

const hd_directive_t hd_listener_directives[] = {
    {"host", HD_CFG_STRING, 0, 0, 0, "127.0.0.1", NULL, "address to listen on; '::' for all"},
    {"port", HD_CFG_INT, 0, 0, 65535, "5672", NULL, "TCP port; 0 picks a free one"},
    {"sasl-mechanisms", HD_CFG_STRING, 0, 0, 0, "ANONYMOUS", NULL,
     "space-separated: ANONYMOUS PLAIN EXTERNAL"},
    {"plain-over-cleartext", HD_CFG_BOOL, 0, 0, 0, "no", NULL,
     "allow PLAIN on a listener without TLS (passwords cross the network in clear)"},
    {"tls-cert", HD_CFG_STRING, 0, 0, 0, NULL, NULL, "PEM certificate chain; enables TLS"},
    {"tls-key", HD_CFG_STRING, 0, 0, 0, NULL, NULL, "PEM private key of tls-cert"},
    {"tls-ca", HD_CFG_STRING, 0, 0, 0, NULL, NULL, "PEM CA bundle that client certificates chain to"},
    {"tls-client-auth", HD_CFG_ENUM, 0, 0, 0, "none", client_auth,
     "require a client certificate verified against tls-ca"},
    {"max-frame-size", HD_CFG_SIZE, 0, 512, UINT32_MAX, "128K", NULL, "largest frame accepted"},
    {"channel-max", HD_CFG_INT, 0, 0, 65535, "1023", NULL, "highest channel number a peer may use"},
    {"max-sessions", HD_CFG_INT, 0, 1, 65536, "64", NULL, "sessions per connection"},
    {"max-links", HD_CFG_INT, 0, 1, 1000000, "1024", NULL, "links per connection"},
    {"idle-timeout", HD_CFG_DURATION, 0, 0, 3600000, "60s", NULL,
     "close peers silent this long; heartbeats keep good peers alive (0: off)"},
    {"max-connections", HD_CFG_INT, 0, 0, 1000000, "0", NULL,
     "connections on this listener (0: only the broker limit)"},
    {"handshake-timeout", HD_CFG_DURATION, 0, 0, 3600000, "10s", NULL,
     "close peers that have not sent their AMQP open this long after connecting (0: never)"},
    HD_DIRECTIVE_END};

const hd_directive_t hd_node_directives[] = {
    {"dead-letter-address", HD_CFG_STRING, 0, 0, 0, NULL, NULL, "overrides [broker]"},
    {"expiry-address", HD_CFG_STRING, 0, 0, 0, NULL, NULL, "overrides [broker]"},
    {"max-deliveries", HD_CFG_INT, 0, 0, 1000000, NULL, NULL, "overrides [broker]"},
    {"max-depth", HD_CFG_INT, 0, 0, INT64_MAX, NULL, NULL, "overrides [broker]"},
    {"durable", HD_CFG_BOOL, 0, 0, 0, NULL, NULL, "overrides [broker] (queues only)"},
    HD_DIRECTIVE_END};

static int parse_mechs(const char *text, unsigned *out) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", text);
  unsigned m = 0;
  for (char *save = NULL, *w = strtok_r(buf, " ,\t", &save); w; w = strtok_r(NULL, " ,\t", &save)) {
    if (strcasecmp(w, "ANONYMOUS") == 0)
      m |= HD_MECH_ANONYMOUS;
    else if (strcasecmp(w, "PLAIN") == 0)
      m |= HD_MECH_PLAIN;
    else if (strcasecmp(w, "EXTERNAL") == 0)
      m |= HD_MECH_EXTERNAL;
    else
      return HD_ECONFIG;
  }
  *out = m;
  return m ? 0 : HD_ECONFIG;
}

static const char *opt_str(hd_cfg_section_t *s, const char *key) {
  return hd_cfg_has(s, key) ? hd_cfg_str(s, key) : NULL;
}

static int opt_int(hd_cfg_section_t *s, const char *key) {
  return hd_cfg_has(s, key) ? (int)hd_cfg_int(s, key) : -1;
}

static int build_listener(hd_settings_t *st, hd_cfg_section_t *s, char *err, size_t errlen) {
  if (!s->name) {
    snprintf(err, errlen, "%s: [listener] needs a name, e.g. [listener amqp]", s->where);
    return HD_ECONFIG;
  }
  for (hd_listener_conf_t *o = st->listeners; o; o = o->next)
    if (strcmp(o->name, s->name) == 0) {
      snprintf(err, errlen, "%s: listener '%s' is already defined at %s", s->where, s->name,
               o->where);
      return HD_ECONFIG;
    }
  int rc = hd_cfg_check(s, hd_listener_directives, err, errlen);
  if (rc) return rc;
  hd_listener_conf_t *l = hd_xcalloc(1, sizeof *l);
  l->name = s->name;
  l->where = s->where;
  l->host = hd_cfg_str(s, "host");
  l->port = (int)hd_cfg_int(s, "port");
  if (parse_mechs(hd_cfg_str(s, "sasl-mechanisms"), &l->mechs)) {
    snprintf(err, errlen, "%s: 'sasl-mechanisms = %s' in [listener %s]: use ANONYMOUS, PLAIN and/or EXTERNAL",
             hd_cfg_where(s, "sasl-mechanisms", 0), hd_cfg_str(s, "sasl-mechanisms"), s->name);
    free(l);
    return HD_ECONFIG;
  }
  l->plain_over_cleartext = hd_cfg_bool(s, "plain-over-cleartext");
  l->tls_cert = opt_str(s, "tls-cert");
  l->tls_key = opt_str(s, "tls-key");
  l->tls_ca = opt_str(s, "tls-ca");
  l->tls_client_auth = strcmp(hd_cfg_str(s, "tls-client-auth"), "required") == 0;
  l->max_frame_size = (uint32_t)hd_cfg_int(s, "max-frame-size");
  l->channel_max = (uint16_t)hd_cfg_int(s, "channel-max");
  l->max_sessions = (uint32_t)hd_cfg_int(s, "max-sessions");
  l->max_links = (uint32_t)hd_cfg_int(s, "max-links");
  l->idle_timeout_ms = (uint32_t)hd_cfg_int(s, "idle-timeout");
  l->handshake_timeout_ms = (uint32_t)hd_cfg_int(s, "handshake-timeout");
  l->max_connections = (uint32_t)hd_cfg_int(s, "max-connections");
  /* Link the listener first so that failures below free it with the rest. */
  hd_listener_conf_t **tail = &st->listeners;
  while (*tail) tail = &(*tail)->next;
  *tail = l;

  const char *why = NULL;
  if (!l->tls_cert != !l->tls_key)
    why = "tls-cert and tls-key go together; set both to enable TLS";
  else if (l->tls_client_auth && !l->tls_ca)
    why = "tls-client-auth = required needs tls-ca, the CA that client certificates chain to";
  else if (l->tls_client_auth && !l->tls_cert)
    why = "tls-client-auth needs TLS: set tls-cert and tls-key";
  else if ((l->mechs & HD_MECH_EXTERNAL) && !l->tls_client_auth)
    why = "EXTERNAL authenticates by client certificate: set tls-client-auth = required";
  else if ((l->mechs & HD_MECH_PLAIN) && !l->tls_cert && !l->plain_over_cleartext)
    why = "PLAIN without TLS sends passwords in clear: set tls-cert and tls-key, or "
          "plain-over-cleartext = yes if the network is trusted";
  else if ((l->mechs & HD_MECH_PLAIN) && !st->users_file)
    why = "PLAIN needs users: set users-file in [broker]";
  if (why) {
    snprintf(err, errlen, "%s: [listener %s]: %s", s->where, s->name, why);
    return HD_ECONFIG;
  }
  return 0;
}

static int build_node(hd_settings_t *st, hd_cfg_section_t *s, hd_node_type_t type, char *err,
                      size_t errlen) {
  if (!s->name) {
    snprintf(err, errlen, "%s: [%s] needs an address, e.g. [%s orders]", s->where, s->kind,
             s->kind);
    return HD_ECONFIG;
  }
  for (hd_node_conf_t *o = st->nodes; o; o = o->next)
    if (strcmp(o->address, s->name) == 0) {
      snprintf(err, errlen, "%s: address '%s' is already declared at %s", s->where, s->name,
               o->where);
      return HD_ECONFIG;
    }
  int rc = hd_cfg_check(s, hd_node_directives, err, errlen);
  if (rc) return rc;
  hd_node_conf_t *n = hd_xcalloc(1, sizeof *n);
  n->address = s->name;
  n->where = s->where;
  n->type = type;
  n->opts.dead_letter_address = opt_str(s, "dead-letter-address");
  n->opts.expiry_address = opt_str(s, "expiry-address");
  n->opts.max_deliveries = opt_int(s, "max-deliveries");
  n->opts.max_depth = hd_cfg_has(s, "max-depth") ? hd_cfg_int(s, "max-depth") : -1;
  n->opts.durable = hd_cfg_has(s, "durable") ? hd_cfg_bool(s, "durable") : -1;
  n->next = st->nodes;
  st->nodes = n;
  return 0;
}

int hd_settings_build(hd_config_t *cfg, hd_settings_t **out, char *err, size_t errlen) {
  hd_settings_t *st = hd_xcalloc(1, sizeof *st);
  st->cfg = cfg;
  int rc = 0;
  /* [broker] first: listeners check against its users-file. */
  for (hd_cfg_section_t *s = cfg->sections; s; s = s->next) {
    if (strcmp(s->kind, "broker") != 0) continue;
    if (s->name) {
      snprintf(err, errlen, "%s: [broker] takes no name", s->where);
      rc = HD_ECONFIG;
      goto fail;
    }
    if (st->broker) {
      snprintf(err, errlen, "%s: [broker] appears twice (first at %s); merge them", s->where,
               st->broker->where);
      rc = HD_ECONFIG;
      goto fail;
    }
    if ((rc = hd_cfg_check(s, hd_broker_directives, err, errlen))) goto fail;
    st->broker = s;
  }
  if (!st->broker) {
    /* A file without [broker] runs on defaults; give the accessors a table. */
    static hd_cfg_section_t none = {.kind = "broker", .where = "<defaults>",
                                    .schema = hd_broker_directives};
    st->broker = &none;
  }
  hd_cfg_section_t *b = st->broker;
  st->workers = (int)hd_cfg_int(b, "workers");
  if (st->workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    st->workers = n > 0 ? (int)n : 1;
  }
  st->data_dir = hd_cfg_str(b, "data-dir");
  st->module_dir = hd_cfg_str(b, "module-dir");
  st->users_file = opt_str(b, "users-file");
  st->log_level = hd_log_level_parse(hd_cfg_str(b, "log-level"));
  st->log_syslog = strcmp(hd_cfg_str(b, "log-target"), "syslog") == 0;
  st->max_connections = (uint32_t)hd_cfg_int(b, "max-connections");
  st->memory_limit = hd_cfg_int(b, "memory-limit");
  st->max_message_size = hd_cfg_int(b, "max-message-size");
  st->credit_window = (uint32_t)hd_cfg_int(b, "credit-window");
  st->drain_timeout_ms = hd_cfg_int(b, "drain-timeout");
  st->auto_create = hd_cfg_bool(b, "auto-create");
  st->topic_prefix = hd_cfg_str(b, "topic-prefix");
  st->defaults.dead_letter_address = hd_cfg_str(b, "dead-letter-address");
  st->defaults.expiry_address = hd_cfg_str(b, "expiry-address");
  st->defaults.max_deliveries = (int)hd_cfg_int(b, "max-deliveries");
  st->defaults.max_depth = hd_cfg_int(b, "max-depth");
  st->defaults.durable = hd_cfg_bool(b, "durable");
  st->store_flush_interval = strcmp(hd_cfg_str(b, "store-flush"), "interval") == 0;
  st->store_flush_interval_ms = (uint32_t)hd_cfg_int(b, "store-flush-interval");
  st->store_map_size = hd_cfg_int(b, "store-map-size");
  st->store_reserve = hd_cfg_int(b, "store-reserve");
  st->store_log_size = hd_cfg_int(b, "store-log-size");
  st->queue_memory = hd_cfg_int(b, "queue-memory");

  for (hd_cfg_section_t *s = cfg->sections; s; s = s->next) {
    if (strcmp(s->kind, "broker") == 0) continue;
    if (strcmp(s->kind, "listener") == 0)
      rc = build_listener(st, s, err, errlen);
    else if (strcmp(s->kind, "queue") == 0)
      rc = build_node(st, s, HD_NODE_QUEUE, err, errlen);
    else if (strcmp(s->kind, "topic") == 0)
      rc = build_node(st, s, HD_NODE_TOPIC, err, errlen);
    else if (strcmp(s->kind, "module") == 0) {
      if (!s->name) {
        snprintf(err, errlen, "%s: [module] needs the module's name, e.g. [module route]",
                 s->where);
        rc = HD_ECONFIG;
      }
      for (hd_cfg_section_t *o = cfg->sections; !rc && o != s; o = o->next)
        if (strcmp(o->kind, "module") == 0 && o->name && strcmp(o->name, s->name) == 0) {
          snprintf(err, errlen, "%s: module '%s' is already loaded by the section at %s",
                   s->where, s->name, o->where);
          rc = HD_ECONFIG;
        }
      /* The loader checks the keys against the module's own table. */
    } else {
      snprintf(err, errlen,
               "%s: unknown section [%s]; sections are [broker], [listener NAME], [queue ADDRESS], "
               "[topic ADDRESS] and [module NAME]",
               s->where, s->kind);
      rc = HD_ECONFIG;
    }
    if (rc) goto fail;
  }
  if (!st->listeners) {
    snprintf(err, errlen, "%s: no [listener NAME] section; the broker would accept no connections",
             cfg->source);
    rc = HD_ECONFIG;
    goto fail;
  }
  *out = st;
  return 0;
fail:
  hd_settings_free(st);
  return rc;
}

void hd_settings_free(hd_settings_t *st) {
  if (!st) return;
  while (st->listeners) {
    hd_listener_conf_t *n = st->listeners->next;
    free(st->listeners);
    st->listeners = n;
  }
  while (st->nodes) {
    hd_node_conf_t *n = st->nodes->next;
    free(st->nodes);
    st->nodes = n;
  }
  hd_cfg_free(st->cfg);
  free(st);
}
