#include "config.h"

#include "tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>

#include "hadron/module.h"

static const char *ssl_reason(void) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  return r ? r : "no usable PEM data";
}

static FILE *open_pem(const char *what, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) snprintf(err, errlen, "%s %s: cannot open: %s", what, path, strerror(errno));
  return f;
}

int hd_tls_check_files(const char *cert, const char *key, const char *ca, char *err, size_t errlen) {
  int rc = HD_ECONFIG;
  X509 *x = NULL;
  EVP_PKEY *k = NULL;
  ERR_clear_error();
  FILE *f = open_pem("tls-cert", cert, err, errlen);
  if (!f) return rc;
  x = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  if (!x) {
    snprintf(err, errlen, "tls-cert %s: not a PEM certificate (%s)", cert, ssl_reason());
    goto out;
  }
  if (!(f = open_pem("tls-key", key, err, errlen))) goto out;
  k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  if (!k) {
    snprintf(err, errlen, "tls-key %s: not an unencrypted PEM private key (%s)", key, ssl_reason());
    goto out;
  }
  if (X509_check_private_key(x, k) != 1) {
    snprintf(err, errlen, "tls-key %s does not belong to the certificate in %s", key, cert);
    goto out;
  }
  if (ca) {
    if (!(f = open_pem("tls-ca", ca, err, errlen))) goto out;
    X509 *c = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!c) {
      snprintf(err, errlen, "tls-ca %s: holds no PEM certificate (%s)", ca, ssl_reason());
      goto out;
    }
    X509_free(c);
  }
  rc = 0;
out:
  X509_free(x);
  EVP_PKEY_free(k);
  ERR_clear_error();
  return rc;
}

int hd_tls_server_domain(const char *cert, const char *key, const char *ca, bool client_auth,
                         pn_ssl_domain_t **out, char *err, size_t errlen) {
  int rc = hd_tls_check_files(cert, key, ca, err, errlen);
  if (rc) return rc;
  pn_ssl_domain_t *d = pn_ssl_domain(PN_SSL_MODE_SERVER);
  if (!d) {
    snprintf(err, errlen, "TLS is not available in this qpid-proton build");
    return HD_ECONFIG;
  }
  if (pn_ssl_domain_set_credentials(d, cert, key, NULL) != 0) {
    snprintf(err, errlen, "tls-cert %s / tls-key %s: rejected by the TLS library", cert, key);
    goto fail;
  }
  if (ca && pn_ssl_domain_set_trusted_ca_db(d, ca) != 0) {
    snprintf(err, errlen, "tls-ca %s: rejected by the TLS library", ca);
    goto fail;
  }
  if (client_auth && pn_ssl_domain_set_peer_authentication(d, PN_SSL_VERIFY_PEER, ca) != 0) {
    snprintf(err, errlen, "tls-ca %s: cannot require client certificates with it", ca);
    goto fail;
  }
  if (!client_auth) pn_ssl_domain_set_peer_authentication(d, PN_SSL_ANONYMOUS_PEER, NULL);
  *out = d;
  return 0;
fail:
  pn_ssl_domain_free(d);
  return HD_ECONFIG;
}
