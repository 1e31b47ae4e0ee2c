/* Moving messages out of a queue for good: to its dead-letter address
 * (rejected, or too many failed deliveries) or its expiry address.  The
 * copy carries message annotations saying why and where it came from; its
 * bare message is unchanged. */
#include "config.h"

#include <string.h>

#include "address.h"
#include "codec.h"
#include "log.h"
#include "node.h"
#include "util.h"

static void put_str(hd_wr_t *w, const char *key, const char *val) {
  hd_wr_symbol(w, key, strlen(key));
  hd_wr_string(w, val, strlen(val));
}

/* Send an annotated copy of e->msg to `address`; true on success. */
static bool move(hd_queue_t *q, hd_entry_t *e, const char *address, hd_wr_t *ann, uint32_t count) {
  hd_msg_t *copy = hd_msg_annotate(e->msg, ann->buf, ann->len, count);
  if (!copy) return false;
  /* The copy starts a new life: no expiry, no failed attempts. */
  copy->expiry_ms = 0;
  copy->delivery_count = 0;
  hd_node_t *n = NULL;
  hd_refusal_t ref = {0};
  int rc = hd_addr_resolve(address, strlen(address), HD_PURPOSE_RELAY, HD_NODE_UNSPEC, true, &n, &ref);
  /* Through the store: the copy's PUT is submitted before the source's
   * DEL (hd_queue_drop, after us), so a crash leaves at worst both. */
  if (rc == 0) rc = hd_node_deliver(n, copy, NULL);
  if (rc)
    HD_LOG(HD_LOG_WARNING, "core", "queue '%s', cannot move a message to '%s': %s", q->node.address,
           address, rc == HD_EFULL ? "it is full" : ref.description[0] ? ref.description : hd_strerror(rc));
  hd_node_unref(n);
  hd_msg_unref(copy);
  return rc == 0;
}

void hd_node_dead_letter(hd_queue_t *q, hd_entry_t *e, const char *reason, const char *description) {
  const char *dla = q->node.dead_letter_address;
  if (dla) {
    uint8_t stack[512];
    hd_wr_t w;
    hd_wr_init(&w, stack, sizeof stack);
    uint32_t count = 4;
    put_str(&w, "x-opt-dead-letter-reason", reason);
    put_str(&w, "x-opt-original-address", q->node.address);
    if (description && *description) {
      put_str(&w, "x-opt-dead-letter-description", description);
      count += 2;
    }
    bool ok = move(q, e, dla, &w, count);
    hd_wr_free(&w);
    if (ok) {
      HD_LOG(HD_LOG_DEBUG, "core", "queue '%s', message dead-lettered to '%s' (%s)",
             q->node.address, dla, reason);
      hd_queue_drop(q, e, HD_DROP_DEAD);
      return;
    }
  }
  /* Counted, and reported by the periodic summary (server tick). */
  hd_queue_drop(q, e, HD_DROP_DISCARD);
}

void hd_node_expire_list(hd_queue_t *q, hd_entry_t *list) {
  const char *to = q->node.expiry_address;
  while (list) {
    hd_entry_t *e = list;
    list = list->next;
    e->next = e->prev = NULL;
    if (to) {
      uint8_t stack[256];
      hd_wr_t w;
      hd_wr_init(&w, stack, sizeof stack);
      put_str(&w, "x-opt-original-address", q->node.address);
      hd_wr_symbol(&w, "x-opt-expired-at", strlen("x-opt-expired-at"));
      hd_wr_timestamp(&w, (int64_t)hd_now_wall_ms());
      move(q, e, to, &w, 4);
      hd_wr_free(&w);
    }
    hd_queue_drop(q, e, HD_DROP_EXPIRED);
  }
}
