/* Log-linear histogram: group 0 counts values 0 .. 2^B-1 one by one; group
 * g >= 1 covers [2^(B+g-1), 2^(B+g)) in 2^B buckets of width 2^(g-1). */
#include "config.h"

#include "bench_hist.h"

#include <string.h>

#define SUB (1u << HB_HIST_BITS)

void hb_hist_init(hb_hist_t *h) {
  memset(h, 0, sizeof *h);
  h->min = UINT64_MAX;
}

static unsigned bucket_of(uint64_t v) {
  if (v < SUB) return (unsigned)v;
  unsigned msb = 63u - (unsigned)__builtin_clzll(v);
  unsigned shift = msb - HB_HIST_BITS;
  unsigned group = shift + 1;
  return (group << HB_HIST_BITS) + (unsigned)((v >> shift) - SUB);
}

/* The largest value that falls in bucket i. */
static uint64_t bucket_top(unsigned i) {
  unsigned group = i >> HB_HIST_BITS, sub = i & (SUB - 1);
  if (group == 0) return sub;
  unsigned shift = group - 1;
  return (((uint64_t)SUB + sub) << shift) + ((1ull << shift) - 1);
}

void hb_hist_record(hb_hist_t *h, uint64_t v) {
  const uint64_t cap = (1ull << HB_HIST_MAX_LOG2) - 1;
  if (v > cap) v = cap;
  h->bucket[bucket_of(v)]++;
  h->count++;
  h->sum += (double)v;
  if (v < h->min) h->min = v;
  if (v > h->max) h->max = v;
}

void hb_hist_merge(hb_hist_t *into, const hb_hist_t *from) {
  if (!from->count) return;
  for (unsigned i = 0; i < HB_HIST_BUCKETS; i++)
    into->bucket[i] += from->bucket[i];
  into->count += from->count;
  into->sum += from->sum;
  if (from->min < into->min) into->min = from->min;
  if (from->max > into->max) into->max = from->max;
}

uint64_t hb_hist_percentile(const hb_hist_t *h, double pct) {
  if (!h->count) return 0;
  if (pct >= 100.0) return h->max;
  /* Rank of the wanted value, 1-based, rounded up: p50 of 3 values is the 2nd. */
  double want = pct / 100.0 * (double)h->count;
  uint64_t rank = (uint64_t)want;
  if ((double)rank < want) rank++;
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < HB_HIST_BUCKETS; i++) {
    seen += h->bucket[i];
    if (seen >= rank) {
      uint64_t top = bucket_top(i);
      if (top > h->max) top = h->max;
      if (top < h->min) top = h->min;
      return top;
    }
  }
  return h->max;
}
