/* The log's pending operations (store_table.h): a hash of the puts still
 * alive, and short lists for what must reach LMDB's older records. */
#include "config.h"

#include "store_table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static size_t slot(const hd_table_t *t, uint64_t node, uint64_t seq) {
  uint64_t h = (seq ^ (node * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
  return (size_t)(h >> 32) & (t->nbuckets - 1);
}

static void grow(hd_table_t *t) {
  size_t n = t->nbuckets ? t->nbuckets * 2 : 1024;
  hd_pend_t **b = hd_xcalloc(n, sizeof *b);
  size_t old = t->nbuckets;
  hd_pend_t **ob = t->buckets;
  t->buckets = b;
  t->nbuckets = n;
  for (size_t i = 0; i < old; i++)
    for (hd_pend_t *p = ob[i], *next; p; p = next) {
      next = p->hnext;
      size_t s = slot(t, p->node, p->seq);
      p->hnext = b[s];
      b[s] = p;
    }
  free(ob);
}

static hd_pend_t **find(const hd_table_t *t, uint64_t node, uint64_t seq) {
  if (!t->nbuckets) return NULL;
  hd_pend_t **pp = &t->buckets[slot(t, node, seq)];
  for (; *pp; pp = &(*pp)->hnext)
    if ((*pp)->node == node && (*pp)->seq == seq) return pp;
  return NULL;
}

static hd_keyop_t *push(hd_keyops_t *l) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    l->v = hd_xrealloc(l->v, l->cap * sizeof *l->v);
  }
  return &l->v[l->n++];
}

/* The per-node lists (marks, highest seqs) have one entry per node. */
static hd_keyop_t *per_node(hd_keyops_t *l, uint64_t node) {
  for (size_t i = 0; i < l->n; i++)
    if (l->v[i].node == node) return &l->v[i];
  hd_keyop_t *k = push(l);
  *k = (hd_keyop_t){node, 0, 0};
  return k;
}

void hd_table_put(hd_table_t *t, uint64_t node, uint64_t seq, uint32_t flags, uint32_t delivery_count,
                  hd_msg_t *msg) {
  hd_keyop_t *m = per_node(&t->maxseq, node);
  if (seq > m->seq) m->seq = seq;
  hd_pend_t **pp = find(t, node, seq);
  if (pp) { /* not expected (seqs are not reused); the later put wins */
    hd_msg_unref((*pp)->msg);
    (*pp)->msg = hd_msg_ref(msg);
    (*pp)->flags = flags;
    (*pp)->delivery_count = delivery_count;
    return;
  }
  if (t->count >= t->nbuckets) grow(t);
  hd_pend_t *p = hd_obj_alloc(sizeof *p);
  *p = (hd_pend_t){NULL, node, seq, flags, delivery_count, hd_msg_ref(msg)};
  size_t s = slot(t, node, seq);
  p->hnext = t->buckets[s];
  t->buckets[s] = p;
  t->count++;
}

void hd_table_del(hd_table_t *t, uint64_t node, uint64_t seq) {
  hd_pend_t **pp = find(t, node, seq);
  if (!pp) {
    *push(&t->dels) = (hd_keyop_t){node, seq, 0};
    return;
  }
  hd_pend_t *p = *pp;
  *pp = p->hnext;
  t->count--;
  hd_msg_unref(p->msg);
  hd_obj_free(p, sizeof *p);
}

void hd_table_update(hd_table_t *t, uint64_t node, uint64_t seq, uint32_t delivery_count) {
  hd_pend_t **pp = find(t, node, seq);
  if (pp)
    (*pp)->delivery_count = delivery_count;
  else
    *push(&t->updates) = (hd_keyop_t){node, seq, delivery_count};
}

void hd_table_hwm(hd_table_t *t, uint64_t node, uint64_t seq) {
  hd_keyop_t *k = per_node(&t->hwms, node);
  k->seq = seq;
  k->delivery_count = 1; /* set: a mark of 0 is a real value */
}

int hd_table_apply(hd_table_t *t, const hd_slog_op_t *op, hd_msg_t *msg) {
  switch (op->kind) {
  case HD_SLOG_PUT: {
    hd_msg_t *m = msg;
    if (!m) {
      if (!(m = hd_msg_alloc(op->len))) return -ENOMEM;
      memcpy(m->buf, op->bytes, op->len);
      m->expiry_ms = op->expiry_ms;
    }
    hd_table_put(t, op->node, op->seq, op->flags, op->delivery_count, m);
    if (!msg) hd_msg_unref(m);
    break;
  }
  case HD_SLOG_DEL: hd_table_del(t, op->node, op->seq); break;
  case HD_SLOG_UPDATE: hd_table_update(t, op->node, op->seq, op->delivery_count); break;
  case HD_SLOG_HWM: hd_table_hwm(t, op->node, op->seq); break;
  default: break;
  }
  return 0;
}

int hd_table_empty(const hd_table_t *t) {
  return !t->count && !t->dels.n && !t->updates.n && !t->hwms.n && !t->maxseq.n;
}

static int by_key(const void *a, const void *b) {
  const hd_pend_t *x = *(hd_pend_t *const *)a, *y = *(hd_pend_t *const *)b;
  if (x->node != y->node) return x->node < y->node ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

hd_pend_t **hd_table_sorted(const hd_table_t *t, size_t *n) {
  hd_pend_t **v = hd_xmalloc((t->count ? t->count : 1) * sizeof *v);
  size_t k = 0;
  for (size_t i = 0; i < t->nbuckets; i++)
    for (hd_pend_t *p = t->buckets[i]; p; p = p->hnext) v[k++] = p;
  qsort(v, k, sizeof *v, by_key);
  *n = k;
  return v;
}

void hd_table_clear(hd_table_t *t) {
  for (size_t i = 0; i < t->nbuckets; i++)
    for (hd_pend_t *p = t->buckets[i], *next; p; p = next) {
      next = p->hnext;
      hd_msg_unref(p->msg);
      hd_obj_free(p, sizeof *p);
    }
  free(t->buckets);
  free(t->dels.v);
  free(t->updates.v);
  free(t->hwms.v);
  free(t->maxseq.v);
  memset(t, 0, sizeof *t);
}
