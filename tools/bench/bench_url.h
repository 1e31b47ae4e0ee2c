/* Parsing of the broker URL: amqp[s]://[user[:password]@]host[:port]. */
#ifndef HB_URL_H
#define HB_URL_H

#include <stdbool.h>
#include <stddef.h>

typedef struct hb_url {
  bool tls;       /* amqps */
  char host[256]; /* without the brackets of an IPv6 literal */
  char port[16];  /* 5672, or 5671 for amqps, unless given */
  char user[256]; /* percent-decoded; empty: no user given */
  char password[256];
  bool has_user, has_password;
} hb_url_t;

/* Fills *u; on error returns -1 with a message for the user in err. */
int hb_url_parse(const char *text, hb_url_t *u, char *err, size_t errlen);

/* The URL with the password replaced by "***", for reports. */
void hb_url_redacted(const hb_url_t *u, char *out, size_t outlen);

#endif
