#include "config.h"

#include "route_rules.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int hd_route_pattern_check(const char *p, char *err, size_t errlen) {
  if (!*p) {
    snprintf(err, errlen, "empty pattern");
    return -EINVAL;
  }
  const char *w = p;
  for (;;) {
    const char *dot = strchr(w, '.');
    size_t n = dot ? (size_t)(dot - w) : strlen(w);
    if (n == 0) {
      snprintf(err, errlen, "pattern '%s' has an empty word (two dots, or a dot at an end)", p);
      return -EINVAL;
    }
    const char *hash = memchr(w, '#', n), *star = memchr(w, '*', n);
    if (hash && n != 1) {
      snprintf(err, errlen, "pattern '%s': '#' must be a whole word", p);
      return -EINVAL;
    }
    if (star && star != w + n - 1) {
      snprintf(err, errlen, "pattern '%s': '*' may only end a word", p);
      return -EINVAL;
    }
    if (!dot) return 0;
    w = dot + 1;
  }
}

static bool word_match(const char *pw, size_t pn, const char *aw, size_t an) {
  if (pn == 1 && pw[0] == '*') return true;
  if (pn > 1 && pw[pn - 1] == '*') return an >= pn - 1 && memcmp(pw, aw, pn - 1) == 0;
  return pn == an && memcmp(pw, aw, pn) == 0;
}

/* p and a point at the start of a word (or at the end of their string). */
static bool match_from(const char *p, const char *a) {
  while (*p) {
    const char *pdot = strchr(p, '.');
    size_t pn = pdot ? (size_t)(pdot - p) : strlen(p);
    if (pn == 1 && *p == '#') {
      const char *rest = pdot ? pdot + 1 : NULL;
      if (!rest) return true; /* trailing '#': anything, nothing included */
      /* '#' eats zero or more whole words, then the rest must match. */
      for (const char *s = a;;) {
        if (match_from(rest, s)) return true;
        if (!*s) return false;
        const char *d = strchr(s, '.');
        if (!d) s = s + strlen(s); else s = d + 1;
      }
    }
    if (!*a) return false;
    const char *adot = strchr(a, '.');
    size_t an = adot ? (size_t)(adot - a) : strlen(a);
    if (!word_match(p, pn, a, an)) return false;
    p = pdot ? pdot + 1 : p + pn;
    a = adot ? adot + 1 : a + an;
    /* "a." vs "a": a trailing dot in the address leaves an empty word. */
    if (!pdot && adot) return false;
    if (pdot && !adot && !*a) {
      /* address ended; only a remaining lone '#' can still match */
      return strcmp(p, "#") == 0;
    }
  }
  return !*a;
}

bool hd_route_match(const char *pattern, const char *address) { return match_from(pattern, address); }

static char *dup(const char *s) {
  char *p = malloc(strlen(s) + 1);
  if (p) strcpy(p, s);
  return p;
}

void hd_route_rule_free(hd_route_rule_t *r) {
  free(r->pattern);
  free(r->dead_letter_address);
  free(r->expiry_address);
  memset(r, 0, sizeof *r);
}

static int parse_num(const char *v, int64_t max, int64_t *out) {
  char *end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  if (errno || end == v || *end || n < 0 || n > max) return -1;
  *out = n;
  return 0;
}

int hd_route_parse_rule(const char *text, hd_route_rule_t *r, char *err, size_t errlen) {
  memset(r, 0, sizeof *r);
  r->auto_create = -1;
  r->max_deliveries = -1;
  r->max_depth = -1;
  char buf[1024];
  if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf) {
    snprintf(err, errlen, "rule too long");
    return -EINVAL;
  }
  int i = 0;
  for (char *save = NULL, *w = strtok_r(buf, " \t", &save); w; w = strtok_r(NULL, " \t", &save), i++) {
    if (i == 0) {
      if (hd_route_pattern_check(w, err, errlen)) goto fail;
      r->pattern = dup(w);
      continue;
    }
    if (i == 1 && !strchr(w, '=')) {
      if (strcmp(w, "queue") == 0) r->type = HD_NODE_QUEUE;
      else if (strcmp(w, "topic") == 0) r->type = HD_NODE_TOPIC;
      else if (strcmp(w, "any") == 0) r->type = HD_NODE_UNSPEC;
      else {
        snprintf(err, errlen, "rule '%s': node type '%s' must be queue, topic or any", text, w);
        goto fail;
      }
      continue;
    }
    char *eq = strchr(w, '=');
    if (!eq) {
      snprintf(err, errlen, "rule '%s': expected key=value, got '%s'", text, w);
      goto fail;
    }
    *eq = '\0';
    const char *k = w, *v = eq + 1;
    int64_t n;
    if (strcmp(k, "auto-create") == 0) {
      if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "on")) r->auto_create = 1;
      else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "off")) r->auto_create = 0;
      else {
        snprintf(err, errlen, "rule '%s': auto-create must be yes or no", text);
        goto fail;
      }
    } else if (strcmp(k, "dead-letter-address") == 0) {
      free(r->dead_letter_address);
      r->dead_letter_address = dup(v);
    } else if (strcmp(k, "expiry-address") == 0) {
      free(r->expiry_address);
      r->expiry_address = dup(v);
    } else if (strcmp(k, "max-deliveries") == 0) {
      if (parse_num(v, 1000000, &n)) {
        snprintf(err, errlen, "rule '%s': max-deliveries must be 0..1000000", text);
        goto fail;
      }
      r->max_deliveries = (int)n;
    } else if (strcmp(k, "max-depth") == 0) {
      if (parse_num(v, INT64_MAX, &n)) {
        snprintf(err, errlen, "rule '%s': max-depth must be a number of messages", text);
        goto fail;
      }
      r->max_depth = n;
    } else {
      snprintf(err, errlen,
               "rule '%s': unknown option '%s' (known: auto-create, dead-letter-address, "
               "expiry-address, max-deliveries, max-depth)",
               text, k);
      goto fail;
    }
  }
  if (!r->pattern) {
    snprintf(err, errlen, "empty rule; write: rule = PATTERN [queue|topic|any] [key=value ...]");
    goto fail;
  }
  return 0;
fail:
  hd_route_rule_free(r);
  return -EINVAL;
}

int hd_route_parse_alias(const char *text, hd_route_alias_t *a, char *err, size_t errlen) {
  char name[512], target[512], extra[4];
  int n = sscanf(text, "%511s %511s %3s", name, target, extra);
  if (n != 2) {
    snprintf(err, errlen, "alias '%s': write: alias = NAME TARGET", text);
    return -EINVAL;
  }
  if (strcmp(name, target) == 0) {
    snprintf(err, errlen, "alias '%s' points at itself", text);
    return -EINVAL;
  }
  a->name = dup(name);
  a->target = dup(target);
  return 0;
}

const hd_route_rule_t *hd_route_find(const hd_route_table_t *t, const char *address) {
  for (size_t i = 0; i < t->n_rules; i++)
    if (hd_route_match(t->rules[i].pattern, address)) return &t->rules[i];
  return NULL;
}

const char *hd_route_alias_of(const hd_route_table_t *t, const char *address) {
  for (size_t i = 0; i < t->n_aliases; i++)
    if (strcmp(t->aliases[i].name, address) == 0) return t->aliases[i].target;
  return NULL;
}

void hd_route_table_free(hd_route_table_t *t) {
  if (!t) return;
  for (size_t i = 0; i < t->n_rules; i++) hd_route_rule_free(&t->rules[i]);
  for (size_t i = 0; i < t->n_aliases; i++) {
    free(t->aliases[i].name);
    free(t->aliases[i].target);
  }
  free(t->rules);
  free(t->aliases);
  free(t);
}
