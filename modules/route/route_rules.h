/* Address rules of the route module, independent of the broker so that
 * they can be unit-tested.  A pattern is dot-separated words:
 *   orders.eu       exact
 *   orders.*        '*' is exactly one word
 *   orders.#        '#' is any number of words, none included
 *   audit-*         a word ending in '*' matches words with that prefix
 * Rules are tried in file order; the first match decides. */
#ifndef HD_ROUTE_RULES_H
#define HD_ROUTE_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hadron/module.h"

typedef struct hd_route_rule {
  char *pattern;
  hd_node_type_t type;       /* UNSPEC: capability / core default decides */
  int auto_create;           /* -1 unset */
  char *dead_letter_address; /* NULL unset, "" none */
  char *expiry_address;
  int max_deliveries;        /* -1 unset */
  int64_t max_depth;         /* -1 unset */
} hd_route_rule_t;

typedef struct hd_route_alias {
  char *name, *target;
} hd_route_alias_t;

typedef struct hd_route_table {
  hd_route_rule_t *rules;
  size_t n_rules;
  hd_route_alias_t *aliases;
  size_t n_aliases;
} hd_route_table_t;

/* "PATTERN [queue|topic|any] [key=value ...]" with keys auto-create,
 * dead-letter-address, expiry-address, max-deliveries, max-depth. */
int hd_route_parse_rule(const char *text, hd_route_rule_t *out, char *err, size_t errlen);
/* "NAME TARGET": links attaching to NAME use the node at TARGET. */
int hd_route_parse_alias(const char *text, hd_route_alias_t *out, char *err, size_t errlen);
/* 0 if pattern is well formed, else a reason in err. */
int hd_route_pattern_check(const char *pattern, char *err, size_t errlen);
bool hd_route_match(const char *pattern, const char *address);

const hd_route_rule_t *hd_route_find(const hd_route_table_t *t, const char *address);
const char *hd_route_alias_of(const hd_route_table_t *t, const char *address);
void hd_route_table_free(hd_route_table_t *t);
void hd_route_rule_free(hd_route_rule_t *r);

#endif
