/* The configuration file: INI sections "[kind]" or "[kind name]" holding
 * "key = value" lines.  Parsed with libinih; every value remembers its file
 * and line, and every section is checked against a typed directive table
 * (the same hd_directive_t that modules use), so errors name file:line. */
#ifndef HD_CFG_H
#define HD_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hadron/module.h"

typedef struct hd_cfg_value {
  char *key;
  char *value;
  char *where; /* "file:line" */
  struct hd_cfg_value *next;
} hd_cfg_value_t;

struct hd_cfg_section {
  char *kind; /* first word of the header */
  char *name; /* second word, or NULL */
  char *where;
  const hd_directive_t *schema; /* set by hd_cfg_check */
  hd_cfg_value_t *values, **tail;
  struct hd_cfg_section *next;
};

typedef struct hd_config {
  char *source; /* file name, or "<embedded default>" */
  hd_cfg_section_t *sections, **tail;
} hd_config_t;

/* Parse; on failure return HD_ECONFIG (or -errno) with "file:line: why" in
 * err.  Syntax only: sections are checked by hd_cfg_check. */
int hd_cfg_parse_file(const char *path, hd_config_t **out, char *err, size_t errlen);
int hd_cfg_parse_string(const char *text, const char *source, hd_config_t **out, char *err,
                        size_t errlen);
void hd_cfg_free(hd_config_t *cfg);

/* Next section of `kind` after `prev` (NULL: first). */
hd_cfg_section_t *hd_cfg_next(const hd_config_t *cfg, hd_cfg_section_t *prev, const char *kind);

/* Check a section against its table: unknown keys, repeats of single keys,
 * types, ranges, choices, required keys.  Remembers the table for the
 * accessors below. */
int hd_cfg_check(hd_cfg_section_t *s, const hd_directive_t *schema, char *err, size_t errlen);

/* Accessors (also served to modules through the host table).  A key that is
 * absent answers the directive's default; a key not in the table aborts in
 * debug builds and answers NULL/0. */
const char *hd_cfg_str(const hd_cfg_section_t *s, const char *key);
int64_t hd_cfg_int(const hd_cfg_section_t *s, const char *key);
bool hd_cfg_bool(const hd_cfg_section_t *s, const char *key);
size_t hd_cfg_count(const hd_cfg_section_t *s, const char *key);
const char *hd_cfg_item(const hd_cfg_section_t *s, const char *key, size_t i);
const char *hd_cfg_where(const hd_cfg_section_t *s, const char *key, size_t i);
bool hd_cfg_has(const hd_cfg_section_t *s, const char *key);

/* Value parsers, exposed for tests.  Return 0 or HD_ECONFIG. */
int hd_cfg_parse_bool(const char *text, bool *out);
int hd_cfg_parse_int(const char *text, int64_t *out);
int hd_cfg_parse_size(const char *text, int64_t *out);
int hd_cfg_parse_duration(const char *text, int64_t *out);

#endif
