/* hello_server: a small HTTP/1.1 server on herd, in C.
 *
 *   hello_server [--mode MODE] [--workers N] [--listen ADDR]
 *
 * MODE is shared (the default), shared/STRATEGY, handoff or reuseport; N defaults to the number
 * of CPUs; ADDR to 127.0.0.1:8080 (port 0: any free port). It prints "listening on ADDR", then
 * answers every request with 200 and "worker <id> pid <pid>". Connections are kept alive (the
 * HTTP/1.1 default) unless the client says "Connection: close"; one idle for IDLE_SECONDS is
 * closed. SIGTERM or SIGINT stops it gracefully (herd's primary takes them): the workers finish
 * their connections, the counters are printed, and it exits 0. Request bodies are not read: a
 * request that announces one gets its answer, then the connection closes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strcasestr */
#endif
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "herd.h"

#define IDLE_SECONDS 5

/* Whether the connection stays open after answering the request whose head is `head`. */
static int keep_alive(const char *head) {
    const char *line_end = strstr(head, "\r\n");
    int http10 = line_end != NULL && line_end - head >= 8 && strncmp(line_end - 8, "HTTP/1.0", 8) == 0;
    if (strcasestr(head, "\r\ncontent-length:") || strcasestr(head, "\r\ntransfer-encoding:")) return 0;
    const char *connection = strcasestr(head, "\r\nconnection:");
    if (connection != NULL) {
        char value[128];
        size_t len = strcspn(connection + 13, "\r");
        snprintf(value, sizeof value, "%.*s", (int)(len < sizeof value ? len : sizeof value - 1), connection + 13);
        if (strcasestr(value, "close")) return 0;
        if (strcasestr(value, "keep-alive")) return 1;
    }
    return !http10;
}

/* Answers the requests on one connection until the client closes it, asks to, or is idle. */
static void serve_connection(int fd, const char *body, int body_len) {
    char buf[8192];
    size_t have = 0;
    for (;;) {
        char *end;
        buf[have] = '\0';
        while ((end = strstr(buf, "\r\n\r\n")) == NULL) {
            if (have == sizeof buf - 1) return; /* a head too large */
            ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
            if (n <= 0) return; /* closed, reset, or idle for IDLE_SECONDS */
            have += (size_t)n;
            buf[have] = '\0';
        }
        end[2] = '\0'; /* the head, with its last line's CRLF */
        int again = keep_alive(buf);
        char response[256];
        int len = snprintf(response, sizeof response,
                           "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s", body_len,
                           again ? "" : "Connection: close\r\n", body);
        if (send(fd, response, (size_t)len, MSG_NOSIGNAL) != len || !again) return;
        size_t used = (size_t)(end + 4 - buf); /* a pipelined request may follow */
        memmove(buf, buf + used, have - used);
        have -= used;
    }
}

/* Each worker: herd's blocking accept, one connection at a time, until herd says stop. */
static int worker_main(herd_worker *worker, void *user_data) {
    (void)user_data;
    char body[64];
    int body_len = snprintf(body, sizeof body, "worker %" PRIu32 " pid %d\n", herd_worker_id(worker), (int)getpid());
    int fd;
    while (herd_worker_accept(worker, &fd) == 1) {
        struct timeval idle = {.tv_sec = IDLE_SECONDS};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &idle, sizeof idle);
        serve_connection(fd, body, body_len);
        close(fd);
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = "shared", *listen = "127.0.0.1:8080";
    long workers = sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 1; i < argc; i += 2) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (value && strcmp(argv[i], "--mode") == 0) mode = value;
        else if (value && strcmp(argv[i], "--listen") == 0) listen = value;
        else if (value && strcmp(argv[i], "--workers") == 0) workers = strtol(value, NULL, 10);
        else {
            fprintf(stderr, "usage: %s [--mode MODE] [--workers N] [--listen ADDR]\n", argv[0]);
            return 2;
        }
    }
    herd_builder *builder = herd_builder_new(listen);
    if (builder == NULL || herd_builder_mode(builder, mode) != 0 ||
        herd_builder_workers(builder, workers > 0 ? (uint32_t)workers : 0) != 0) {
        fprintf(stderr, "hello_server: %s\n", herd_last_error());
        herd_builder_free(builder);
        return 2;
    }
    herd_primary *primary = herd_start(builder, worker_main, NULL); /* consumes the builder */
    if (primary == NULL) {
        fprintf(stderr, "hello_server: %s\n", herd_last_error());
        return 1;
    }
    printf("listening on %s\n", herd_primary_local_addr(primary));
    fflush(stdout);

    /* The primary's loop: every event logged, until a shutdown (SIGTERM) has ended. */
    herd_event event;
    int rc, gave_up = 0;
    while ((rc = herd_primary_next_event(primary, &event, -1)) >= 0) {
        if (rc == 1) {
            fprintf(stderr, "herd: %s\n", event.description);
            gave_up |= event.kind == HERD_EVENT_GAVE_UP;
        } else if (herd_primary_finished(primary)) {
            break;
        }
    }
    if (rc < 0) fprintf(stderr, "hello_server: %s\n", herd_last_error());

    herd_worker_stats s;
    for (uint32_t slot = 0; herd_primary_worker_counters(primary, slot, &s) > 0; slot++)
        printf("worker %" PRIu32 ": accepts %" PRIu64 " handoffs %" PRIu64 " closed %" PRIu64 "\n", slot, s.accepts,
               s.handoffs_received, s.closed);
    herd_primary_free(primary);
    return rc < 0 || gave_up ? 1 : 0;
}
