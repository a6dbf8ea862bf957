/* A worker that is a C program of its own, for `herd run -- exec_worker`: it takes what herd
 * passed with herd_worker_from_env() — the listener at descriptor 3 in shared and reuseport
 * modes, the lane in handoff mode — and answers each connection's one request with
 * `worker <id> pid <pid> c`, until the primary says stop. exec_worker.sh drives it.
 *
 * Started by anything but herd, it says why it cannot run and exits 1. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "herd.h"

/* Reads until the end of the request head (or end of file, or 8 KiB): one request per
 * connection, `Connection: close`. */
static int read_head(int fd) {
    char buf[8192];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n")) return 0;
    }
    return -1;
}

static void write_all(int fd, const char *p, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        p += n;
        len -= (size_t)n;
    }
}

int main(void) {
    herd_worker *worker = herd_worker_from_env();
    if (!worker) {
        fprintf(stderr, "exec_worker: %s\n", herd_last_error());
        return 1;
    }
    char body[64], response[256];
    int body_len = snprintf(body, sizeof body, "worker %u pid %d c\n", herd_worker_id(worker), (int)getpid());
    int len = snprintf(response, sizeof response,
                       "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", body_len, body);
    int fd, r;
    while ((r = herd_worker_accept(worker, &fd)) == 1) {
        if (read_head(fd) == 0) write_all(fd, response, (size_t)len);
        close(fd);
    }
    if (r < 0) fprintf(stderr, "exec_worker: %s\n", herd_last_error());
    herd_worker_free(worker);
    return r < 0 ? 1 : 0;
}
