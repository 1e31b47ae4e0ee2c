/* The route module: owns address rules (pattern -> node type, creation,
 * dead-letter and expiry addresses, limits) and aliases.  Answers the core's
 * node-resolve hook; addresses no rule matches are left to the core. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hadron/module.h"
#include "route_rules.h"

typedef struct route {
  const hd_host_t *host;
  hd_module_t *self;
  hd_route_table_t *table; /* replaced by reload; the host keeps hooks out meanwhile */
} route_t;

static const hd_directive_t directives[] = {
    {"rule", HD_CFG_STRING, HD_CFG_MULTI, 0, 0, NULL, NULL,
     "PATTERN [queue|topic|any] [auto-create=yes|no] [dead-letter-address=A] [expiry-address=A] "
     "[max-deliveries=N] [max-depth=N]"},
    {"alias", HD_CFG_STRING, HD_CFG_MULTI, 0, 0, NULL, NULL, "NAME TARGET"},
    HD_DIRECTIVE_END};

static int build(const hd_host_t *h, const hd_cfg_section_t *cfg, hd_route_table_t **out, char *err,
                 size_t errlen) {
  hd_route_table_t *t = calloc(1, sizeof *t);
  if (!t) return -12;
  size_t nr = h->cfg_count(cfg, "rule"), na = h->cfg_count(cfg, "alias");
  t->rules = calloc(nr ? nr : 1, sizeof *t->rules);
  t->aliases = calloc(na ? na : 1, sizeof *t->aliases);
  char why[512];
  for (size_t i = 0; i < nr; i++) {
    if (hd_route_parse_rule(h->cfg_item(cfg, "rule", i), &t->rules[i], why, sizeof why)) {
      snprintf(err, errlen, "%s: %s", h->cfg_where(cfg, "rule", i), why);
      hd_route_table_free(t);
      return HD_ECONFIG;
    }
    t->n_rules++;
  }
  for (size_t i = 0; i < na; i++) {
    if (hd_route_parse_alias(h->cfg_item(cfg, "alias", i), &t->aliases[i], why, sizeof why)) {
      snprintf(err, errlen, "%s: %s", h->cfg_where(cfg, "alias", i), why);
      hd_route_table_free(t);
      return HD_ECONFIG;
    }
    t->n_aliases++;
  }
  *out = t;
  return 0;
}

static int check_config(const hd_host_t *h, const hd_cfg_section_t *cfg, char *err, size_t errlen) {
  hd_route_table_t *t = NULL;
  int rc = build(h, cfg, &t, err, errlen);
  hd_route_table_free(t);
  return rc;
}

static hd_verdict_t resolve(void *state, hd_phase_t phase, void *payload) {
  route_t *r = state;
  hd_node_spec_t *spec = payload;
  const char *addr = spec->address;
  const char *target = hd_route_alias_of(r->table, addr);
  if (target) {
    spec->canonical = target;
    addr = target;
  }
  const hd_route_rule_t *rule = hd_route_find(r->table, addr);
  if (!rule) return target ? HD_VERDICT_OK : HD_VERDICT_DEFER;
  spec->type = rule->type;
  spec->auto_create = rule->auto_create;
  spec->dead_letter_address = rule->dead_letter_address;
  spec->expiry_address = rule->expiry_address;
  spec->max_deliveries = rule->max_deliveries;
  spec->max_depth = rule->max_depth;
  if (r->host->log_enabled(HD_LOG_DEBUG))
    r->host->log(r->self, HD_LOG_DEBUG, "address '%s', matched rule '%s'", addr, rule->pattern);
  return HD_VERDICT_OK;
}

static int init(const hd_host_t *h, hd_module_t *self, const hd_cfg_section_t *cfg, void **state,
                char *err, size_t errlen) {
  route_t *r = calloc(1, sizeof *r);
  if (!r) return -12;
  r->host = h;
  r->self = self;
  int rc = build(h, cfg, &r->table, err, errlen);
  if (!rc) rc = h->hook_add(self, HD_PHASE_NODE_RESOLVE, resolve);
  if (rc) {
    hd_route_table_free(r->table);
    free(r);
    return rc;
  }
  h->log(self, HD_LOG_INFO, "module, %zu rules and %zu aliases", r->table->n_rules, r->table->n_aliases);
  *state = r;
  return 0;
}

static int reload(void *state, const hd_cfg_section_t *cfg, char *err, size_t errlen) {
  route_t *r = state;
  hd_route_table_t *t = NULL;
  int rc = build(r->host, cfg, &t, err, errlen);
  if (rc) return rc;
  hd_route_table_free(r->table);
  r->table = t;
  r->host->log(r->self, HD_LOG_INFO, "module, reloaded: %zu rules and %zu aliases; they apply to nodes created from now on",
               t->n_rules, t->n_aliases);
  return 0;
}

static void fini(void *state) {
  route_t *r = state;
  hd_route_table_free(r->table);
  free(r);
}

static const hd_module_desc_t route_desc = {
    .abi_major = HD_MODULE_ABI_MAJOR,
    .abi_minor = HD_MODULE_ABI_MINOR,
    .size = sizeof(hd_module_desc_t),
    .build_signature = HD_BUILD_SIGNATURE,
    .name = "route",
    .version = PACKAGE_VERSION,
    .description = "address rules: patterns to queues or topics, aliases, dead-letter and expiry addresses",
    .directives = directives,
    .check_config = check_config,
    .init = init,
    .reload = reload,
    .fini = fini,
};

HD_MODULE_EXPORT(route_desc)
