/* A log-linear latency histogram of fixed size (in the manner of
 * HdrHistogram): values below 2^HB_HIST_BITS nanoseconds are counted
 * exactly, larger ones in buckets whose width is at most 1/2^HB_HIST_BITS
 * of their value, so every percentile is within 0.4 % of the truth.
 * Recording is a shift and an increment; there is no allocation after
 * hb_hist_init.  A histogram belongs to one thread; merge them at the end. */
#ifndef HB_HIST_H
#define HB_HIST_H

#include <stdint.h>

#define HB_HIST_BITS 8
/* Values are clamped to 2^HB_HIST_MAX_LOG2 ns (about 4.9 hours). */
#define HB_HIST_MAX_LOG2 44
#define HB_HIST_BUCKETS  ((HB_HIST_MAX_LOG2 - HB_HIST_BITS + 1) << HB_HIST_BITS)

typedef struct hb_hist {
  uint64_t count, min, max;
  double sum; /* for the mean; a double cannot overflow on long runs */
  uint64_t bucket[HB_HIST_BUCKETS];
} hb_hist_t;

void hb_hist_init(hb_hist_t *h);
void hb_hist_record(hb_hist_t *h, uint64_t value);
/* Adds every count of `from` to `into`. */
void hb_hist_merge(hb_hist_t *into, const hb_hist_t *from);
/* The smallest recorded value v such that `pct` percent of the values are
 * <= v (reported as the bucket's highest value, never above max); 0 when
 * the histogram is empty. */
uint64_t hb_hist_percentile(const hb_hist_t *h, double pct);

#endif
