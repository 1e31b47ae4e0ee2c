/* hadrond: command line, configuration, start-up checks. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfg.h"
#include "log.h"
#include "modload.h"
#include "server.h"
#include "settings.h"
#include "users.h"
#include "util.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: hadrond [-c FILE] [--check-config]\n"
          "       hadrond --hash-password USER   (reads the password from standard input)\n"
          "       hadrond --print-default-config | --version | --help\n"
          "\n"
          "Hadron AMQP 1.0 broker.  Runs in the foreground and logs to standard error.\n"
          "Without -c it runs its embedded default: AMQP on 127.0.0.1:5672, anonymous\n"
          "access, data in ./data.  SIGTERM drains and stops; SIGHUP reloads.\n"
          "\n"
          "  -c, --config FILE     configuration file (see hadron.conf(5))\n"
          "  -t, --check-config    check the configuration and modules, then exit\n"
          "      --hash-password U print a users-file line for user U\n"
          "      --print-default-config\n"
          "                        print the embedded default configuration\n"
          "  -V, --version         print the version\n"
          "  -h, --help            print this help\n");
}

static int hash_password(const char *user) {
  char pass[1100];
  if (isatty(STDIN_FILENO)) fprintf(stderr, "password for %s: ", user);
  if (!fgets(pass, sizeof pass, stdin)) {
    fprintf(stderr, "hadrond: no password on standard input\n");
    return 1;
  }
  pass[strcspn(pass, "\r\n")] = '\0';
  if (!*pass) {
    fprintf(stderr, "hadrond: empty password refused\n");
    return 1;
  }
  char out[256];
  if (hd_users_hash(pass, strlen(pass), 100000, out, sizeof out) != 0) {
    fprintf(stderr, "hadrond: hashing failed\n");
    return 1;
  }
  printf("%s:%s\n", user, out);
  return 0;
}

/* Two brokers on one data directory would corrupt it: hold a lock. */
static int lock_data_dir(const char *dir, char *err, size_t errlen) {
  if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
    snprintf(err, errlen, "data-dir %s: cannot create: %s", dir, strerror(errno));
    return -errno;
  }
  /* Its name must survive a power cut, or a restart would find no store
   * at all and start empty.  Flushed at every start: a run that died
   * between mkdir and the flush leaves a directory that exists, unflushed. */
  int rc = hd_sync_parent_dir(dir);
  /* A parent we may write to but not read (mode 0311) cannot be opened to
   * be flushed; that is the administrator's layout, not a disk error. */
  if (rc != 0 && rc != -EACCES && rc != -EPERM) {
    snprintf(err, errlen, "data-dir %s: cannot flush the directory that holds it: %s", dir,
             strerror(-rc));
    return rc;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/hadrond.lock", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    snprintf(err, errlen, "data-dir %s: cannot write: %s", dir, strerror(errno));
    return -errno;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = "";
    ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
    pid[n > 0 ? n : 0] = '\0';
    pid[strcspn(pid, "\n")] = '\0';
    snprintf(err, errlen, "data-dir %s is in use by another hadrond (pid %s); give each broker its own data-dir",
             dir, *pid ? pid : "?");
    close(fd);
    return HD_EEXIST;
  }
  char pid[32];
  int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
    snprintf(err, errlen, "data-dir %s: cannot write the lock file", dir);
    close(fd);
    return -EIO;
  }
  return fd; /* kept open (and locked) until exit */
}

/* Messages are allocated and freed at a high rate, often on different
 * threads.  glibc would hand freed heap tops back to the kernel and fault
 * them in again (zeroed) moments later; keep them instead. */
static void tune_malloc(void) {
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
}

static void raise_fd_limit(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},  {"check-config", no_argument, NULL, 't'},
      {"hash-password", required_argument, NULL, 'P'}, {"print-default-config", no_argument, NULL, 'D'},
      {"version", no_argument, NULL, 'V'},        {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *path = NULL;
  bool check = false;
  for (int c; (c = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1;) {
    switch (c) {
    case 'c': path = optarg; break;
    case 't': check = true; break;
    case 'P': return hash_password(optarg);
    case 'D': fputs(hd_default_config, stdout); return 0;
    case 'V': printf("hadrond %s\n", PACKAGE_VERSION); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "hadrond: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return 2;
  }

  char err[2048];
  hd_config_t *cfg = NULL;
  hd_settings_t *st = NULL;
  int rc = path ? hd_cfg_parse_file(path, &cfg, err, sizeof err)
                : hd_cfg_parse_string(hd_default_config, "<embedded default>", &cfg, err, sizeof err);
  if (!rc) rc = hd_settings_build(cfg, &st, err, sizeof err);
  if (rc) {
    fprintf(stderr, "hadrond: %s\n", err);
    return 1;
  }
  hd_log_set_level(st->log_level);
  hd_log_use_syslog(st->log_syslog && !check);
  if (st->users_file) {
    hd_users_t *u = NULL;
    if ((rc = hd_users_load(st->users_file, &u, err, sizeof err)) != 0) {
      fprintf(stderr, "hadrond: %s\n", err);
      hd_settings_free(st);
      return 1;
    }
    hd_users_install(u);
  }
  if ((rc = hd_modules_load(st->cfg, st->module_dir, err, sizeof err)) != 0) {
    fprintf(stderr, "hadrond: %s\n", err);
    hd_modules_unload();
    hd_users_shutdown();
    hd_settings_free(st);
    return 1;
  }
  if (check) {
    int nl = 0;
    for (const hd_listener_conf_t *l = st->listeners; l; l = l->next) nl++;
    printf("%s: configuration ok (%d listeners, %zu modules)\n", path ? path : "<embedded default>", nl,
           hd_modules_count());
    hd_modules_unload();
    hd_users_shutdown();
    hd_settings_free(st);
    return 0;
  }
  int lock = lock_data_dir(st->data_dir, err, sizeof err);
  if (lock < 0) {
    fprintf(stderr, "hadrond: %s\n", err);
    hd_modules_unload();
    hd_users_shutdown();
    hd_settings_free(st);
    return 1;
  }
  raise_fd_limit();
  tune_malloc();
  rc = hd_server_run(st, path);
  close(lock);
  return rc;
}
