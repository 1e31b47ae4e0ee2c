/* Links.  A producer link (the peer sends; the broker's end receives) feeds
 * a node; a consumer link (the broker sends) drains a queue through an
 * hd_consumer_t.  All functions run on the connection's owner thread. */
#ifndef HD_LINK_H
#define HD_LINK_H

#include <proton/delivery.h>
#include <proton/link.h>

#include "conn.h"
#include "node.h"

typedef enum { HD_LINK_IN = 1, HD_LINK_OUT = 2 } hd_link_kind_t;

/* Common head of both link kinds; pn_link's context points here. */
typedef struct hd_link {
  hd_link_kind_t kind;
  hd_conn_t *conn;
  pn_link_t *pn;
} hd_link_t;

void hd_link_remote_open(hd_conn_t *c, pn_link_t *l);
/* Release everything the link holds; safe to call twice. */
void hd_link_cleanup(pn_link_t *l);
void hd_link_flow(pn_link_t *l);
void hd_link_delivery(pn_delivery_t *d);
/* Memory is available again: top up the credit of c's producer links. */
void hd_link_resume_producers(hd_conn_t *c);

/* Refuse an attach: answer it with a null terminus and detach with
 * condition/description, as the spec asks of a refusing node. */
void hd_link_refuse(pn_link_t *l, const char *condition, const char *description);

/* link_in.c / link_out.c */
void hd_inlink_open(hd_conn_t *c, pn_link_t *l);
void hd_inlink_delivery(hd_link_t *lk, pn_delivery_t *d);
void hd_inlink_cleanup(hd_link_t *lk);
void hd_inlink_resume(hd_link_t *lk);
void hd_outlink_open(hd_conn_t *c, pn_link_t *l);
void hd_outlink_flow(hd_link_t *lk);
void hd_outlink_delivery(hd_link_t *lk, pn_delivery_t *d);
void hd_outlink_cleanup(hd_link_t *lk);

/* Node type asked for by terminus capabilities ("queue", "topic", and the
 * temporary-* forms), or UNSPEC. */
hd_node_type_t hd_link_capability_type(pn_data_t *caps);
/* Put the node's type into the local terminus capabilities. */
void hd_link_set_capability(pn_terminus_t *t, hd_node_type_t type);

#endif
