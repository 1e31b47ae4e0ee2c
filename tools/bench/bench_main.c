/* hadron-bench: an AMQP 1.0 load generator.  See hadron-bench(1). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "bench_opts.h"
#include "bench_report.h"
#include "bench_run.h"

int main(int argc, char **argv) {
  hb_opts_t o;
  int rc = hb_opts_parse(argc, argv, &o);
  if (rc == HB_OPTS_DONE) return 0;
  if (rc) return rc;

  /* The result holds a histogram (some 75 KiB): keep it off the stack. */
  hb_result_t *res = calloc(1, sizeof *res);
  if (!res) {
    fprintf(stderr, "hadron-bench: out of memory\n");
    return 1;
  }
  rc = hb_run(&o, res);
  if (o.json)
    hb_report_json(stdout, &o, res);
  else
    hb_report_text(stdout, &o, res);
  fflush(stdout);
  /* Errors go to stderr as well, so that a script reading stdout's JSON
   * still shows a person why it failed. */
  for (unsigned i = 0; i < res->nerrors; i++)
    fprintf(stderr, "hadron-bench: error: %s\n", res->errors[i]);
  free(res);
  return rc;
}
