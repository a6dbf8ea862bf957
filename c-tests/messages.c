/* Messages both ways between the primary and a worker, with descriptors passed each way, in
 * the two ways a worker takes its work: blocking (herd_worker_accept, then
 * herd_worker_take_message for what arrived meanwhile) and from its own poll(2) loop on
 * herd_worker_fd (herd_worker_next_event with no wait). No descriptor is left open on either
 * side. */
#include "common.h"

enum style { BLOCKING, POLL_LOOP };
static const char *style_name[] = {"blocking", "poll loop"};

#define MAX_MESSAGE 65528

/* ---- The worker ------------------------------------------------------------------------- */

/* What the worker saw go wrong (its exit status says whether anything did; "report" tells). */
struct worker_state {
    int fds_at_start;
    int fd_count_off;  /* times the count after a connection or a message was not the start's */
    int bad_blocking;  /* a connection's descriptor not in the documented mode */
    int failed_calls;
    int handled;       /* messages handled */
};

static void check_fds(struct worker_state *st) {
    if (count_fds() != st->fds_at_start) st->fd_count_off++;
}

static void close_fds(const int *fds, size_t nfds) {
    for (size_t i = 0; i < nfds; i++) close(fds[i]);
}

/* Reads `fd` to its end (10 s at most) into `out`; 0, or -1. */
static int read_to_end(int fd, char *out, size_t cap) {
    size_t got = 0;
    int64_t deadline = now_ms() + 10000;
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0 || wait_fd(fd, POLLIN, (int)left) != 1) return -1;
        ssize_t n = read(fd, out + got, cap - 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) break;
        got += (size_t)n;
        if (got == cap - 1) break;
    }
    out[got] = '\0';
    return 0;
}

/* A message from the primary:
 *   "write" + a descriptor: writes "written by worker ID" into it;
 *   "give": sends "given" + the write end of a new pipe, reads what the primary writes into it,
 *           and sends "got " + that;
 *   "report": sends "report" + what went wrong so far;
 *   anything else: sent back as it came. */
static void handle_message(herd_worker *w, const herd_worker_event *ev, struct worker_state *st) {
    st->handled++;
    if (ev->len == 5 && memcmp(ev->data, "write", 5) == 0 && ev->nfds == 1) {
        char text[64];
        int n = snprintf(text, sizeof text, "written by worker %u", herd_worker_id(w));
        if (write(ev->fds[0], text, (size_t)n) != n) st->failed_calls++;
        close_fds(ev->fds, ev->nfds);
    } else if (ev->len == 4 && memcmp(ev->data, "give", 4) == 0) {
        close_fds(ev->fds, ev->nfds);
        int p[2];
        char text[128] = "got ";
        if (pipe2(p, O_CLOEXEC) != 0) {
            st->failed_calls++;
            return;
        }
        if (herd_worker_send(w, "given", 5, &p[1], 1) != 0) st->failed_calls++;
        close(p[1]); /* the primary has its own copy now */
        if (read_to_end(p[0], text + 4, sizeof text - 4) != 0) st->failed_calls++;
        close(p[0]);
        if (herd_worker_send(w, text, strlen(text), NULL, 0) != 0) st->failed_calls++;
    } else if (ev->len == 6 && memcmp(ev->data, "report", 6) == 0) {
        close_fds(ev->fds, ev->nfds);
        char text[160];
        snprintf(text, sizeof text, "report fd_count_off=%d bad_blocking=%d failed_calls=%d handled=%d",
                 st->fd_count_off, st->bad_blocking, st->failed_calls, st->handled);
        if (herd_worker_send(w, text, strlen(text), NULL, 0) != 0) st->failed_calls++;
    } else {
        /* The event's bytes stay valid through this call: herd reads them before anything else. */
        if (herd_worker_send(w, ev->data, ev->len, NULL, 0) != 0) st->failed_calls++;
        close_fds(ev->fds, ev->nfds);
    }
    check_fds(st);
}

/* Serves one connection; counts the descriptors after it unless messages may still be queued
 * (herd holds those that came with them until they are taken). */
static void serve_connection(herd_worker *w, int fd, int want_nonblocking, int count, struct worker_state *st) {
    int nonblocking = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
    if (nonblocking != want_nonblocking) st->bad_blocking++;
    char body[128];
    worker_body(w, body, sizeof body);
    serve_once(fd, body);
    close(fd);
    if (count) check_fds(st);
}

/* Blocking: a connection at a time; after each, the messages that arrived meanwhile. */
static int blocking_worker(herd_worker *w, struct worker_state *st) {
    int fd, rc;
    while ((rc = herd_worker_accept(w, &fd)) == 1) {
        set_timeouts(fd, 5000);
        serve_connection(w, fd, 0, 0, st);
        herd_worker_event ev;
        int got;
        while ((got = herd_worker_take_message(w, &ev)) == 1) {
            if (ev.kind != HERD_WORKER_MESSAGE) st->failed_calls++;
            handle_message(w, &ev, st);
        }
        if (got < 0) st->failed_calls++;
        check_fds(st);
    }
    return rc;
}

/* Its own loop: poll(2) on herd_worker_fd, then every event herd has, without waiting. */
static int poll_loop_worker(herd_worker *w, struct worker_state *st) {
    int wfd = herd_worker_fd(w);
    if (wfd < 0) return -1;
    herd_worker_ready(w);
    int64_t deadline = now_ms() + 50000;
    for (int stop = 0; !stop;) {
        if (now_ms() > deadline) return -1;
        if (wait_fd(wfd, POLLIN, 1000) < 0) return -1;
        herd_worker_event ev;
        int rc;
        while (!stop && (rc = herd_worker_next_event(w, &ev, 0)) == 1) {
            if (ev.kind == HERD_WORKER_CONNECTION) serve_connection(w, ev.fd, 1, 1, st);
            else if (ev.kind == HERD_WORKER_MESSAGE) handle_message(w, &ev, st);
            else if (ev.kind == HERD_WORKER_STOP) stop = 1;
        }
        if (rc < 0) return rc;
    }
    return 0;
}

static int worker_main(herd_worker *w, void *user_data) {
    alarm(60);
    struct worker_state st = {.fds_at_start = count_fds()};
    int rc = *(const enum style *)user_data == BLOCKING ? blocking_worker(w, &st) : poll_loop_worker(w, &st);
    int fds_at_end = count_fds();
    if (rc < 0 || st.fd_count_off || st.bad_blocking || st.failed_calls || fds_at_end > st.fds_at_start) {
        fprintf(stderr, "worker: rc %d, %d fd counts off, %d bad modes, %d failed calls, fds %d then %d (%s)\n", rc,
                st.fd_count_off, st.bad_blocking, st.failed_calls, st.fds_at_start, fds_at_end, herd_last_error());
        print_fds("worker");
        return 1;
    }
    return 0;
}

/* ---- The primary ------------------------------------------------------------------------ */

static struct event_log log_;
static struct sockaddr_in addr;

/* A message the primary received: its bytes copied, its descriptors now ours. */
struct message {
    int32_t pid;
    char data[MAX_MESSAGE + 1];
    size_t len;
    int fds[8];
    size_t nfds;
};
static struct message msg;

/* A blocking worker sees its messages after a connection: one request gets it there. */
static void nudge(enum style style) {
    char body[256];
    if (style == BLOCKING) http_get(&addr, body, sizeof body);
}

/* Turns the primary until a message starting with `prefix` comes (0, in `msg`), at most `ms`;
 * a blocking worker is sent a request now and then. Other messages are an error (-1). */
static int await_message(herd_primary *p, enum style style, const char *prefix, int ms) {
    int64_t deadline = now_ms() + ms, next_nudge = 0;
    while (now_ms() < deadline) {
        if (now_ms() >= next_nudge) {
            nudge(style);
            next_nudge = now_ms() + 200;
        }
        herd_event e;
        int got = herd_primary_next_event(p, &e, 20);
        if (got < 0) return -1;
        if (got == 0) continue;
        if (e.kind != HERD_EVENT_MESSAGE) {
            record_event(&log_, &e);
            continue;
        }
        msg.pid = e.pid;
        msg.len = e.len < MAX_MESSAGE ? e.len : MAX_MESSAGE;
        memcpy(msg.data, e.data, msg.len);
        msg.data[msg.len] = '\0';
        msg.nfds = e.nfds < 8 ? e.nfds : 8;
        if (msg.nfds > 0) memcpy(msg.fds, e.fds, msg.nfds * sizeof(int));
        for (size_t i = msg.nfds; i < e.nfds; i++) close(e.fds[i]);
        if (strncmp(msg.data, prefix, strlen(prefix)) == 0) return 0;
        printf("   unexpected message: %.80s\n", msg.data);
        close_fds(msg.fds, msg.nfds);
        return -1;
    }
    return -1;
}

static void run(enum style style) {
    const char *name = style_name[style];
    printf("-- %s worker\n", name);
    memset(&log_, 0, sizeof log_);
    int fds_before = count_fds();
    herd_builder *b = herd_builder_new("127.0.0.1:0");
    herd_builder_mode(b, "shared");
    herd_builder_workers(b, 1);
    herd_builder_shutdown_timeout(b, 5000);
    herd_primary *p = herd_start(b, worker_main, &style);
    CHECK(p != NULL, "%s: herd_start", name);
    if (p == NULL) return;
    parse_addr(herd_primary_local_addr(p), &addr);
    CHECK(pump_until_listening(p, &log_, 0, 1, 10000) == 0, "%s: the worker listens", name);
    int32_t pid = log_.e[find_event(&log_, 0, HERD_EVENT_LISTENING, -1)].pid;

    /* Bytes, to one worker and to all. */
    CHECK(herd_primary_send(p, (uint32_t)pid, "hello", 5, NULL, 0) == 0, "%s: herd_primary_send", name);
    CHECK(await_message(p, style, "hello", 5000) == 0 && msg.pid == pid && msg.len == 5 && msg.nfds == 0,
          "%s: the worker sent \"hello\" back (herd_worker_send): a MESSAGE event from its pid", name);
    CHECK(herd_primary_broadcast(p, "to all", 6) == 1, "%s: herd_primary_broadcast reached 1 worker", name);
    CHECK(await_message(p, style, "to all", 5000) == 0 && msg.len == 6, "%s: the broadcast came back", name);

    /* The largest message both ways; one byte more is refused. */
    static char big[MAX_MESSAGE + 1];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 26);
    CHECK(herd_primary_send(p, (uint32_t)pid, big, MAX_MESSAGE, NULL, 0) == 0, "%s: a %d-byte message is sent",
          name, MAX_MESSAGE);
    CHECK(await_message(p, style, "abc", 5000) == 0 && msg.len == MAX_MESSAGE && memcmp(msg.data, big, MAX_MESSAGE) == 0,
          "%s: and comes back whole", name);
    errno = 0;
    CHECK(herd_primary_send(p, (uint32_t)pid, big, MAX_MESSAGE + 1, NULL, 0) == -EINVAL && errno == EINVAL,
          "%s: %d bytes is -EINVAL: %s", name, MAX_MESSAGE + 1, herd_last_error());

    /* A descriptor to the worker: the write end of a pipe, which it writes into. */
    int to_worker[2];
    pipe2(to_worker, O_CLOEXEC);
    CHECK(herd_primary_send(p, (uint32_t)pid, "write", 5, &to_worker[1], 1) == 0,
          "%s: herd_primary_send with the write end of a pipe", name);
    close(to_worker[1]); /* the worker has its own copy */
    char written[128] = "";
    size_t got = 0;
    int64_t deadline = now_ms() + 5000, next_nudge = 0;
    for (int eof = 0; !eof && now_ms() < deadline;) {
        if (now_ms() >= next_nudge) {
            nudge(style);
            next_nudge = now_ms() + 200;
        }
        herd_event e;
        if (herd_primary_next_event(p, &e, 20) == 1) record_event(&log_, &e);
        while (wait_fd(to_worker[0], POLLIN, 0) == 1) {
            ssize_t n = read(to_worker[0], written + got, sizeof written - 1 - got);
            if (n <= 0) {
                eof = 1;
                break;
            }
            got += (size_t)n;
        }
    }
    written[got] = '\0';
    close(to_worker[0]);
    CHECK(strcmp(written, "written by worker 0") == 0, "%s: the worker wrote into it: \"%s\", and closed it", name,
          written);

    /* A descriptor from the worker: the write end of its pipe; what we write, it reads. */
    CHECK(herd_primary_send(p, (uint32_t)pid, "give", 4, NULL, 0) == 0, "%s: asked the worker for a pipe", name);
    int given = await_message(p, style, "given", 5000) == 0 && msg.nfds == 1 && msg.fds[0] >= 0;
    CHECK(given, "%s: a MESSAGE with one descriptor (nfds %zu)", name, msg.nfds);
    if (given) {
        static const char text[] = "through the primary";
        CHECK(write(msg.fds[0], text, sizeof text - 1) == (ssize_t)(sizeof text - 1), "%s: wrote into it", name);
        close_fds(msg.fds, msg.nfds);
        CHECK(await_message(p, style, "got", 5000) == 0 && strcmp(msg.data, "got through the primary") == 0,
              "%s: the worker read it: \"%s\"", name, msg.data);
    }

    /* What the worker saw: every descriptor count right, connections in the documented mode. */
    herd_primary_send(p, (uint32_t)pid, "report", 6, NULL, 0);
    CHECK(await_message(p, style, "report", 5000) == 0 &&
              strstr(msg.data, "fd_count_off=0 bad_blocking=0 failed_calls=0") != NULL,
          "%s: the worker's own checks: %s", name, msg.data);

    int from = log_.n;
    CHECK(shutdown_and_finish(p, &log_, 10000) == 0, "%s: shut down", name);
    int exit_ = find_event(&log_, from, HERD_EVENT_EXIT, pid);
    CHECK(exit_ >= 0 && log_.e[exit_].exit_code == 0 && log_.e[exit_].flag == 1,
          "%s: the worker exited 0 (no descriptor left open at its end), expected", name);
    CHECK(count_events(&log_, 0, HERD_EVENT_WARNING) == 0, "%s: no warning", name);
    herd_primary_free(p);
    int fds_after = count_fds();
    if (fds_after != fds_before) print_fds("primary");
    CHECK(fds_after == fds_before, "%s: %d descriptors before herd_builder_new, %d after herd_primary_free", name,
          fds_before, fds_after);
}

int main(void) {
    test_start();
    run(BLOCKING);
    run(POLL_LOOP);
    return finish();
}
