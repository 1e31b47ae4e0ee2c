/* Clocks for hadron-bench.  Scheduling and durations use CLOCK_MONOTONIC;
 * the stamp a message carries is wall-clock time (nanoseconds since the
 * epoch) so that a receiver in another process, or on another host with
 * synchronised clocks, can compute latency from it. */
#ifndef HB_CLOCK_H
#define HB_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t hb_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t hb_wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
