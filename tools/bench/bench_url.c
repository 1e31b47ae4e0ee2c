/* URL parsing by hand: the grammar is tiny and proton's own URL parser is
 * not part of its stable C API. */
#include "config.h"

#include "bench_url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Copies [s, s+n) into out, decoding %XX: passwords often hold '@' or ':'. */
static int decode(const char *s, size_t n, char *out, size_t outlen) {
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      int hi = i + 2 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;
      if (hi < 0 || lo < 0) return -1;
      c = (char)(hi * 16 + lo);
      i += 2;
    }
    if (j + 1 >= outlen) return -1;
    out[j++] = c;
  }
  out[j] = '\0';
  return 0;
}

int hb_url_parse(const char *text, hb_url_t *u, char *err, size_t errlen) {
  memset(u, 0, sizeof *u);
  const char *p;
  if (!strncmp(text, "amqp://", 7)) {
    p = text + 7;
  } else if (!strncmp(text, "amqps://", 8)) {
    p = text + 8;
    u->tls = true;
  } else {
    snprintf(err, errlen, "URL '%s': the scheme must be amqp:// or amqps://", text);
    return -1;
  }
  strcpy(u->port, u->tls ? "5671" : "5672");

  const char *at = strrchr(p, '@');
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
    if (decode(p, ulen, u->user, sizeof u->user)) goto bad_user;
    u->has_user = true;
    if (colon) {
      if (decode(colon + 1, (size_t)(at - colon - 1), u->password, sizeof u->password))
        goto bad_user;
      u->has_password = true;
    }
    p = at + 1;
  }

  const char *end = p + strcspn(p, "/?#");
  if (*end) {
    snprintf(err, errlen, "URL '%s': no path or query is allowed (give the address with --address)",
             text);
    return -1;
  }
  const char *hend, *portp = NULL;
  if (*p == '[') {
    hend = strchr(p, ']');
    if (!hend) goto bad_host;
    if (hend[1] == ':')
      portp = hend + 2;
    else if (hend[1])
      goto bad_host;
    p++;
  } else {
    hend = strchr(p, ':');
    if (hend)
      portp = hend + 1;
    else
      hend = end;
  }
  size_t hlen = (size_t)(hend - p);
  if (hlen == 0 || hlen >= sizeof u->host) goto bad_host;
  memcpy(u->host, p, hlen);
  u->host[hlen] = '\0';
  if (portp) {
    size_t plen = strlen(portp);
    if (plen == 0 || plen >= sizeof u->port || strspn(portp, "0123456789") != plen ||
        atoi(portp) > 65535) {
      snprintf(err, errlen, "URL '%s': bad port '%s'", text, portp);
      return -1;
    }
    strcpy(u->port, portp);
  }
  return 0;

bad_user:
  snprintf(err, errlen, "URL '%s': bad user or password (too long, or a bad %%XX escape)", text);
  return -1;
bad_host:
  snprintf(err, errlen, "URL '%s': bad host", text);
  return -1;
}

void hb_url_redacted(const hb_url_t *u, char *out, size_t outlen) {
  const char *v6 = strchr(u->host, ':') ? "[" : "";
  snprintf(out, outlen, "%s://%s%s%s%s%s%s:%s", u->tls ? "amqps" : "amqp",
           u->has_user ? u->user : "", u->has_password ? ":***" : "", u->has_user ? "@" : "", v6,
           u->host, *v6 ? "]" : "", u->port);
}
