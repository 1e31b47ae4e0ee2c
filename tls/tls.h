/* TLS for listeners (and later the replication channel) on OpenSSL through
 * proton's SSL layer.  Files are checked with OpenSSL first so that a bad
 * certificate, key or CA is refused at start-up with a message that names
 * the file and the problem, instead of failing handshakes later. */
#ifndef HD_TLS_H
#define HD_TLS_H

#include <proton/ssl.h>
#include <stdbool.h>
#include <stddef.h>

/* A server domain with cert/key; with client_auth, peers must present a
 * certificate that chains to ca.  0, or an error with err filled. */
int hd_tls_server_domain(const char *cert, const char *key, const char *ca, bool client_auth,
                         pn_ssl_domain_t **out, char *err, size_t errlen);

/* Check that cert and key files load and belong together, and that ca (if
 * non-NULL) holds at least one certificate. */
int hd_tls_check_files(const char *cert, const char *key, const char *ca, char *err, size_t errlen);

#endif
