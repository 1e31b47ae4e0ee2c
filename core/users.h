/* Users for SASL PLAIN: a file of "name:hash" lines, where hash is
 *   $pbkdf2-sha256$ITERATIONS$SALT$HASH        (PBKDF2-HMAC-SHA256)
 *   $scrypt$N$r$p$SALT$HASH                     (scrypt)
 * with SALT and HASH in base64.  Passwords are never stored in clear;
 * `hadrond --hash-password USER` prints a line to add. */
#ifndef HD_USERS_H
#define HD_USERS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct hd_users hd_users_t;

int hd_users_load(const char *path, hd_users_t **out, char *err, size_t errlen);
void hd_users_free(hd_users_t *u);
size_t hd_users_count(const hd_users_t *u);

/* Constant-time check of a password; unknown users cost the same time. */
bool hd_users_verify(const hd_users_t *u, const char *user, size_t ulen, const char *pass,
                     size_t plen);

/* "$pbkdf2-sha256$..." for password with a fresh random salt. */
int hd_users_hash(const char *password, size_t plen, unsigned iterations, char *out, size_t outlen);

/* The users in force (swapped on reload).  hd_users_check verifies
 * against them; false if there are none. */
void hd_users_install(hd_users_t *u);
bool hd_users_check(const char *user, size_t ulen, const char *pass, size_t plen);
void hd_users_shutdown(void);

#endif
