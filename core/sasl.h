/* The broker's SASL server: ANONYMOUS, PLAIN (checked against the users
 * file) and EXTERNAL (the verified TLS client certificate), plugged into
 * proton per transport through its SASL plugin interface. */
#ifndef HD_SASL_H
#define HD_SASL_H

#include "conn.h"

void hd_sasl_setup(hd_conn_t *c, pn_transport_t *t);

#endif
