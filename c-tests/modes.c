/* Every mode serves 2000 connections from C clients: each response names a live worker, the
 * per-worker counters add up to the connections, the events come in their order (fork, online,
 * listening; after a graceful shutdown, disconnect and an expected exit), and no descriptor is
 * left open, in the primary or in a worker. */
#include "common.h"

#define WORKERS 3
#define CLIENTS 4
#define PER_CLIENT 500
#define CONNECTIONS (CLIENTS * PER_CLIENT)

static struct event_log log_;

/* Worker: blocking accepts, one response each. Its descriptors are counted at its start, after
 * each connection it closed (the same number where it accepts them one at a time on epoll; in
 * handoff mode and on io_uring herd may hold connections received in a batch and not yet
 * returned, so not there), and at its end (no
 * more: herd closes its listener when it stops); it exits 1, which the primary sees, if it
 * leaked one. `user_data` points to an int: whether the count after each connection is exact. */
static int worker_main(herd_worker *w, void *user_data) {
    int exact = *(const int *)user_data;
    alarm(60);
    int fds_at_start = count_fds();
    char body[128];
    worker_body(w, body, sizeof body);
    int fd, rc, off = 0;
    while ((rc = herd_worker_accept(w, &fd)) == 1) {
        set_timeouts(fd, 5000);
        serve_once(fd, body);
        close(fd);
        int now = count_fds();
        if (exact && now != fds_at_start && off++ == 0)
            fprintf(stderr, "worker %u: %d descriptors after a connection, %d at its start\n", herd_worker_id(w),
                    now, fds_at_start);
    }
    if (rc < 0) {
        fprintf(stderr, "worker %u: herd_worker_accept: %s\n", herd_worker_id(w), herd_last_error());
        return 1;
    }
    int fds_at_end = count_fds();
    if (off > 0 || fds_at_end > fds_at_start) {
        fprintf(stderr, "worker %u: %d descriptors at its start, %d at its end\n", herd_worker_id(w),
                fds_at_start, fds_at_end);
        print_fds("worker");
        return 1;
    }
    return 0;
}

static void run_mode(const char *mode, const char *backend) {
    char name[64];
    snprintf(name, sizeof name, "%s%s%s", mode, backend ? " on " : "", backend ? backend : "");
    printf("-- %s\n", name);
    memset(&log_, 0, sizeof log_);
    log_.quiet = 1;
    sigset_t mask_before, mask_after;
    sigprocmask(SIG_SETMASK, NULL, &mask_before);
    int fds_before = count_fds();

    herd_builder *b = herd_builder_new("127.0.0.1:0");
    CHECK(b != NULL, "%s: herd_builder_new", name);
    if (b == NULL) return;
    CHECK(herd_builder_mode(b, mode) == 0, "%s: herd_builder_mode", name);
    if (backend) CHECK(herd_builder_backend(b, backend) == 0, "%s: herd_builder_backend", name);
    herd_builder_workers(b, WORKERS);
    herd_builder_shutdown_timeout(b, 5000);
    /* Read by the workers (their copy of it): where connections come in batches (handoff, and
     * io_uring's multishot accept), herd holds some a moment before it returns them. */
    int exact = strcmp(mode, "handoff") != 0 && backend == NULL;
    herd_primary *p = herd_start(b, worker_main, &exact);
    CHECK(p != NULL, "%s: herd_start", name);
    if (p == NULL) return;
    const char *running = herd_primary_backend(p);
    if (backend && strcmp(running, backend) != 0) {
        printf("SKIPPED: %s: the backend that runs is %s (a warning says why)\n", name, running);
        herd_primary_free(p);
        return;
    }
    CHECK(strcmp(running, backend ? backend : "epoll") == 0, "%s: herd_primary_backend is %s", name, running);
    const char *local = herd_primary_local_addr(p);
    struct sockaddr_in addr;
    CHECK(local != NULL && parse_addr(local, &addr) == 0 && addr.sin_port != 0, "%s: listening on %s", name,
          local ? local : "(null)");

    /* Fork, online, listening, for every worker. */
    CHECK(pump_until_listening(p, &log_, 0, WORKERS, 10000) == 0, "%s: %d workers listening", name, WORKERS);
    int32_t pid_of[WORKERS] = {0};
    int in_order = 1;
    for (int i = 0; i < log_.n; i++) {
        if (log_.e[i].kind != HERD_EVENT_FORK) continue;
        int32_t pid = log_.e[i].pid;
        int online = find_event(&log_, i, HERD_EVENT_ONLINE, pid);
        int listening = find_event(&log_, i, HERD_EVENT_LISTENING, pid);
        if (online < 0 || listening < online || log_.e[i].worker < 0 || log_.e[i].worker >= WORKERS ||
            log_.e[online].worker != log_.e[i].worker || log_.e[listening].worker != log_.e[i].worker)
            in_order = 0;
        else
            pid_of[log_.e[i].worker] = pid;
    }
    CHECK(count_events(&log_, 0, HERD_EVENT_FORK) == WORKERS && in_order,
          "%s: each worker: fork, then online, then listening, in its slot", name);

    herd_worker_info info[WORKERS + 1];
    int live = herd_primary_workers(p, info, WORKERS + 1);
    int info_ok = live == WORKERS;
    for (int i = 0; info_ok && i < live; i++)
        info_ok = info[i].worker < WORKERS && (int32_t)info[i].pid == pid_of[info[i].worker] &&
                  info[i].generation == 0 && info[i].connected == 1 && info[i].listening == 1 &&
                  info[i].exiting == 0;
    CHECK(info_ok, "%s: herd_primary_workers lists %d live workers, connected and listening", name, live);

    /* The clients, in processes of their own; the primary turns meanwhile. */
    int results[2];
    if (pipe2(results, O_CLOEXEC) != 0) {
        perror("pipe2");
        exit(1);
    }
    pid_t kids[CLIENTS];
    int status[CLIENTS];
    int64_t started = now_ms();
    for (int c = 0; c < CLIENTS; c++) kids[c] = spawn_client(&addr, PER_CLIENT, -1, 0, results[1]);
    int pumped = pump_while_children(p, &log_, kids, status, CLIENTS, 30000);
    int64_t took = now_ms() - started;
    int clean = pumped == 0;
    for (int c = 0; c < CLIENTS; c++) clean = clean && WIFEXITED(status[c]) && WEXITSTATUS(status[c]) == 0;
    CHECK(clean, "%s: %d client processes done in %" PRId64 " ms", name, CLIENTS, took);
    struct client_result r;
    CHECK(collect_results(results[0], CLIENTS, &r) == 0, "%s: every client reported", name);
    close(results[0]);
    close(results[1]);
    CHECK(r.ok == CONNECTIONS && r.failed == 0 && r.bad_body == 0,
          "%s: %u of %d requests answered \"worker <id> ...\" (%u failed, %u bad bodies) %s", name, r.ok,
          CONNECTIONS, r.failed, r.bad_body, r.first_error);
    int pids_match = r.pid_changes == 0;
    for (int s = 0; s < WORKERS; s++) pids_match = pids_match && (r.per_slot[s] == 0 || r.pid_of[s] == pid_of[s]);
    CHECK(pids_match, "%s: every answer came from the pid the events gave its slot", name);

    /* The per-worker counters add up to the connections, and match the answers per slot. */
    uint64_t accepts = 0, handoffs = 0, closed = 0;
    int per_slot_ok = 1;
    for (uint32_t s = 0; s < WORKERS; s++) {
        herd_worker_stats ws;
        int slots = herd_primary_worker_counters(p, s, &ws);
        if (slots != WORKERS) per_slot_ok = 0;
        accepts += ws.accepts;
        handoffs += ws.handoffs_received;
        closed += ws.closed;
        if (ws.accepts + ws.handoffs_received != r.per_slot[s]) per_slot_ok = 0;
        printf("   worker %u: %u answers, accepts %" PRIu64 ", handoffs %" PRIu64 ", closed %" PRIu64
               ", wakeups %" PRIu64 "\n",
               s, r.per_slot[s], ws.accepts, ws.handoffs_received, ws.closed, ws.wakeups);
    }
    int handoff = strcmp(mode, "handoff") == 0;
    CHECK(accepts + handoffs == CONNECTIONS && closed == CONNECTIONS && (handoff ? accepts == 0 : handoffs == 0),
          "%s: the workers' counters add up: %" PRIu64 " accepts + %" PRIu64 " handoffs, %" PRIu64 " closed", name,
          accepts, handoffs, closed);
    CHECK(per_slot_ok, "%s: each slot's counters equal the answers it gave", name);
    herd_worker_stats none;
    CHECK(herd_primary_worker_counters(p, WORKERS, &none) == -EINVAL, "%s: a slot beyond the last is -EINVAL",
          name);
    herd_primary_stats ps;
    CHECK(herd_primary_counters(p, &ps) == 0 &&
              (handoff ? ps.accepted == CONNECTIONS && ps.dispatched == CONNECTIONS : ps.accepted == 0),
          "%s: the primary's counters: accepted %" PRIu64 ", dispatched %" PRIu64, name, ps.accepted,
          ps.dispatched);

    /* A graceful shutdown: disconnect, then an expected exit with code 0, for every worker. */
    int from = log_.n;
    CHECK(shutdown_and_finish(p, &log_, 10000) == 0,
          "%s: after herd_primary_shutdown(p, 1), herd_primary_finished is 1 and next_event 0", name);
    int shutdown = find_event(&log_, from, HERD_EVENT_SHUTDOWN, -1);
    CHECK(shutdown >= 0 && log_.e[shutdown].flag == 1 && log_.e[shutdown].signal == 0,
          "%s: a SHUTDOWN event, graceful, asked from code", name);
    int exits_ok = count_events(&log_, from, HERD_EVENT_EXIT) == WORKERS;
    for (int s = 0; s < WORKERS; s++) {
        int disconnect = find_event(&log_, from, HERD_EVENT_DISCONNECT, pid_of[s]);
        int exit_ = find_event(&log_, from, HERD_EVENT_EXIT, pid_of[s]);
        exits_ok = exits_ok && disconnect >= 0 && exit_ > disconnect && log_.e[exit_].flag == 1 &&
                   log_.e[exit_].exit_code == 0 && log_.e[exit_].signal == 0;
    }
    CHECK(exits_ok, "%s: every worker: disconnect, then exit with code 0 (no descriptor left open) and flag (expected) 1", name);
    CHECK(all_described(&log_), "%s: all %d events had a description", name, log_.n);
    CHECK(count_events(&log_, 0, HERD_EVENT_WARNING) == 0, "%s: no warning", name);
    CHECK(herd_primary_workers(p, NULL, 0) == 0, "%s: no live worker left", name);

    herd_primary_free(p);
    int fds_after = count_fds();
    if (fds_after != fds_before) print_fds("primary");
    CHECK(fds_after == fds_before, "%s: %d descriptors before herd_builder_new, %d after herd_primary_free", name,
          fds_before, fds_after);
    sigprocmask(SIG_SETMASK, NULL, &mask_after);
    int same_mask = 1;
    for (int s = 1; s < 32; s++) same_mask = same_mask && sigismember(&mask_before, s) == sigismember(&mask_after, s);
    CHECK(same_mask, "%s: the signal mask is back as it was", name);
}

int main(void) {
    test_start();
    run_mode("shared", NULL);
    run_mode("shared/epoll-exclusive", NULL);
    run_mode("handoff", NULL);
    run_mode("reuseport", NULL);
    /* io_uring where it runs here (herd_primary_backend says so; else SKIPPED lines). */
    run_mode("handoff", "io-uring");
    run_mode("shared", "io-uring");
    run_mode("reuseport", "io-uring");
    return finish();
}
