/* The log's pending operations (store_table.h): per node, a ring of the
 * puts still alive indexed by seq; a hash for the puts that do not fit a
 * ring; short lists for what must reach LMDB's older records. */
#include "config.h"

#include "store_table.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* How far past its front a ring may reach: a few times the puts it holds,
 * plus room for gaps (seqs taken by messages that never come here, such as
 * non-durable ones kept in memory).  A put beyond that, with an old message
 * holding the front, goes to the hash rather than stretching the ring. */
#define RING_SLACK 65536

typedef struct slot {
  hd_msg_t *msg; /* NULL: no live put at this seq */
  uint32_t flags, delivery_count;
} slot_t;

struct hd_tnode {
  hd_tlink_t link; /* first: link.node is the node's id */
  uint64_t base;   /* seq of the front slot */
  slot_t *ring;
  size_t cap;  /* a power of two (0 before the first put) */
  size_t head; /* index of the front slot */
  size_t span; /* seqs base .. base + span - 1; the front is live unless span is 0 */
  size_t live;
  long maxseq_ix, hwm_ix; /* this node's entries in t->maxseq and t->hwms, or -1 */
};

typedef struct xput {
  hd_tlink_t link; /* first */
  hd_pend_t p;
} xput_t;

static size_t mix(uint64_t node, uint64_t seq) {
  return (size_t)(((seq ^ (node * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull) >> 32);
}

/* ---- the two hashes ---------------------------------------------------------- */

static void chain_grow(hd_tchain_t *c, size_t first) {
  size_t n = c->n ? c->n * 2 : first;
  hd_tlink_t **b = hd_xcalloc(n, sizeof *b);
  for (size_t i = 0; i < c->n; i++)
    for (hd_tlink_t *l = c->b[i], *next; l; l = next) {
      next = l->next;
      size_t s = mix(l->node, l->seq) & (n - 1);
      l->next = b[s];
      b[s] = l;
    }
  free(c->b);
  c->b = b;
  c->n = n;
}

static hd_tlink_t **chain_find(const hd_tchain_t *c, uint64_t node, uint64_t seq) {
  if (!c->count) return NULL;
  hd_tlink_t **pp = &c->b[mix(node, seq) & (c->n - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->node == node && (*pp)->seq == seq) return pp;
  return NULL;
}

static void chain_add(hd_tchain_t *c, hd_tlink_t *l, size_t first) {
  if (c->count >= c->n) chain_grow(c, first);
  size_t s = mix(l->node, l->seq) & (c->n - 1);
  l->next = c->b[s];
  c->b[s] = l;
  c->count++;
}

static hd_tlink_t *chain_unlink(hd_tchain_t *c, hd_tlink_t **pp) {
  hd_tlink_t *l = *pp;
  *pp = l->next;
  c->count--;
  return l;
}

/* ---- nodes ---------------------------------------------------------------- */

static hd_tnode_t *node_get(hd_table_t *t, uint64_t node, bool create) {
  if (t->last && t->last->link.node == node) return t->last;
  hd_tlink_t **pp = chain_find(&t->nodes, node, 0);
  if (pp) return t->last = (hd_tnode_t *)*pp;
  if (!create) return NULL;
  hd_tnode_t *tn = hd_xcalloc(1, sizeof *tn);
  tn->link.node = node;
  tn->maxseq_ix = tn->hwm_ix = -1;
  chain_add(&t->nodes, &tn->link, 16);
  return t->last = tn;
}

/* ---- rings ---------------------------------------------------------------- */

static slot_t *slot_at(const hd_tnode_t *tn, uint64_t seq) {
  if (seq < tn->base || seq - tn->base >= tn->span) return NULL;
  return &tn->ring[(tn->head + (size_t)(seq - tn->base)) & (tn->cap - 1)];
}

/* The slot holding a live put at seq, or NULL (tn may be NULL). */
static slot_t *live_at(const hd_tnode_t *tn, uint64_t seq) {
  slot_t *s = tn ? slot_at(tn, seq) : NULL;
  return s && s->msg ? s : NULL;
}

/* Slots outside the span are always zero, so growing needs no clearing. */
static void ring_grow(hd_tnode_t *tn, size_t span) {
  size_t cap = tn->cap ? tn->cap : 256;
  while (cap < span)
    cap *= 2;
  slot_t *r = hd_xcalloc(cap, sizeof *r);
  for (size_t i = 0; i < tn->span; i++)
    r[i] = tn->ring[(tn->head + i) & (tn->cap - 1)];
  free(tn->ring);
  tn->ring = r;
  tn->cap = cap;
  tn->head = 0;
}

/* The slot a new put at seq goes to, or NULL: it belongs in the hash. */
static slot_t *ring_place(hd_tnode_t *tn, uint64_t seq) {
  slot_t *s = slot_at(tn, seq);
  if (s) return s;
  if (!tn->span) tn->base = seq; /* an empty ring starts wherever the next put is */
  if (seq < tn->base || seq - tn->base >= 4 * (tn->live + 1) + RING_SLACK) return NULL;
  size_t span = (size_t)(seq - tn->base) + 1;
  if (span > tn->cap) ring_grow(tn, span);
  tn->span = span;
  return slot_at(tn, seq);
}

static void ring_clear_slot(hd_tnode_t *tn, slot_t *s) {
  hd_msg_unref(s->msg);
  *s = (slot_t){0};
  tn->live--;
  /* Keep the front live: move it past every cleared slot. */
  while (tn->span && !tn->ring[tn->head].msg) {
    tn->head = (tn->head + 1) & (tn->cap - 1);
    tn->base++;
    tn->span--;
  }
}

/* ---- the puts that fit no ring ------------------------------------------------- */

static xput_t *xfind(const hd_table_t *t, uint64_t node, uint64_t seq) {
  hd_tlink_t **pp = chain_find(&t->xputs, node, seq);
  return pp ? (xput_t *)*pp : NULL;
}

static void xput(hd_table_t *t, const hd_pend_t *p) {
  xput_t *x = hd_obj_alloc(sizeof *x);
  x->link = (hd_tlink_t){NULL, p->node, p->seq};
  x->p = *p;
  chain_add(&t->xputs, &x->link, 1024);
}

/* ---- operations ------------------------------------------------------------ */

static hd_keyop_t *push(hd_keyops_t *l) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    l->v = hd_xrealloc(l->v, l->cap * sizeof *l->v);
  }
  return &l->v[l->n++];
}

/* A node's entry in one of the per-node lists (marks, highest seqs). */
static hd_keyop_t *per_node(hd_keyops_t *l, long *ix, uint64_t node) {
  if (*ix < 0) {
    *ix = (long)l->n;
    *push(l) = (hd_keyop_t){node, 0, 0};
  }
  return &l->v[*ix];
}

void hd_table_put(hd_table_t *t, uint64_t node, uint64_t seq, uint32_t flags,
                  uint32_t delivery_count, hd_msg_t *msg) {
  hd_tnode_t *tn = node_get(t, node, true);
  hd_keyop_t *m = per_node(&t->maxseq, &tn->maxseq_ix, node);
  if (seq > m->seq) m->seq = seq;
  /* Not expected (seqs are not reused), but if it happens the later put wins. */
  slot_t *s = live_at(tn, seq);
  if (s) {
    hd_msg_unref(s->msg);
    *s = (slot_t){hd_msg_ref(msg), flags, delivery_count};
    return;
  }
  xput_t *x = xfind(t, node, seq);
  if (x) {
    hd_msg_unref(x->p.msg);
    x->p = (hd_pend_t){node, seq, flags, delivery_count, hd_msg_ref(msg)};
    return;
  }
  t->count++;
  if ((s = ring_place(tn, seq))) {
    *s = (slot_t){hd_msg_ref(msg), flags, delivery_count};
    tn->live++;
  } else {
    xput(t, &(hd_pend_t){node, seq, flags, delivery_count, hd_msg_ref(msg)});
  }
}

bool hd_table_drop(hd_table_t *t, uint64_t node, uint64_t seq) {
  hd_tnode_t *tn = node_get(t, node, false);
  slot_t *s = live_at(tn, seq);
  if (s) {
    ring_clear_slot(tn, s);
    t->count--;
    return true;
  }
  hd_tlink_t **pp = chain_find(&t->xputs, node, seq);
  if (!pp) return false;
  xput_t *x = (xput_t *)chain_unlink(&t->xputs, pp);
  t->count--;
  hd_msg_unref(x->p.msg);
  hd_obj_free(x, sizeof *x);
  return true;
}

void hd_table_del(hd_table_t *t, hd_table_t *older, uint64_t node, uint64_t seq) {
  if (!hd_table_drop(t, node, seq) && !(older && hd_table_drop(older, node, seq)))
    *push(&t->dels) = (hd_keyop_t){node, seq, 0};
}

bool hd_table_recount(hd_table_t *t, uint64_t node, uint64_t seq, uint32_t delivery_count) {
  slot_t *s = live_at(node_get(t, node, false), seq);
  xput_t *x;
  if (s)
    s->delivery_count = delivery_count;
  else if ((x = xfind(t, node, seq)))
    x->p.delivery_count = delivery_count;
  else
    return false;
  return true;
}

void hd_table_update(hd_table_t *t, hd_table_t *older, uint64_t node, uint64_t seq, uint32_t delivery_count) {
  if (!hd_table_recount(t, node, seq, delivery_count) &&
      !(older && hd_table_recount(older, node, seq, delivery_count)))
    *push(&t->updates) = (hd_keyop_t){node, seq, delivery_count};
}

void hd_table_hwm(hd_table_t *t, uint64_t node, uint64_t seq) {
  hd_tnode_t *tn = node_get(t, node, true);
  hd_keyop_t *k = per_node(&t->hwms, &tn->hwm_ix, node);
  k->seq = seq;
  k->delivery_count = 1; /* set: a mark of 0 is a real value */
}

int hd_table_apply(hd_table_t *t, hd_table_t *older, const hd_slog_op_t *op, hd_msg_t *msg) {
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
  case HD_SLOG_DEL: hd_table_del(t, older, op->node, op->seq); break;
  case HD_SLOG_UPDATE: hd_table_update(t, older, op->node, op->seq, op->delivery_count); break;
  case HD_SLOG_HWM: hd_table_hwm(t, op->node, op->seq); break;
  default: break;
  }
  return 0;
}

int hd_table_empty(const hd_table_t *t) {
  return !t->count && !t->dels.n && !t->updates.n && !t->hwms.n && !t->maxseq.n;
}

static int by_node(const void *a, const void *b) {
  const hd_tnode_t *x = *(hd_tnode_t *const *)a, *y = *(hd_tnode_t *const *)b;
  return x->link.node < y->link.node ? -1 : x->link.node > y->link.node;
}

static int by_key(const void *a, const void *b) {
  const hd_pend_t *x = a, *y = b;
  if (x->node != y->node) return x->node < y->node ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

hd_pend_t *hd_table_sorted(const hd_table_t *t, size_t *n) {
  hd_pend_t *v = hd_xmalloc((t->count ? t->count : 1) * sizeof *v);
  hd_tnode_t **ns = hd_xmalloc((t->nodes.count ? t->nodes.count : 1) * sizeof *ns);
  size_t k = 0, m = 0;
  for (size_t i = 0; i < t->nodes.n; i++)
    for (hd_tlink_t *l = t->nodes.b[i]; l; l = l->next)
      ns[k++] = (hd_tnode_t *)l;
  qsort(ns, k, sizeof *ns, by_node);
  /* Rings are in seq order already; only the hash's puts need a sort. */
  for (size_t i = 0; i < k; i++)
    for (size_t j = 0; j < ns[i]->span; j++) {
      const slot_t *s = &ns[i]->ring[(ns[i]->head + j) & (ns[i]->cap - 1)];
      if (s->msg)
        v[m++] =
            (hd_pend_t){ns[i]->link.node, ns[i]->base + j, s->flags, s->delivery_count, s->msg};
    }
  free(ns);
  if (t->xputs.count) {
    for (size_t i = 0; i < t->xputs.n; i++)
      for (hd_tlink_t *l = t->xputs.b[i]; l; l = l->next)
        v[m++] = ((xput_t *)l)->p;
    qsort(v, m, sizeof *v, by_key);
  }
  *n = m;
  return v;
}

void hd_table_clear(hd_table_t *t) {
  for (size_t i = 0; i < t->nodes.n; i++)
    for (hd_tlink_t *l = t->nodes.b[i], *next; l; l = next) {
      next = l->next;
      hd_tnode_t *tn = (hd_tnode_t *)l;
      for (size_t j = 0; j < tn->span; j++)
        hd_msg_unref(tn->ring[(tn->head + j) & (tn->cap - 1)].msg);
      free(tn->ring);
      free(tn);
    }
  for (size_t i = 0; i < t->xputs.n; i++)
    for (hd_tlink_t *l = t->xputs.b[i], *next; l; l = next) {
      next = l->next;
      hd_msg_unref(((xput_t *)l)->p.msg);
      hd_obj_free(l, sizeof(xput_t));
    }
  free(t->nodes.b);
  free(t->xputs.b);
  free(t->dels.v);
  free(t->updates.v);
  free(t->hwms.v);
  free(t->maxseq.v);
  memset(t, 0, sizeof *t);
}
