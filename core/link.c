/* What producer and consumer links share: attach limits, refusal,
 * terminus capabilities, and dispatch of link events by kind. */
#include "config.h"

#include "link.h"

#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/terminus.h>
#include <string.h>

#include "util.h"

void hd_link_refuse(pn_link_t *l, const char *condition, const char *description) {
  /* Null termini in the answering attach tell the peer that the node was
   * not created (AMQP 1.0 2.6.3); proton encodes an unspecified terminus as
   * null, and new links start with typed ones. */
  pn_terminus_set_type(pn_link_source(l), PN_UNSPECIFIED);
  pn_terminus_set_type(pn_link_target(l), PN_UNSPECIFIED);
  pn_link_open(l);
  pn_condition_t *c = pn_link_condition(l);
  pn_condition_set_name(c, condition);
  pn_condition_set_description(c, description);
  pn_link_close(l);
}

void hd_link_remote_open(hd_conn_t *c, pn_link_t *l) {
  if (c->links >= c->listener->conf->max_links) {
    char desc[160];
    hd_fmt(desc, "this connection already has %u links (max-links); detach one first", c->links);
    hd_link_refuse(l, "amqp:resource-limit-exceeded", desc);
    return;
  }
  if (pn_link_is_receiver(l))
    hd_inlink_open(c, l);
  else
    hd_outlink_open(c, l);
  if (pn_link_get_context(l)) c->links++;
}

void hd_link_cleanup(pn_link_t *l) {
  hd_link_t *lk = pn_link_get_context(l);
  if (!lk) return;
  pn_link_set_context(l, NULL);
  lk->conn->links--;
  if (lk->kind == HD_LINK_IN)
    hd_inlink_cleanup(lk);
  else
    hd_outlink_cleanup(lk);
}

void hd_link_flow(pn_link_t *l) {
  hd_link_t *lk = pn_link_get_context(l);
  if (lk && lk->kind == HD_LINK_OUT) hd_outlink_flow(lk);
}

void hd_link_delivery(pn_delivery_t *d) {
  pn_link_t *l = pn_delivery_link(d);
  hd_link_t *lk = pn_link_get_context(l);
  if (!lk) {
    /* The link is being torn down; nothing can be routed any more. */
    if (pn_delivery_settled(d)) pn_delivery_settle(d);
    return;
  }
  if (lk->kind == HD_LINK_IN)
    hd_inlink_delivery(lk, d);
  else
    hd_outlink_delivery(lk, d);
}

void hd_link_resume_producers(hd_conn_t *c) {
  for (pn_link_t *l = pn_link_head(c->pn, 0); l; l = pn_link_next(l, 0)) {
    hd_link_t *lk = pn_link_get_context(l);
    if (lk && lk->kind == HD_LINK_IN) hd_inlink_resume(lk);
  }
}

static hd_node_type_t cap_type(pn_bytes_t s) {
  static const struct { const char *name; hd_node_type_t type; } caps[] = {
      {"queue", HD_NODE_QUEUE}, {"temporary-queue", HD_NODE_QUEUE},
      {"topic", HD_NODE_TOPIC}, {"temporary-topic", HD_NODE_TOPIC}};
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
    if (s.size == strlen(caps[i].name) && memcmp(s.start, caps[i].name, s.size) == 0) return caps[i].type;
  return HD_NODE_UNSPEC;
}

hd_node_type_t hd_link_capability_type(pn_data_t *caps) {
  hd_node_type_t t = HD_NODE_UNSPEC;
  pn_data_rewind(caps);
  if (!pn_data_next(caps)) return t;
  if (pn_data_type(caps) == PN_SYMBOL) return cap_type(pn_data_get_symbol(caps));
  if (pn_data_type(caps) == PN_ARRAY && pn_data_get_array_type(caps) == PN_SYMBOL) {
    pn_data_enter(caps);
    while (t == HD_NODE_UNSPEC && pn_data_next(caps)) t = cap_type(pn_data_get_symbol(caps));
    pn_data_exit(caps);
  }
  return t;
}

void hd_link_set_capability(pn_terminus_t *t, hd_node_type_t type) {
  pn_data_t *caps = pn_terminus_capabilities(t);
  pn_data_clear(caps);
  const char *name = type == HD_NODE_TOPIC ? "topic" : "queue";
  pn_data_put_array(caps, false, PN_SYMBOL);
  pn_data_enter(caps);
  pn_data_put_symbol(caps, pn_bytes(strlen(name), name));
  pn_data_exit(caps);
}
