/* hadron-store: look at a broker's store without the broker. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "store.h"

static void print_line(const char *line, void *arg) {
  (void)arg;
  puts(line);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: hadron-store [-d DATA-DIR] info|check\n"
          "\n"
          "  info    the store's format version, size, and each queue's message count\n"
          "  check   read every record and check counts; exit 1 if anything is wrong\n"
          "\n"
          "  -d, --data-dir DIR   the broker's data-dir (default ./data)\n"
          "  -h, --help           this help\n"
          "  -V, --version        the version\n"
          "\n"
          "The store is opened read-only; it can be inspected while hadrond runs.\n");
}

int main(int argc, char **argv) {
  static const struct option opts[] = {{"data-dir", required_argument, NULL, 'd'},
                                       {"help", no_argument, NULL, 'h'},
                                       {"version", no_argument, NULL, 'V'},
                                       {NULL, 0, NULL, 0}};
  const char *dir = "./data";
  for (int c; (c = getopt_long(argc, argv, "d:hV", opts, NULL)) != -1;) {
    switch (c) {
    case 'd': dir = optarg; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("hadron-store %s (store format %d)\n", PACKAGE_VERSION, HD_STORE_FORMAT); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    usage(stderr);
    return 2;
  }
  char err[1024];
  const char *cmd = argv[optind];
  /* Its whole job is reading a store that may be damaged. */
  hd_store_guard_install("hadron-store", dir, false);
  hd_store_guard_enter("reading it; nothing was changed");
  if (strcmp(cmd, "info") == 0) {
    if (hd_store_info(dir, print_line, NULL, err, sizeof err) != 0) {
      fprintf(stderr, "hadron-store: %s\n", err);
      return 1;
    }
    return 0;
  }
  if (strcmp(cmd, "check") == 0) {
    long problems = hd_store_check(dir, print_line, NULL, err, sizeof err);
    if (problems < 0) {
      fprintf(stderr, "hadron-store: %s\n", err);
      return 1;
    }
    return problems ? 1 : 0;
  }
  fprintf(stderr, "hadron-store: unknown command '%s'\n", cmd);
  usage(stderr);
  return 2;
}
