/* The outcome of a run and its two renderings: text for people, one JSON
 * object for scripts. */
#ifndef HB_REPORT_H
#define HB_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "bench_hist.h"
#include "bench_opts.h"
#include "bench_run.h"

#define HB_MAX_ERRORS 8

struct hb_result {
  uint64_t sent, accepted, rejected, released, unsettled, received, foreign;
  double duration_s, send_rate, recv_rate;
  hb_hist_t hist; /* latency in ns */
  char errors[HB_MAX_ERRORS][HB_ERROR_MAX];
  unsigned nerrors, dropped_errors;
};

/* Adds an error unless the same text is already there (N connections
 * refused for one reason make one line). */
void hb_result_error(hb_result_t *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void hb_report_text(FILE *f, const hb_opts_t *o, const hb_result_t *res);
void hb_report_json(FILE *f, const hb_opts_t *o, const hb_result_t *res);

#endif
