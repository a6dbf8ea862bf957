/* What the c-tests programs share: the CHECK macro, descriptor counts, a tiny HTTP client and
 * server side, client processes, and a loop that turns the primary while they run.
 *
 * Header-only (every function `static inline`, so a program that uses only some of them
 * still compiles under -Wall -Wextra -Werror); run.sh compiles only the *.c files as programs.
 *
 * Conventions of every program: one "ok: ..." line per check, "ok: all checks passed" at the
 * end, exit 0 only if every check held; "SKIPPED: why" and exit 0 when it cannot run here. */
#ifndef HERD_CTESTS_COMMON_H
#define HERD_CTESTS_COMMON_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "herd.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            printf("ok: " __VA_ARGS__);                                                            \
            printf("\n");                                                                          \
        } else {                                                                                   \
            printf("FAILED (%s:%d): ", __FILE__, __LINE__);                                        \
            printf(__VA_ARGS__);                                                                   \
            printf(" [last error: %s]\n", herd_last_error());                                      \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* Ends the program: the summary line, and the exit status. */
static inline int finish(void) {
    if (failures == 0) printf("ok: all checks passed\n");
    else printf("FAILED: %d checks\n", failures);
    fflush(stdout);
    return failures == 0 ? 0 : 1;
}

/* Every program's start: line-buffered stdout (a fork never copies half a line), and a
 * safety net for every loop. */
static inline void test_start(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(60);
}

static inline int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The number of this process's open descriptors (not counting the one that lists them). */
static inline int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') n++;
    }
    closedir(d);
    return n - 1;
}

/* Lists the open descriptors and what they are, to stderr (when a count is off). */
static inline void print_fds(const char *who) {
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char target[256];
        ssize_t n = readlinkat(dirfd(d), e->d_name, target, sizeof target - 1);
        target[n < 0 ? 0 : n] = '\0';
        fprintf(stderr, "%s: fd %s -> %s\n", who, e->d_name, target);
    }
    closedir(d);
}

/* "127.0.0.1:PORT" (what herd_primary_local_addr gives for a TCP listener) into `out`. */
static inline int parse_addr(const char *text, struct sockaddr_in *out) {
    char host[64];
    const char *colon = text == NULL ? NULL : strrchr(text, ':');
    if (colon == NULL || (size_t)(colon - text) >= sizeof host) return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}

static inline void set_timeouts(int fd, int ms) {
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Waits up to `ms` for `fd` to be ready for `events`: 1, 0 on timeout, -1 on error. */
static inline int wait_fd(int fd, short events, int ms) {
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        int n = poll(&pfd, 1, ms);
        if (n < 0 && errno == EINTR) continue;
        return n < 0 ? -1 : n > 0;
    }
}

/* Writes all of `len` bytes to a socket, blocking or not (MSG_NOSIGNAL: a peer that hung up is
 * an error, not SIGPIPE). 0, or -1. */
static inline int send_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            if (wait_fd(fd, POLLOUT, 5000) != 1) return -1;
            continue;
        }
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One request on a new connection: "GET / HTTP/1.1" with "Connection: close", the whole
 * response read to the server's close. The body goes to `body` (NUL-terminated); returns its
 * length, or -1 (a failed connect, a timeout, a reset, a status other than 200). */
static inline int http_get(const struct sockaddr_in *addr, char *body, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    set_timeouts(fd, 5000);
    char buf[1024];
    size_t got = 0;
    static const char request[] = "GET / HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n";
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0 ||
        send_all(fd, request, sizeof request - 1) != 0) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            close(fd);
            return -1;
        }
        if (n == 0 || (got += (size_t)n) == sizeof buf - 1) break;
    }
    close(fd);
    buf[got] = '\0';
    const char *head_end = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0 || head_end == NULL) return -1;
    size_t len = strlen(head_end + 4);
    if (len >= cap) return -1;
    memcpy(body, head_end + 4, len + 1);
    return (int)len;
}

/* The worker side of http_get: reads one request head from `fd` (blocking or not, 5 s at
 * most), answers 200 with `body` and "Connection: close". The caller closes `fd`. 0, or -1. */
static inline int serve_once(int fd, const char *body) {
    char buf[2048];
    size_t got = 0;
    int64_t deadline = now_ms() + 5000;
    for (;;) {
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            int64_t left = deadline - now_ms();
            if (left <= 0 || wait_fd(fd, POLLIN, (int)left) != 1) return -1;
            continue;
        }
        if (n <= 0) return -1;
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n") != NULL) break;
        if (got == sizeof buf - 1) return -1;
    }
    char response[512];
    int len = snprintf(response, sizeof response,
                       "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                       strlen(body), body);
    return send_all(fd, response, (size_t)len);
}

/* The body every test worker answers with. */
static inline void worker_body(herd_worker *w, char *out, size_t cap) {
    snprintf(out, cap, "worker %" PRIu32 " gen %" PRIu64 " pid %d\n", herd_worker_id(w),
             herd_worker_generation(w), (int)getpid());
}

/* ---- Client processes ------------------------------------------------------------------- */

#define MAX_SLOTS 16

/* What one client process saw, written whole to a pipe (under PIPE_BUF: one atomic write). */
struct client_result {
    uint32_t ok, failed, bad_body;
    uint32_t per_slot[MAX_SLOTS];
    int32_t pid_of[MAX_SLOTS];  /* the last pid seen answering for each slot */
    uint32_t pid_changes;       /* answers from a pid other than the slot's last one */
    uint32_t per_gen[4];
    uint32_t after_stop, after_stop_gen[4]; /* requests made after the stop byte arrived */
    char first_error[96];
};

/* Records one response body ("worker ID gen G pid PID\n") in `r`. */
static inline void record_body(struct client_result *r, const char *body, int after_stop) {
    unsigned id, pid;
    unsigned long long gen;
    if (sscanf(body, "worker %u gen %llu pid %u", &id, &gen, &pid) != 3 || id >= MAX_SLOTS) {
        r->bad_body++;
        if (r->first_error[0] == '\0') snprintf(r->first_error, sizeof r->first_error, "body %.60s", body);
        return;
    }
    r->ok++;
    r->per_slot[id]++;
    if (r->pid_of[id] != 0 && r->pid_of[id] != (int32_t)pid) r->pid_changes++;
    r->pid_of[id] = (int32_t)pid;
    if (gen < 4) r->per_gen[gen]++;
    if (after_stop) {
        r->after_stop++;
        if (gen < 4) r->after_stop_gen[gen]++;
    }
}

/* In a client process: `n` requests one after the other (n == 0: until a byte arrives on
 * `stop_fd`, then `after` more), the result written to `result_fd`. Never returns. */
static inline void client_main(const struct sockaddr_in *addr, uint32_t n, int stop_fd, uint32_t after,
                               int result_fd) {
    alarm(60);
    struct client_result r;
    memset(&r, 0, sizeof r);
    int stopping = 0;
    uint32_t left = after;
    int64_t deadline = now_ms() + 30000;
    for (uint32_t i = 0; i < 100000 && now_ms() < deadline; i++) {
        if (n > 0 && i == n) break;
        if (n == 0 && !stopping && wait_fd(stop_fd, POLLIN, 0) == 1) stopping = 1;
        if (stopping && left-- == 0) break;
        char body[256];
        if (http_get(addr, body, sizeof body) < 0) {
            r.failed++;
            if (r.first_error[0] == '\0')
                snprintf(r.first_error, sizeof r.first_error, "request %u: %s", i, strerror(errno));
            continue;
        }
        record_body(&r, body, stopping);
    }
    ssize_t w = write(result_fd, &r, sizeof r);
    _exit(w == (ssize_t)sizeof r ? 0 : 3);
}

/* In a process forked from the primary: closes every descriptor but 0, 1, 2, `keep_a` and
 * `keep_b`. Such a child holds copies of all of herd's descriptors otherwise (its workers'
 * pidfds and channels, the listener) and keeps them open for as long as it lives. */
static inline void close_inherited(int keep_a, int keep_b) {
    int fds[1024], n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 1024) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd > 2 && fd != dirfd(d) && fd != keep_a && fd != keep_b) fds[n++] = fd;
    }
    closedir(d);
    for (int i = 0; i < n; i++) close(fds[i]);
}

/* Forks a client process running client_main; its pid, or -1. */
static inline pid_t spawn_client(const struct sockaddr_in *addr, uint32_t n, int stop_fd, uint32_t after,
                                 int result_fd) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close_inherited(stop_fd, result_fd);
        client_main(addr, n, stop_fd, after, result_fd);
    }
    return pid;
}

/* Adds up the results of `count` clients from `fd`. 0 if every one arrived whole. */
static inline int collect_results(int fd, int count, struct client_result *sum) {
    memset(sum, 0, sizeof *sum);
    for (int c = 0; c < count; c++) {
        struct client_result r;
        if (wait_fd(fd, POLLIN, 1000) != 1 || read(fd, &r, sizeof r) != (ssize_t)sizeof r) return -1;
        sum->ok += r.ok;
        sum->failed += r.failed;
        sum->bad_body += r.bad_body;
        sum->pid_changes += r.pid_changes;
        sum->after_stop += r.after_stop;
        for (int i = 0; i < MAX_SLOTS; i++) {
            sum->per_slot[i] += r.per_slot[i];
            if (r.pid_of[i] != 0) {
                if (sum->pid_of[i] != 0 && sum->pid_of[i] != r.pid_of[i]) sum->pid_changes++;
                sum->pid_of[i] = r.pid_of[i];
            }
        }
        for (int g = 0; g < 4; g++) {
            sum->per_gen[g] += r.per_gen[g];
            sum->after_stop_gen[g] += r.after_stop_gen[g];
        }
        if (sum->first_error[0] == '\0') memcpy(sum->first_error, r.first_error, sizeof r.first_error);
    }
    return 0;
}

/* ---- The primary's loop ----------------------------------------------------------------- */

/* One event as recorded: what the checks look at afterwards (the pointers do not outlive the
 * next call, so text is copied). */
struct recorded {
    uint32_t kind;
    int32_t worker, pid, exit_code, signal, flag;
    uint64_t generation;
    int described; /* `description` was a non-empty string */
    char text[160];
};

#define MAX_EVENTS 1024

struct event_log {
    struct recorded e[MAX_EVENTS];
    int n;
    int quiet; /* do not print every event */
};

/* Records `e` (a copy) and prints its description. */
static inline void record_event(struct event_log *log, const herd_event *e) {
    if (!log->quiet || e->kind == HERD_EVENT_WARNING)
        printf("   event: %s\n", e->description ? e->description : "(null)");
    if (log->n == MAX_EVENTS) return;
    struct recorded *r = &log->e[log->n++];
    r->kind = e->kind;
    r->worker = e->worker;
    r->pid = e->pid;
    r->exit_code = e->exit_code;
    r->signal = e->signal;
    r->flag = e->flag;
    r->generation = e->generation;
    r->described = e->description != NULL && e->description[0] != '\0';
    snprintf(r->text, sizeof r->text, "%s", e->text ? e->text : "");
}

/* Turns the primary (events into `log`) until every pid in `kids` has exited (each reaped and
 * its status, if `status` is not NULL, stored), at most `ms`. Returns 0; -1 on a timeout (the
 * children are then killed and reaped) or if the primary failed. */
static inline int pump_while_children(herd_primary *p, struct event_log *log, pid_t *kids, int *status,
                                      int count, int ms) {
    int64_t deadline = now_ms() + ms;
    int running = count;
    int rc = 0;
    while (running > 0) {
        if (now_ms() > deadline) {
            rc = -1;
            break;
        }
        herd_event e;
        int got = herd_primary_next_event(p, &e, 20);
        if (got < 0) {
            rc = -1;
            break;
        }
        if (got == 1) record_event(log, &e);
        for (int i = 0; i < count; i++) {
            int st;
            if (kids[i] > 0 && waitpid(kids[i], &st, WNOHANG) == kids[i]) {
                if (status) status[i] = st;
                kids[i] = -kids[i];
                running--;
            }
        }
    }
    for (int i = 0; i < count; i++) {
        if (kids[i] > 0) {
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
            kids[i] = -kids[i];
        }
    }
    return rc;
}

/* Turns the primary until an event of `kind` comes (1, recorded), `ms` pass (0), or the primary
 * fails or finishes (-1). */
static inline int pump_until(herd_primary *p, struct event_log *log, uint32_t kind, int ms) {
    int64_t deadline = now_ms() + ms;
    while (now_ms() < deadline) {
        herd_event e;
        int got = herd_primary_next_event(p, &e, 20);
        if (got < 0) return -1;
        if (got == 0) {
            if (herd_primary_finished(p)) return -1;
            continue;
        }
        record_event(log, &e);
        if (e.kind == kind) return 1;
    }
    return 0;
}

/* Turns the primary until `n` workers have said LISTENING since the log's entry `from`. */
static inline int pump_until_listening(herd_primary *p, struct event_log *log, int from, int n, int ms) {
    int64_t deadline = now_ms() + ms;
    for (;;) {
        int listening = 0;
        for (int i = from; i < log->n; i++) listening += log->e[i].kind == HERD_EVENT_LISTENING;
        if (listening >= n) return 0;
        if (now_ms() > deadline) return -1;
        herd_event e;
        int got = herd_primary_next_event(p, &e, 20);
        if (got < 0) return -1;
        if (got == 1) record_event(log, &e);
    }
}

/* A graceful shutdown, turned to its end: the events after it go to `log`. 0 once
 * herd_primary_finished says 1 and next_event says 0; -1 if that did not happen within `ms`. */
static inline int shutdown_and_finish(herd_primary *p, struct event_log *log, int ms) {
    if (herd_primary_shutdown(p, 1) != 0) return -1;
    int64_t deadline = now_ms() + ms;
    while (now_ms() < deadline) {
        herd_event e;
        int got = herd_primary_next_event(p, &e, 50);
        if (got < 0) return -1;
        if (got == 1) {
            record_event(log, &e);
            continue;
        }
        if (herd_primary_finished(p)) return herd_primary_next_event(p, &e, 0) == 0 ? 0 : -1;
    }
    return -1;
}

/* The index of the first event of `kind` for `pid` in the log from `from`, or -1. */
static inline int find_event(const struct event_log *log, int from, uint32_t kind, int32_t pid) {
    for (int i = from; i < log->n; i++)
        if (log->e[i].kind == kind && (pid < 0 || log->e[i].pid == pid)) return i;
    return -1;
}

static inline int count_events(const struct event_log *log, int from, uint32_t kind) {
    int n = 0;
    for (int i = from; i < log->n; i++) n += log->e[i].kind == kind;
    return n;
}

/* Every event of the log had a non-empty description. */
static inline int all_described(const struct event_log *log) {
    for (int i = 0; i < log->n; i++)
        if (!log->e[i].described) return 0;
    return 1;
}

#endif
