/* herd_worker_retire: a worker announces its exit; the primary reports HERD_EVENT_RETIRING, forks
 * the replacement into the same slot at once, and counts the exit as expected.
 *
 * 1. Asked by a message, a worker in its own poll loop retires, gets HERD_WORKER_STOP, returns
 *    — while a child process of the program holds copies of all of herd's descriptors, which
 *    must not keep herd_primary_next_event from returning at its timeout.
 * 2. Under load, blocking workers retire after every 50 connections (as a server that recycles
 *    its workers does): not one request fails, every retirement is replaced, nothing counts as
 *    a crash, and the slots' counters (cumulative over their workers) add up. */
#include "common.h"

#define WORKERS 2
#define RECYCLE_AFTER 50
#define CLIENTS 2
#define PER_CLIENT 300

static struct event_log log_;

/* Part 1's worker: its own loop; "retire" makes it retire. It exits 0 once STOP came after
 * that, with every descriptor it took closed. */
static int polling_worker(herd_worker *w, void *user_data) {
    (void)user_data;
    alarm(60);
    int fds_at_start = count_fds();
    int wfd = herd_worker_fd(w), stopped = 0;
    herd_worker_ready(w);
    char body[128];
    worker_body(w, body, sizeof body);
    int64_t deadline = now_ms() + 50000;
    while (!stopped && now_ms() < deadline) {
        wait_fd(wfd, POLLIN, 1000);
        herd_worker_event ev;
        int rc;
        while (!stopped && (rc = herd_worker_next_event(w, &ev, 0)) == 1) {
            if (ev.kind == HERD_WORKER_CONNECTION) {
                serve_once(ev.fd, body);
                close(ev.fd);
            } else if (ev.kind == HERD_WORKER_MESSAGE) {
                for (size_t i = 0; i < ev.nfds; i++) close(ev.fds[i]);
                if (ev.len == 6 && memcmp(ev.data, "retire", 6) == 0) {
                    if (herd_worker_retire(w) != 0) return 1;
                }
            } else if (ev.kind == HERD_WORKER_STOP) {
                stopped = 1;
            }
        }
        if (rc < 0) return 1;
    }
    return stopped && count_fds() <= fds_at_start ? 0 : 1;
}

/* Part 2's worker: blocking accepts; retires after RECYCLE_AFTER connections, then serves what
 * it had already taken until herd_worker_accept says 0. */
static int recycling_worker(herd_worker *w, void *user_data) {
    (void)user_data;
    alarm(60);
    int fds_at_start = count_fds();
    char body[128];
    worker_body(w, body, sizeof body);
    int fd, rc, served = 0;
    while ((rc = herd_worker_accept(w, &fd)) == 1) {
        set_timeouts(fd, 5000);
        serve_once(fd, body);
        close(fd);
        if (++served == RECYCLE_AFTER && herd_worker_retire(w) != 0) return 1;
    }
    return rc == 0 && count_fds() <= fds_at_start ? 0 : 1;
}

static void asked_by_a_message(void) {
    printf("-- retiring when asked\n");
    memset(&log_, 0, sizeof log_);
    int fds_before = count_fds();
    herd_builder *b = herd_builder_new("127.0.0.1:0");
    herd_builder_workers(b, WORKERS);
    herd_builder_shutdown_timeout(b, 5000);
    herd_primary *p = herd_start(b, polling_worker, NULL);
    CHECK(p != NULL, "herd_start");
    if (p == NULL) return;
    CHECK(pump_until_listening(p, &log_, 0, WORKERS, 10000) == 0, "%d workers listening", WORKERS);
    int first = find_event(&log_, 0, HERD_EVENT_LISTENING, -1);
    int32_t pid = log_.e[first].pid, slot = log_.e[first].worker;

    /* A child that keeps every descriptor it inherited (the retiring worker's pidfd and channel
     * among them) until it is killed. */
    fflush(stdout);
    pid_t holder = fork();
    if (holder == 0) {
        alarm(20);
        pause();
        _exit(0);
    }
    int from = log_.n;
    CHECK(herd_primary_send(p, (uint32_t)pid, "retire", 6, NULL, 0) == 0, "asked worker %d (pid %d) to retire", slot,
          pid);
    int64_t deadline = now_ms() + 10000, slowest = 0;
    while (now_ms() < deadline && (find_event(&log_, from, HERD_EVENT_EXIT, pid) < 0 ||
                                   count_events(&log_, from, HERD_EVENT_LISTENING) < 1)) {
        herd_event e;
        int64_t t = now_ms();
        if (herd_primary_next_event(p, &e, 20) == 1) record_event(&log_, &e);
        if (now_ms() - t > slowest) slowest = now_ms() - t;
    }
    for (int i = 0; i < 10; i++) { /* and after the exit, with the holder still alive */
        herd_event e;
        int64_t t = now_ms();
        if (herd_primary_next_event(p, &e, 20) == 1) record_event(&log_, &e);
        if (now_ms() - t > slowest) slowest = now_ms() - t;
    }
    CHECK(slowest < 1000, "herd_primary_next_event(p, &e, 20) took at most %" PRId64 " ms, a child holding herd's "
          "descriptors meanwhile", slowest);
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    int retiring = find_event(&log_, from, HERD_EVENT_RETIRING, pid);
    int fork_ = find_event(&log_, retiring < 0 ? from : retiring, HERD_EVENT_FORK, -1);
    int exit_ = find_event(&log_, from, HERD_EVENT_EXIT, pid);
    CHECK(retiring >= 0 && log_.e[retiring].worker == slot, "HERD_EVENT_RETIRING for pid %d in slot %d", pid, slot);
    CHECK(fork_ > retiring && log_.e[fork_].worker == slot && log_.e[fork_].pid != pid,
          "then the replacement was forked into slot %d (pid %d)", slot, fork_ >= 0 ? log_.e[fork_].pid : -1);
    CHECK(exit_ > retiring && log_.e[exit_].flag == 1 && log_.e[exit_].exit_code == 0,
          "the retired worker got HERD_WORKER_STOP and exited 0, expected");
    int32_t replacement = fork_ >= 0 ? log_.e[fork_].pid : -1;
    CHECK(find_event(&log_, from, HERD_EVENT_LISTENING, replacement) >= 0, "the replacement listens");
    herd_worker_info info[WORKERS + 1];
    int live = herd_primary_workers(p, info, WORKERS + 1), has_new = 0, has_old = 0;
    for (int i = 0; i < live && i <= WORKERS; i++) {
        has_new |= (int32_t)info[i].pid == replacement;
        has_old |= (int32_t)info[i].pid == pid;
    }
    CHECK(live == WORKERS && has_new && !has_old, "herd_primary_workers: %d live, the replacement among them", live);

    struct sockaddr_in addr;
    parse_addr(herd_primary_local_addr(p), &addr);
    char body[256];
    int answered = 0;
    for (int i = 0; i < 20; i++) answered += http_get(&addr, body, sizeof body) > 0;
    CHECK(answered == 20, "20 requests answered after the retirement");

    from = log_.n;
    CHECK(shutdown_and_finish(p, &log_, 10000) == 0, "shut down and finished");
    int crashes = 0;
    for (int i = 0; i < log_.n; i++)
        crashes += log_.e[i].kind == HERD_EVENT_EXIT && (log_.e[i].flag != 1 || log_.e[i].exit_code != 0);
    CHECK(crashes == 0 && count_events(&log_, 0, HERD_EVENT_WARNING) == 0,
          "no crash, no warning: every worker saw STOP and closed what it took");
    herd_primary_free(p);
    CHECK(count_fds() == fds_before, "%d descriptors before, %d after herd_primary_free", fds_before, count_fds());
}

static void recycled_under_load(const char *mode) {
    printf("-- %s: recycling every %d connections under load\n", mode, RECYCLE_AFTER);
    memset(&log_, 0, sizeof log_);
    log_.quiet = 1;
    int fds_before = count_fds();
    herd_builder *b = herd_builder_new("127.0.0.1:0");
    herd_builder_mode(b, mode);
    herd_builder_workers(b, WORKERS);
    herd_builder_shutdown_timeout(b, 5000);
    herd_primary *p = herd_start(b, recycling_worker, NULL);
    CHECK(p != NULL, "%s: herd_start", mode);
    if (p == NULL) return;
    struct sockaddr_in addr;
    parse_addr(herd_primary_local_addr(p), &addr);
    CHECK(pump_until_listening(p, &log_, 0, WORKERS, 10000) == 0, "%s: %d workers listening", mode, WORKERS);

    int results[2];
    if (pipe2(results, O_CLOEXEC) != 0) exit(1);
    pid_t kids[CLIENTS];
    int status[CLIENTS];
    for (int c = 0; c < CLIENTS; c++) kids[c] = spawn_client(&addr, PER_CLIENT, -1, 0, results[1]);
    CHECK(pump_while_children(p, &log_, kids, status, CLIENTS, 30000) == 0, "%s: clients done", mode);
    struct client_result r;
    CHECK(collect_results(results[0], CLIENTS, &r) == 0, "%s: every client reported", mode);
    close(results[0]);
    close(results[1]);
    CHECK(r.ok == CLIENTS * PER_CLIENT && r.failed == 0 && r.bad_body == 0,
          "%s: %u of %d requests answered, not one failed %s", mode, r.ok, CLIENTS * PER_CLIENT, r.first_error);
    /* After the shutdown every exit is in the log, the last retirement's too. */
    CHECK(shutdown_and_finish(p, &log_, 10000) == 0, "%s: shut down and finished", mode);
    /* A worker that retires once the shutdown began is not replaced: count those before it. */
    int shutdown = find_event(&log_, 0, HERD_EVENT_SHUTDOWN, -1), retirements = 0, replaced = shutdown > 0;
    for (int i = 0; i < shutdown; i++) {
        if (log_.e[i].kind != HERD_EVENT_RETIRING) continue;
        retirements++;
        int f = find_event(&log_, i, HERD_EVENT_FORK, -1);
        int x = find_event(&log_, i, HERD_EVENT_EXIT, log_.e[i].pid);
        int ok = f > i && log_.e[f].worker == log_.e[i].worker && x > i && log_.e[x].flag == 1 &&
                 log_.e[x].exit_code == 0;
        if (!ok) {
            printf("   retiring worker %d pid %d (event %d): fork event %d, exit event %d\n", log_.e[i].worker,
                   log_.e[i].pid, i, f, x);
            for (int k = i; k < log_.n; k++)
                printf("     %d: kind %u worker %d pid %d code %d flag %d\n", k, log_.e[k].kind, log_.e[k].worker,
                       log_.e[k].pid, log_.e[k].exit_code, log_.e[k].flag);
        }
        replaced = replaced && ok;
    }
    CHECK(retirements >= CLIENTS * PER_CLIENT / RECYCLE_AFTER - WORKERS - 1 && replaced,
          "%s: %d retirements, each followed by a fork into its slot and an expected exit (code 0)", mode,
          retirements);
    uint64_t taken = 0;
    for (uint32_t s = 0; s < WORKERS; s++) {
        herd_worker_stats ws;
        herd_primary_worker_counters(p, s, &ws);
        taken += ws.accepts + ws.handoffs_received;
    }
    CHECK(taken == CLIENTS * PER_CLIENT, "%s: the slots' counters, over all their workers, add up to %" PRIu64, mode,
          taken);
    CHECK(count_events(&log_, 0, HERD_EVENT_GAVE_UP) == 0, "%s: retirements do not count toward the restart limit",
          mode);
    int crashes = 0;
    for (int i = 0; i < log_.n; i++) crashes += log_.e[i].kind == HERD_EVENT_EXIT && log_.e[i].flag != 1;
    CHECK(crashes == 0 && count_events(&log_, 0, HERD_EVENT_WARNING) == 0, "%s: no crash, no warning", mode);
    CHECK(all_described(&log_), "%s: all %d events had a description", mode, log_.n);
    herd_primary_free(p);
    CHECK(count_fds() == fds_before, "%s: %d descriptors before, %d after herd_primary_free", mode, fds_before,
          count_fds());
}

int main(void) {
    test_start();
    asked_by_a_message();
    recycled_under_load("shared");
    recycled_under_load("handoff");
    return finish();
}
