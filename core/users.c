#include "config.h"

#include "users.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hadron/module.h"
#include "util.h"

enum { KIND_PBKDF2 = 1, KIND_SCRYPT = 2 };

typedef struct user {
  char *name;
  int kind;
  uint64_t iter, n, r, p;
  uint8_t salt[64], hash[64];
  size_t salt_len, hash_len;
} user_t;

struct hd_users {
  user_t *v;
  size_t n;
};

static int b64_decode(const char *in, uint8_t *out, size_t cap, size_t *len) {
  size_t n = strlen(in);
  if (n == 0 || n % 4 || n / 4 * 3 > cap + 2) return -1;
  uint8_t tmp[128];
  if (n / 4 * 3 > sizeof tmp) return -1;
  int got = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
  if (got < 0) return -1;
  /* EVP_DecodeBlock counts padding as zero bytes; take them back off. */
  size_t pad = (in[n - 1] == '=') + (n > 1 && in[n - 2] == '=');
  size_t real = (size_t)got - pad;
  if (real > cap) return -1;
  memcpy(out, tmp, real);
  *len = real;
  return 0;
}

static int parse_hash(char *h, user_t *u) {
  char *f[8];
  int nf = 0;
  if (*h != '$') return -1;
  for (char *save = NULL, *t = strtok_r(h + 1, "$", &save); t && nf < 8; t = strtok_r(NULL, "$", &save))
    f[nf++] = t;
  char *end;
  if (nf == 4 && strcmp(f[0], "pbkdf2-sha256") == 0) {
    u->kind = KIND_PBKDF2;
    u->iter = strtoull(f[1], &end, 10);
    if (*end || u->iter < 1000 || u->iter > 100000000) return -1;
    return b64_decode(f[2], u->salt, sizeof u->salt, &u->salt_len) ||
                   b64_decode(f[3], u->hash, sizeof u->hash, &u->hash_len) || u->hash_len < 16
               ? -1
               : 0;
  }
  if (nf == 6 && strcmp(f[0], "scrypt") == 0) {
    u->kind = KIND_SCRYPT;
    u->n = strtoull(f[1], &end, 10);
    if (*end || u->n < 2 || (u->n & (u->n - 1))) return -1;
    u->r = strtoull(f[2], &end, 10);
    if (*end || !u->r) return -1;
    u->p = strtoull(f[3], &end, 10);
    if (*end || !u->p) return -1;
    return b64_decode(f[4], u->salt, sizeof u->salt, &u->salt_len) ||
                   b64_decode(f[5], u->hash, sizeof u->hash, &u->hash_len) || u->hash_len < 16
               ? -1
               : 0;
  }
  return -1;
}

int hd_users_load(const char *path, hd_users_t **out, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    int e = errno;
    snprintf(err, errlen, "users-file %s: cannot open: %s", path, strerror(e));
    return -e;
  }
  hd_users_t *u = hd_xcalloc(1, sizeof *u);
  size_t cap = 0;
  char line[1024];
  int lineno = 0, rc = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *s = line;
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    if (!*s || *s == '#') continue;
    char *colon = strchr(s, ':');
    if (!colon || colon == s) {
      snprintf(err, errlen, "%s:%d: expected 'name:hash' (make the hash with hadrond --hash-password NAME)", path, lineno);
      rc = HD_ECONFIG;
      break;
    }
    *colon = '\0';
    user_t usr = {0};
    if (parse_hash(colon + 1, &usr) != 0) {
      snprintf(err, errlen, "%s:%d: user '%s': not a $pbkdf2-sha256$ or $scrypt$ hash (make one with hadrond --hash-password %s)",
               path, lineno, s, s);
      rc = HD_ECONFIG;
      break;
    }
    for (size_t i = 0; i < u->n; i++)
      if (strcmp(u->v[i].name, s) == 0) {
        snprintf(err, errlen, "%s:%d: user '%s' appears twice", path, lineno, s);
        rc = HD_ECONFIG;
      }
    if (rc) break;
    usr.name = hd_xstrdup(s);
    if (u->n == cap) u->v = hd_xrealloc(u->v, (cap = cap ? cap * 2 : 8) * sizeof *u->v);
    u->v[u->n++] = usr;
  }
  fclose(f);
  if (rc) {
    hd_users_free(u);
    return rc;
  }
  *out = u;
  return 0;
}

void hd_users_free(hd_users_t *u) {
  if (!u) return;
  for (size_t i = 0; i < u->n; i++) {
    free(u->v[i].name);
    OPENSSL_cleanse(u->v[i].hash, sizeof u->v[i].hash);
  }
  free(u->v);
  free(u);
}

size_t hd_users_count(const hd_users_t *u) { return u ? u->n : 0; }

static bool derive(const user_t *u, const char *pass, size_t plen, uint8_t *out) {
  if (u->kind == KIND_PBKDF2)
    return PKCS5_PBKDF2_HMAC(pass, (int)plen, u->salt, (int)u->salt_len, (int)u->iter, EVP_sha256(),
                             (int)u->hash_len, out) == 1;
  return EVP_PBE_scrypt(pass, plen, u->salt, u->salt_len, u->n, u->r, u->p, 1ull << 30, out,
                        u->hash_len) == 1;
}

bool hd_users_verify(const hd_users_t *users, const char *name, size_t ulen, const char *pass,
                     size_t plen) {
  /* A user we do not know costs one derivation too, so timing does not tell
   * which names exist. */
  static const user_t dummy = {.kind = KIND_PBKDF2, .iter = 100000, .salt_len = 16, .hash_len = 32};
  const user_t *u = NULL;
  for (size_t i = 0; users && i < users->n && !u; i++)
    if (strlen(users->v[i].name) == ulen && memcmp(users->v[i].name, name, ulen) == 0) u = &users->v[i];
  uint8_t got[64];
  const user_t *k = u ? u : &dummy;
  bool ok = derive(k, pass, plen, got) && u && CRYPTO_memcmp(got, u->hash, u->hash_len) == 0;
  OPENSSL_cleanse(got, sizeof got);
  return ok;
}

int hd_users_hash(const char *password, size_t plen, unsigned iterations, char *out, size_t outlen) {
  if (iterations < 1000) return -EINVAL; /* hd_users_load would refuse the line */
  user_t u = {.kind = KIND_PBKDF2, .iter = iterations, .salt_len = 16, .hash_len = 32};
  if (RAND_bytes(u.salt, (int)u.salt_len) != 1 || !derive(&u, password, plen, u.hash)) return -EIO;
  char salt[64], hash[96];
  EVP_EncodeBlock((unsigned char *)salt, u.salt, (int)u.salt_len);
  EVP_EncodeBlock((unsigned char *)hash, u.hash, (int)u.hash_len);
  int n = snprintf(out, outlen, "$pbkdf2-sha256$%u$%s$%s", iterations, salt, hash);
  OPENSSL_cleanse(u.hash, sizeof u.hash);
  return n > 0 && (size_t)n < outlen ? 0 : -ENOSPC;
}

/* The installed set; readers hold the lock for one verification. */
static pthread_rwlock_t cur_lock = PTHREAD_RWLOCK_INITIALIZER;
static hd_users_t *cur;

void hd_users_install(hd_users_t *u) {
  pthread_rwlock_wrlock(&cur_lock);
  hd_users_t *old = cur;
  cur = u;
  pthread_rwlock_unlock(&cur_lock);
  hd_users_free(old);
}

bool hd_users_check(const char *user, size_t ulen, const char *pass, size_t plen) {
  pthread_rwlock_rdlock(&cur_lock);
  bool ok = hd_users_verify(cur, user, ulen, pass, plen);
  pthread_rwlock_unlock(&cur_lock);
  return ok;
}

void hd_users_shutdown(void) { hd_users_install(NULL); }
