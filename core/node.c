/* Node objects: creation with resolved options, lifetime, and publishing
 * to a queue or through a topic to its subscriptions. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "node.h"
#include "util.h"

static char *opt_addr(const char *v, const char *def, const char *self) {
  const char *a = v ? v : def;
  /* A node is never its own dead-letter or expiry address: that would loop. */
  if (!a || !*a || strcmp(a, self) == 0) return NULL;
  return hd_xstrdup(a);
}

hd_node_t *hd_node_new(hd_node_type_t type, const char *address, uint32_t flags,
                       const hd_node_opts_t *opts, const hd_node_opts_t *defaults) {
  hd_node_t *n;
  if (type == HD_NODE_TOPIC) {
    hd_topic_t *t = hd_xcalloc(1, sizeof *t);
    pthread_rwlock_init(&t->lock, NULL);
    n = &t->node;
  } else {
    hd_queue_t *q = hd_xcalloc(1, sizeof *q);
    pthread_mutex_init(&q->lock, NULL);
    q->next_seq = 1;
    n = &q->node;
    type = HD_NODE_QUEUE;
  }
  atomic_init(&n->refs, 1);
  atomic_init(&n->deleted, false);
  n->type = type;
  n->flags = flags;
  n->address = hd_xstrdup(address);
  n->dead_letter_address = opt_addr(opts ? opts->dead_letter_address : NULL,
                                    defaults->dead_letter_address, address);
  n->expiry_address = opt_addr(opts ? opts->expiry_address : NULL, defaults->expiry_address, address);
  n->max_deliveries = opts && opts->max_deliveries >= 0 ? opts->max_deliveries : defaults->max_deliveries;
  n->max_depth = opts && opts->max_depth >= 0 ? opts->max_depth : defaults->max_depth;
  n->durable = type == HD_NODE_QUEUE && !(flags & (HD_NODE_DYNAMIC | HD_NODE_SUBSCRIPTION)) &&
               (opts && opts->durable >= 0 ? opts->durable : defaults->durable) > 0;
  return n;
}

static void queue_destroy(hd_queue_t *q) {
  hd_queue_store_destroy(q);
  for (hd_entry_t *e = q->head, *n; e; e = n) {
    n = e->next;
    hd_entry_free(e);
  }
  pthread_mutex_destroy(&q->lock);
}

static void topic_destroy(hd_topic_t *t) {
  for (size_t i = 0; i < t->n_subs; i++) hd_node_unref(&t->subs[i]->node);
  free(t->subs);
  pthread_rwlock_destroy(&t->lock);
}

void hd_node_unref(hd_node_t *n) {
  if (!n || atomic_fetch_sub_explicit(&n->refs, 1, memory_order_acq_rel) != 1) return;
  if (n->type == HD_NODE_TOPIC)
    topic_destroy((hd_topic_t *)n);
  else
    queue_destroy((hd_queue_t *)n);
  free(n->address);
  free(n->dead_letter_address);
  free(n->expiry_address);
  free(n);
}

int hd_node_put(hd_node_t *n, hd_msg_t *m) {
  if (n->type == HD_NODE_QUEUE) return hd_queue_put((hd_queue_t *)n, m, m->delivery_count);
  hd_topic_t *t = (hd_topic_t *)n;
  if (atomic_load_explicit(&n->deleted, memory_order_relaxed)) return HD_ENOTFOUND;
  pthread_rwlock_rdlock(&t->lock);
  for (size_t i = 0; i < t->n_subs; i++) {
    hd_queue_t *sub = t->subs[i];
    /* A full subscription misses this message; the others still get it. */
    if (hd_queue_put(sub, m, m->delivery_count) == HD_EFULL) {
      pthread_mutex_lock(&sub->lock);
      sub->st.dropped++;
      pthread_mutex_unlock(&sub->lock);
    }
  }
  pthread_rwlock_unlock(&t->lock);
  return 0;
}

hd_queue_t *hd_topic_subscribe(hd_topic_t *t) {
  hd_node_opts_t same = {t->node.dead_letter_address ? t->node.dead_letter_address : "",
                         t->node.expiry_address ? t->node.expiry_address : "",
                         t->node.max_deliveries, t->node.max_depth, 0};
  hd_queue_t *q = (hd_queue_t *)hd_node_new(HD_NODE_QUEUE, t->node.address, HD_NODE_SUBSCRIPTION,
                                            &same, &same);
  pthread_rwlock_wrlock(&t->lock);
  if (t->n_subs == t->cap_subs) {
    t->cap_subs = t->cap_subs ? t->cap_subs * 2 : 4;
    t->subs = hd_xrealloc(t->subs, t->cap_subs * sizeof *t->subs);
  }
  t->subs[t->n_subs++] = q;
  pthread_rwlock_unlock(&t->lock);
  return q;
}

void hd_topic_unsubscribe(hd_topic_t *t, hd_queue_t *sub) {
  bool found = false;
  pthread_rwlock_wrlock(&t->lock);
  for (size_t i = 0; i < t->n_subs; i++)
    if (t->subs[i] == sub) {
      t->subs[i] = t->subs[--t->n_subs];
      found = true;
      break;
    }
  pthread_rwlock_unlock(&t->lock);
  if (found) {
    atomic_store(&sub->node.deleted, true);
    hd_node_unref(&sub->node);
  }
}
