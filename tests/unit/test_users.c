/* core/users.h: the users file for SASL PLAIN: PBKDF2 and scrypt lines,
 * password checks, and file:line errors for bad lines. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "hadron/module.h"
#include "users.h"

static char path[64];
static char err[1024];

static int make_path(void **state) {
  (void)state;
  snprintf(path, sizeof path, "/tmp/hd-test-users-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  return 0;
}

static int remove_path(void **state) {
  (void)state;
  unlink(path);
  return 0;
}

static void write_users(const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static hd_users_t *load_ok(const char *text) {
  write_users(text);
  hd_users_t *u = NULL;
  err[0] = '\0';
  int rc = hd_users_load(path, &u, err, sizeof err);
  if (rc) fail_msg("load failed: %s", err);
  assert_non_null(u);
  return u;
}

/* Loading must fail naming path:line and containing `word`. */
static void load_fails(const char *text, int line, const char *word) {
  write_users(text);
  hd_users_t *u = NULL;
  err[0] = '\0';
  int rc = hd_users_load(path, &u, err, sizeof err);
  if (rc == 0) {
    hd_users_free(u);
    fail_msg("accepted; expected line %d: %s", line, word);
  }
  assert_int_equal(rc, HD_ECONFIG);
  char want[128];
  snprintf(want, sizeof want, "%s:%d: ", path, line);
  if (strncmp(err, want, strlen(want)) != 0) fail_msg("error '%s' does not start with '%s'", err, want);
  if (!strstr(err, word)) fail_msg("error '%s' lacks '%s'", err, word);
}

static bool verify(const hd_users_t *u, const char *user, const char *pass) {
  return hd_users_verify(u, user, strlen(user), pass, strlen(pass));
}

/* A line made by hd_users_hash verifies the right password only. */
static void t_pbkdf2_roundtrip(void **state) {
  (void)state;
  char hash[256], text[512];
  assert_int_equal(hd_users_hash("s3cret", 6, 1000, hash, sizeof hash), 0);
  assert_int_equal(strncmp(hash, "$pbkdf2-sha256$1000$", 20), 0);
  /* Fresh salt each time. */
  char again[256];
  assert_int_equal(hd_users_hash("s3cret", 6, 1000, again, sizeof again), 0);
  assert_string_not_equal(hash, again);

  snprintf(text, sizeof text, "# users\n\nalice:%s\n", hash);
  hd_users_t *u = load_ok(text);
  assert_int_equal(hd_users_count(u), 1);
  assert_true(verify(u, "alice", "s3cret"));
  assert_false(verify(u, "alice", "s3cret "));
  assert_false(verify(u, "alice", "S3cret"));
  assert_false(verify(u, "alice", ""));
  assert_false(verify(u, "bob", "s3cret"));
  assert_false(verify(u, "alic", "s3cret"));
  assert_false(verify(u, "alice2", "s3cret"));
  /* Lengths are explicit: a prefix of a longer buffer works. */
  assert_true(hd_users_verify(u, "alicexx", 5, "s3cretyy", 6));
  hd_users_free(u);

  /* A too-small output buffer is an error, not a truncated hash. */
  char small[20];
  assert_true(hd_users_hash("s3cret", 6, 1000, small, sizeof small) != 0);
}

static void b64(const uint8_t *in, size_t n, char *out) {
  EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

/* An scrypt line computed independently with OpenSSL verifies. */
static void t_scrypt(void **state) {
  (void)state;
  static const uint8_t salt[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  uint8_t key[32];
  const char *pw = "correct horse";
  assert_int_equal(EVP_PBE_scrypt(pw, strlen(pw), salt, sizeof salt, 1024, 8, 1, 0, key, sizeof key), 1);
  char s64[64], k64[64], text[512];
  b64(salt, sizeof salt, s64);
  b64(key, sizeof key, k64);
  snprintf(text, sizeof text, "bob:$scrypt$1024$8$1$%s$%s\n", s64, k64);

  /* Together with a PBKDF2 user. */
  char hash[256];
  assert_int_equal(hd_users_hash("pw-a", 4, 1000, hash, sizeof hash), 0);
  size_t n = strlen(text);
  snprintf(text + n, sizeof text - n, "alice:%s\n", hash);

  hd_users_t *u = load_ok(text);
  assert_int_equal(hd_users_count(u), 2);
  assert_true(verify(u, "bob", "correct horse"));
  assert_false(verify(u, "bob", "correct horse!"));
  assert_false(verify(u, "bob", "pw-a"));
  assert_true(verify(u, "alice", "pw-a"));
  assert_false(verify(u, "alice", "correct horse"));

  /* The installed set answers hd_users_check until replaced. */
  assert_false(hd_users_check("bob", 3, "correct horse", 13));
  hd_users_install(u);
  assert_true(hd_users_check("bob", 3, "correct horse", 13));
  assert_false(hd_users_check("bob", 3, "nope", 4));
  hd_users_shutdown();
  assert_false(hd_users_check("bob", 3, "correct horse", 13));
}

/* Bad lines are refused with the file, the line (comments and blank lines
 * counted) and what is wrong. */
static void t_malformed_lines(void **state) {
  (void)state;
  char hash[256], text[1024];
  assert_int_equal(hd_users_hash("x", 1, 1000, hash, sizeof hash), 0);

  load_fails("# comment\n\nno colon here\n", 3, "expected 'name:hash'");
  load_fails(":$pbkdf2-sha256$1000$AAAA$AAAA\n", 1, "expected 'name:hash'");
  load_fails("carol:plaintext-password\n", 1, "user 'carol': not a $pbkdf2-sha256$ or $scrypt$ hash");
  load_fails("carol:\n", 1, "user 'carol'");
  load_fails("carol:$pbkdf2-sha256$1000$not*base64$AAAAAAAAAAAAAAAAAAAAAA==\n", 1, "user 'carol'");
  load_fails("carol:$pbkdf2-sha256$1000$AAAAAAAAAAAAAAAAAAAAAA==\n", 1, "user 'carol'"); /* no hash */
  load_fails("carol:$pbkdf2-sha256$1000$AAAAAAAAAAAAAAAAAAAAAA==$AAAA\n", 1, "user 'carol'"); /* 3-byte hash */
  load_fails("carol:$md5$1000$AAAA$AAAA\n", 1, "user 'carol'");
  load_fails("carol:$scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==\n", 1,
             "user 'carol'"); /* N not a power of two */
  load_fails("carol:$scrypt$1024$0$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==\n", 1,
             "user 'carol'"); /* r = 0 */

  /* The line number of a later bad line. */
  snprintf(text, sizeof text, "alice:%s\n# ok so far\nbob:%s\n\ndave\n", hash, hash);
  load_fails(text, 5, "expected 'name:hash'");

  /* Duplicates name the second line. */
  snprintf(text, sizeof text, "alice:%s\n\n# again\nalice:%s\n", hash, hash);
  load_fails(text, 4, "user 'alice' appears twice");

  /* A missing file is not a config error but names the path. */
  hd_users_t *u = NULL;
  int rc = hd_users_load("/nonexistent/hd-users", &u, err, sizeof err);
  assert_true(rc < 0);
  assert_non_null(strstr(err, "/nonexistent/hd-users"));
}

/* PBKDF2 with fewer than 1000 iterations is refused, by the hasher and by
 * the loader (for a hand-made line); 1000 is accepted. */
static void t_min_iterations(void **state) {
  (void)state;
  char hash[256], text[512];
  assert_int_equal(hd_users_hash("pw", 2, 999, hash, sizeof hash), -EINVAL);
  assert_int_equal(hd_users_hash("pw", 2, 1000, hash, sizeof hash), 0);
  char *iter = strstr(hash, "$1000$");
  assert_non_null(iter);
  snprintf(text, sizeof text, "weak:$pbkdf2-sha256$999$%s\n", iter + strlen("$1000$"));
  load_fails(text, 1, "user 'weak'");

  assert_int_equal(hd_users_hash("pw", 2, 1000, hash, sizeof hash), 0);
  snprintf(text, sizeof text, "ok:%s\n", hash);
  hd_users_t *u = load_ok(text);
  assert_true(verify(u, "ok", "pw"));
  hd_users_free(u);
}

/* Surrounding blanks and CRLF line ends are ignored; an empty file has no
 * users and verifies nobody. */
static void t_blanks_and_empty(void **state) {
  (void)state;
  char hash[256], text[512];
  assert_int_equal(hd_users_hash("pw", 2, 1000, hash, sizeof hash), 0);
  snprintf(text, sizeof text, "   eve:%s  \r\n", hash);
  hd_users_t *u = load_ok(text);
  assert_true(verify(u, "eve", "pw"));
  hd_users_free(u);

  u = load_ok("# nobody\n\n");
  assert_int_equal(hd_users_count(u), 0);
  assert_false(verify(u, "eve", "pw"));
  hd_users_free(u);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(t_pbkdf2_roundtrip),
      cmocka_unit_test(t_scrypt),
      cmocka_unit_test(t_malformed_lines),
      cmocka_unit_test(t_min_iterations),
      cmocka_unit_test(t_blanks_and_empty),
  };
  return cmocka_run_group_tests(tests, make_path, remove_path);
}
