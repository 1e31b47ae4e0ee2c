#include "config.h"

#include "sasl.h"

#include <proton/sasl.h>
#include <proton/sasl_plugin.h>
#include <string.h>

#include "log.h"
#include "users.h"

static hd_conn_t *ctx(pn_transport_t *t) { return pnx_sasl_get_context(t); }

static const char *list_mechs(pn_transport_t *t) {
  static const char *const lists[8] = {
      "", "ANONYMOUS", "PLAIN", "PLAIN ANONYMOUS", "EXTERNAL", "EXTERNAL ANONYMOUS",
      "EXTERNAL PLAIN", "EXTERNAL PLAIN ANONYMOUS"};
  unsigned m = ctx(t)->listener->conf->mechs;
  if (!pnx_sasl_get_external_username(t)) m &= ~HD_MECH_EXTERNAL;
  return lists[m & 7];
}

static bool init_server(pn_transport_t *t) {
  pnx_sasl_set_desired_state(t, SASL_POSTED_MECHANISMS);
  return true;
}

static void auth_failed(pn_transport_t *t, const char *mech, const char *user, size_t ulen,
                        const char *why) {
  hd_conn_t *c = ctx(t);
  HD_LOG(HD_LOG_NOTICE, "core", "connection %llu from %s, authentication failed (%s%s%.*s%s): %s",
         (unsigned long long)c->id, c->remote, mech, user ? ", user '" : "", (int)ulen,
         user ? user : "", user ? "'" : "", why);
  pnx_sasl_set_failed(t);
  pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
}

static void process_init(pn_transport_t *t, const char *mech, const pn_bytes_t *recv) {
  unsigned m = ctx(t)->listener->conf->mechs;
  /* proton passes NULL when sasl-init lacks its mandatory mechanism symbol. */
  if (!mech) return auth_failed(t, "(none)", NULL, 0, "sasl-init without a mechanism");
  if (strcmp(mech, "ANONYMOUS") == 0 && (m & HD_MECH_ANONYMOUS)) {
    pnx_sasl_set_succeeded(t, "anonymous", NULL);
    pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
    return;
  }
  if (strcmp(mech, "PLAIN") == 0 && (m & HD_MECH_PLAIN)) {
    /* [authzid] NUL authcid NUL password */
    const char *p = recv->start, *end = p + recv->size;
    const char *z1 = p ? memchr(p, 0, recv->size) : NULL;
    const char *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(end - z1 - 1)) : NULL;
    if (!z2) return auth_failed(t, "PLAIN", NULL, 0, "malformed PLAIN response");
    const char *user = z1 + 1, *pass = z2 + 1;
    size_t zlen = (size_t)(z1 - p), ulen = (size_t)(z2 - user), plen = (size_t)(end - pass);
    if (zlen && (zlen != ulen || memcmp(p, user, ulen) != 0))
      return auth_failed(t, "PLAIN", user, ulen, "acting as another user (authzid) is not allowed");
    if (ulen == 0 || ulen > 255 || plen > 1024)
      return auth_failed(t, "PLAIN", user, ulen, "user name or password too long");
    if (!hd_users_check(user, ulen, pass, plen))
      return auth_failed(t, "PLAIN", user, ulen, "unknown user or wrong password");
    char *name = ctx(t)->sasl_user;
    memcpy(name, user, ulen);
    name[ulen] = '\0';
    pnx_sasl_set_succeeded(t, name, NULL);
    pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
    return;
  }
  const char *ext = pnx_sasl_get_external_username(t);
  if (strcmp(mech, "EXTERNAL") == 0 && (m & HD_MECH_EXTERNAL)) {
    if (!ext) return auth_failed(t, "EXTERNAL", NULL, 0, "no verified client certificate");
    pnx_sasl_set_succeeded(t, ext, NULL);
    pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
    return;
  }
  auth_failed(t, mech, NULL, 0, "mechanism not offered on this listener");
}

static void process_response(pn_transport_t *t, const pn_bytes_t *recv) {
  /* None of our mechanisms sends a challenge, so a response is a protocol error. */
  auth_failed(t, "?", NULL, 0, "unexpected SASL response");
}

static void nothing(pn_transport_t *t) {}
static bool no_client(pn_transport_t *t) { return false; }
static bool no_mechs(pn_transport_t *t, const char *m) { return false; }
static void no_challenge(pn_transport_t *t, const pn_bytes_t *b) {}
static bool no_encrypt(pn_transport_t *t) { return false; }
static ssize_t no_size(pn_transport_t *t) { return 0; }
static ssize_t no_code(pn_transport_t *t, pn_bytes_t in, pn_bytes_t *out) { return 0; }

static const pnx_sasl_implementation impl = {
    .free = nothing,
    .list_mechanisms = list_mechs,
    .init_server = init_server,
    .init_client = no_client,
    .prepare_write = nothing,
    .process_init = process_init,
    .process_response = process_response,
    .process_mechanisms = no_mechs,
    .process_challenge = no_challenge,
    .process_outcome = no_challenge,
    .can_encrypt = no_encrypt,
    .max_encrypt_size = no_size,
    .encode = no_code,
    .decode = no_code,
};

void hd_sasl_setup(hd_conn_t *c, pn_transport_t *t) {
  pn_sasl(t); /* creates the layer; the transport is already in server mode */
  pnx_sasl_set_implementation(t, &impl, c);
  /* Peers that skip SASL get through here and are refused at open with a
   * proper close frame (conn.c) where the listener does not allow ANONYMOUS;
   * proton's own check would drop the socket without a word. */
  pn_transport_require_auth(t, false);
}
