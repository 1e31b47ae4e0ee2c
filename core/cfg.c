#include "config.h"

#include "cfg.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* libinih keeps its options in globals; parses are serialized. */
static pthread_mutex_t ini_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct parse_ctx {
  hd_config_t *cfg;
  hd_cfg_section_t *cur;
  int line;
  /* input: either a FILE or a string cursor */
  FILE *file;
  const char *text;
  char *err;
  size_t errlen;
  bool failed;
} parse_ctx_t;

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
  return s;
}

static void fail(parse_ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(parse_ctx_t *c, const char *fmt, ...) {
  if (c->failed) return; /* the first error is the one worth reading */
  c->failed = true;
  int n = snprintf(c->err, c->errlen, "%s:%d: ", c->cfg->source, c->line);
  va_list ap;
  va_start(ap, fmt);
  if (n >= 0 && (size_t)n < c->errlen) vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
  va_end(ap);
}

static char *where(parse_ctx_t *c) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s:%d", c->cfg->source, c->line);
  return hd_xstrdup(buf);
}

/* inih does not report empty sections or line numbers, so the reader sees
 * each raw line first: it counts lines and records section headers itself,
 * using the same rule inih uses ('[' first, up to the next ']'). */
static void note_section(parse_ctx_t *c, char *line) {
  char *s = line;
  while (isspace((unsigned char)*s)) s++;
  if (*s != '[') return;
  char *end = strchr(s, ']');
  if (!end) return; /* inih reports it */
  /* Work on a copy: inih parses this very buffer after us. */
  char copy[1100];
  snprintf(copy, sizeof copy, "%.*s", (int)(end - s - 1), s + 1);
  char *hdr = trim(copy);
  char kind[256] = "", name[1024] = "", extra[8] = "";
  int n = sscanf(hdr, "%255s %1023s %7s", kind, name, extra);
  if (n < 1) {
    fail(c, "empty section header; write [kind] or [kind name]");
    return;
  }
  if (n > 2) {
    fail(c, "section header '[%s]' has more than two words; write [kind] or [kind name]", hdr);
    return;
  }
  hd_cfg_section_t *sec = hd_xcalloc(1, sizeof *sec);
  sec->kind = hd_xstrdup(kind);
  sec->name = n == 2 ? hd_xstrdup(name) : NULL;
  sec->where = where(c);
  sec->tail = &sec->values;
  *c->cfg->tail = sec;
  c->cfg->tail = &sec->next;
  c->cur = sec;
}

static char *reader(char *str, int num, void *stream) {
  parse_ctx_t *c = stream;
  if (c->file) {
    if (!fgets(str, num, c->file)) return NULL;
  } else {
    if (!*c->text) return NULL;
    const char *nl = strchr(c->text, '\n');
    size_t len = nl ? (size_t)(nl - c->text) + 1 : strlen(c->text);
    if (len > (size_t)num - 1) len = (size_t)num - 1;
    memcpy(str, c->text, len);
    str[len] = '\0';
    c->text += len;
  }
  c->line++;
  size_t len = strlen(str);
  if (len == (size_t)num - 1 && str[len - 1] != '\n') {
    fail(c, "line longer than %d characters", num - 2);
    return NULL;
  }
  note_section(c, str);
  return str;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
  parse_ctx_t *c = user;
  (void)section;
  if (c->failed) return 0;
  if (!c->cur) {
    fail(c, "'%s' appears before any section; put it under a [section] header", name);
    return 0;
  }
  hd_cfg_value_t *v = hd_xcalloc(1, sizeof *v);
  v->key = hd_xstrdup(name);
  v->value = hd_xstrdup(value ? value : "");
  v->where = where(c);
  *c->cur->tail = v;
  c->cur->tail = &v->next;
  return 1;
}

static int parse(parse_ctx_t *c, hd_config_t **out) {
  pthread_mutex_lock(&ini_lock);
  ini_allow_multiline = false; /* keeps one value per line, so lines are exact */
  ini_allow_inline_comments = true;
  ini_use_stack = false;
  ini_max_line = 4096;
  /* The reader is handed the initial buffer size; no realloc, so that it is
   * called exactly once per line and the line count stays exact. */
  ini_initial_alloc = 4096;
  ini_stop_on_first_error = true;
  int rc = ini_parse_stream(reader, c, handler, c);
  pthread_mutex_unlock(&ini_lock);
  if (rc != 0 && !c->failed) {
    if (rc > 0) {
      c->line = rc;
      fail(c, "syntax error: expected '[section]', 'key = value' or a comment");
    } else {
      snprintf(c->err, c->errlen, "%s: cannot parse (%s)", c->cfg->source,
               rc == -2 ? "out of memory" : "read error");
      c->failed = true;
    }
  }
  if (c->failed) {
    hd_cfg_free(c->cfg);
    return HD_ECONFIG;
  }
  *out = c->cfg;
  return 0;
}

static hd_config_t *config_new(const char *source) {
  hd_config_t *cfg = hd_xcalloc(1, sizeof *cfg);
  cfg->source = hd_xstrdup(source);
  cfg->tail = &cfg->sections;
  return cfg;
}

int hd_cfg_parse_file(const char *path, hd_config_t **out, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    int e = errno;
    snprintf(err, errlen, "%s: cannot open config file: %s", path, strerror(e));
    return -e;
  }
  parse_ctx_t c = {.cfg = config_new(path), .file = f, .err = err, .errlen = errlen};
  int rc = parse(&c, out);
  fclose(f);
  return rc;
}

int hd_cfg_parse_string(const char *text, const char *source, hd_config_t **out, char *err,
                        size_t errlen) {
  parse_ctx_t c = {.cfg = config_new(source), .text = text, .err = err, .errlen = errlen};
  return parse(&c, out);
}

void hd_cfg_free(hd_config_t *cfg) {
  if (!cfg) return;
  hd_cfg_section_t *s = cfg->sections;
  while (s) {
    hd_cfg_section_t *ns = s->next;
    hd_cfg_value_t *v = s->values;
    while (v) {
      hd_cfg_value_t *nv = v->next;
      free(v->key);
      free(v->value);
      free(v->where);
      free(v);
      v = nv;
    }
    free(s->kind);
    free(s->name);
    free(s->where);
    free(s);
    s = ns;
  }
  free(cfg->source);
  free(cfg);
}

hd_cfg_section_t *hd_cfg_next(const hd_config_t *cfg, hd_cfg_section_t *prev, const char *kind) {
  hd_cfg_section_t *s = prev ? prev->next : cfg->sections;
  for (; s; s = s->next)
    if (!kind || strcmp(s->kind, kind) == 0) return s;
  return NULL;
}

/* ---- value syntax ---------------------------------------------------- */

int hd_cfg_parse_bool(const char *t, bool *out) {
  static const char *const yes[] = {"yes", "true", "on", "1", NULL};
  static const char *const no[] = {"no", "false", "off", "0", NULL};
  for (int i = 0; yes[i]; i++)
    if (strcasecmp(t, yes[i]) == 0) return *out = true, 0;
  for (int i = 0; no[i]; i++)
    if (strcasecmp(t, no[i]) == 0) return *out = false, 0;
  return HD_ECONFIG;
}

/* Number followed by a unit from `units` (each with its multiplier). */
typedef struct unit {
  const char *suffix;
  int64_t mult;
} unit_t;

static int parse_scaled(const char *t, const unit_t *units, int64_t *out) {
  errno = 0;
  char *end;
  if (!isdigit((unsigned char)*t)) return HD_ECONFIG;
  unsigned long long v = strtoull(t, &end, 10);
  if (errno) return HD_ECONFIG;
  while (isspace((unsigned char)*end)) end++;
  int64_t mult = 1;
  if (*end) {
    const unit_t *u = units;
    for (; u && u->suffix; u++)
      if (strcasecmp(end, u->suffix) == 0) break;
    if (!u || !u->suffix) return HD_ECONFIG;
    mult = u->mult;
  }
  if (v > (unsigned long long)INT64_MAX / (unsigned long long)mult) return HD_ECONFIG;
  *out = (int64_t)v * mult;
  return 0;
}

int hd_cfg_parse_int(const char *t, int64_t *out) {
  errno = 0;
  char *end;
  long long v = strtoll(t, &end, 10);
  if (errno || end == t || *end) return HD_ECONFIG;
  *out = v;
  return 0;
}

int hd_cfg_parse_size(const char *t, int64_t *out) {
  static const unit_t units[] = {
      {"b", 1},         {"k", 1024},      {"kb", 1024},     {"kib", 1024},
      {"m", 1 << 20},   {"mb", 1 << 20},  {"mib", 1 << 20}, {"g", 1 << 30},
      {"gb", 1 << 30},  {"gib", 1 << 30}, {"t", 1LL << 40}, {"tib", 1LL << 40},
      {NULL, 0}};
  return parse_scaled(t, units, out);
}

int hd_cfg_parse_duration(const char *t, int64_t *out) {
  static const unit_t units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {NULL, 0}};
  return parse_scaled(t, units, out);
}

/* ---- checking against a table ----------------------------------------- */

static const hd_directive_t *find_directive(const hd_directive_t *t, const char *key) {
  for (; t && t->name; t++)
    if (strcmp(t->name, key) == 0) return t;
  return NULL;
}

static const char *type_words(hd_cfg_type_t type) {
  switch (type) {
  case HD_CFG_BOOL: return "yes or no";
  case HD_CFG_INT: return "an integer";
  case HD_CFG_SIZE: return "a size such as 65536, 64K or 1G";
  case HD_CFG_DURATION: return "a duration such as 500ms, 30s or 5m";
  default: return "a value";
  }
}

static int check_value(const hd_directive_t *d, const char *value, char *why, size_t whylen) {
  int64_t n = 0;
  bool b;
  int rc = 0;
  switch (d->type) {
  case HD_CFG_STRING: return 0;
  case HD_CFG_BOOL: rc = hd_cfg_parse_bool(value, &b); break;
  case HD_CFG_INT: rc = hd_cfg_parse_int(value, &n); break;
  case HD_CFG_SIZE: rc = hd_cfg_parse_size(value, &n); break;
  case HD_CFG_DURATION: rc = hd_cfg_parse_duration(value, &n); break;
  case HD_CFG_ENUM: {
    size_t off = 0;
    for (const char *const *c = d->choices; c && *c; c++) {
      if (strcmp(*c, value) == 0) return 0;
      off += (size_t)snprintf(why + off, off < whylen ? whylen - off : 0, "%s%s",
                              c == d->choices ? "must be one of: " : ", ", *c);
    }
    return HD_ECONFIG;
  }
  }
  if (rc) {
    snprintf(why, whylen, "must be %s", type_words(d->type));
    return rc;
  }
  if ((d->min || d->max) && (n < d->min || n > d->max)) {
    snprintf(why, whylen, "must be between %lld and %lld", (long long)d->min, (long long)d->max);
    return HD_ECONFIG;
  }
  return 0;
}

static void section_label(const hd_cfg_section_t *s, char *buf, size_t len) {
  if (s->name)
    snprintf(buf, len, "[%s %s]", s->kind, s->name);
  else
    snprintf(buf, len, "[%s]", s->kind);
}

int hd_cfg_check(hd_cfg_section_t *s, const hd_directive_t *schema, char *err, size_t errlen) {
  char label[512];
  section_label(s, label, sizeof label);
  for (hd_cfg_value_t *v = s->values; v; v = v->next) {
    const hd_directive_t *d = find_directive(schema, v->key);
    if (!d) {
      size_t off = (size_t)snprintf(err, errlen, "%s: unknown key '%s' in %s; known keys:", v->where,
                                    v->key, label);
      for (const hd_directive_t *k = schema; k && k->name && off < errlen; k++)
        off += (size_t)snprintf(err + off, errlen - off, " %s", k->name);
      return HD_ECONFIG;
    }
    if (!(d->flags & HD_CFG_MULTI)) {
      for (hd_cfg_value_t *w = v->next; w; w = w->next)
        if (strcmp(w->key, v->key) == 0) {
          snprintf(err, errlen, "%s: '%s' is already set in %s at %s; give it once", w->where,
                   v->key, label, v->where);
          return HD_ECONFIG;
        }
    }
    char why[512];
    if (check_value(d, v->value, why, sizeof why) != 0) {
      snprintf(err, errlen, "%s: '%s = %s' in %s: %s", v->where, v->key, v->value, label, why);
      return HD_ECONFIG;
    }
  }
  for (const hd_directive_t *d = schema; d && d->name; d++) {
    if (!(d->flags & HD_CFG_REQUIRED)) continue;
    bool found = false;
    for (hd_cfg_value_t *v = s->values; v && !found; v = v->next) found = !strcmp(v->key, d->name);
    if (!found) {
      snprintf(err, errlen, "%s: %s needs '%s' (%s)", s->where, label, d->name,
               d->help ? d->help : type_words(d->type));
      return HD_ECONFIG;
    }
  }
  s->schema = schema;
  return 0;
}

/* ---- accessors ---------------------------------------------------------- */

static const hd_cfg_value_t *find_value(const hd_cfg_section_t *s, const char *key, size_t i) {
  for (const hd_cfg_value_t *v = s ? s->values : NULL; v; v = v->next)
    if (strcmp(v->key, key) == 0 && i-- == 0) return v;
  return NULL;
}

bool hd_cfg_has(const hd_cfg_section_t *s, const char *key) { return find_value(s, key, 0) != NULL; }

const char *hd_cfg_str(const hd_cfg_section_t *s, const char *key) {
  const hd_cfg_value_t *v = find_value(s, key, 0);
  if (v) return v->value;
  const hd_directive_t *d = s ? find_directive(s->schema, key) : NULL;
  assert(!s || !s->schema || d); /* asking for a key the table lacks is a bug */
  return d ? d->def : NULL;
}

int64_t hd_cfg_int(const hd_cfg_section_t *s, const char *key) {
  const char *t = hd_cfg_str(s, key);
  const hd_directive_t *d = s ? find_directive(s->schema, key) : NULL;
  int64_t n = 0;
  bool b = false;
  if (!t) return 0;
  switch (d ? d->type : HD_CFG_INT) {
  case HD_CFG_SIZE: hd_cfg_parse_size(t, &n); break;
  case HD_CFG_DURATION: hd_cfg_parse_duration(t, &n); break;
  case HD_CFG_BOOL: hd_cfg_parse_bool(t, &b); n = b; break;
  default: hd_cfg_parse_int(t, &n); break;
  }
  return n;
}

bool hd_cfg_bool(const hd_cfg_section_t *s, const char *key) {
  const char *t = hd_cfg_str(s, key);
  bool b = false;
  if (t) hd_cfg_parse_bool(t, &b);
  return b;
}

size_t hd_cfg_count(const hd_cfg_section_t *s, const char *key) {
  size_t n = 0;
  while (find_value(s, key, n)) n++;
  return n;
}

const char *hd_cfg_item(const hd_cfg_section_t *s, const char *key, size_t i) {
  const hd_cfg_value_t *v = find_value(s, key, i);
  return v ? v->value : NULL;
}

const char *hd_cfg_where(const hd_cfg_section_t *s, const char *key, size_t i) {
  const hd_cfg_value_t *v = find_value(s, key, i);
  return v ? v->where : (s ? s->where : "?");
}
