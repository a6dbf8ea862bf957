/* Rolling reloads under load lose no request, in every mode: client processes make requests
 * one after the other while the primary reloads twice (herd_primary_reload), waiting each time
 * for HERD_EVENT_RELOAD_FINISHED; not one fails, every old worker exits as expected, and
 * afterwards only the last generation answers (herd_worker_generation). */
#include "common.h"

#define WORKERS 2
#define CLIENTS 2
#define AFTER 100 /* requests each client makes once the reloads are over */
#define RELOADS 2

static struct event_log log_;

static int worker_main(herd_worker *w, void *user_data) {
    (void)user_data;
    alarm(60);
    int fds_at_start = count_fds();
    char body[128];
    worker_body(w, body, sizeof body);
    int fd, rc;
    while ((rc = herd_worker_accept(w, &fd)) == 1) {
        set_timeouts(fd, 5000);
        serve_once(fd, body);
        close(fd);
    }
    return rc == 0 && count_fds() <= fds_at_start ? 0 : 1;
}

static void run_mode(const char *mode) {
    printf("-- %s\n", mode);
    memset(&log_, 0, sizeof log_);
    log_.quiet = 1;
    int fds_before = count_fds();
    herd_builder *b = herd_builder_new("127.0.0.1:0");
    CHECK(b != NULL && herd_builder_mode(b, mode) == 0, "%s: builder", mode);
    herd_builder_workers(b, WORKERS);
    herd_builder_shutdown_timeout(b, 5000);
    herd_primary *p = herd_start(b, worker_main, NULL);
    CHECK(p != NULL, "%s: herd_start", mode);
    if (p == NULL) return;
    struct sockaddr_in addr;
    parse_addr(herd_primary_local_addr(p), &addr);
    CHECK(pump_until_listening(p, &log_, 0, WORKERS, 10000) == 0, "%s: %d workers listening", mode, WORKERS);
    int32_t old[WORKERS];
    for (int i = 0, k = 0; i < log_.n && k < WORKERS; i++)
        if (log_.e[i].kind == HERD_EVENT_LISTENING) old[k++] = log_.e[i].pid;

    int stop[2], results[2];
    if (pipe2(stop, O_CLOEXEC) != 0 || pipe2(results, O_CLOEXEC) != 0) {
        perror("pipe2");
        exit(1);
    }
    pid_t kids[CLIENTS];
    int status[CLIENTS];
    for (int c = 0; c < CLIENTS; c++) kids[c] = spawn_client(&addr, 0, stop[0], AFTER, results[1]);
    pump_until(p, &log_, 0, 300); /* the load runs a while on generation 0 */

    for (uint64_t gen = 1; gen <= RELOADS; gen++) {
        int from = log_.n;
        CHECK(herd_primary_reload(p) == 0, "%s: herd_primary_reload under load", mode);
        CHECK(pump_until(p, &log_, HERD_EVENT_RELOAD_FINISHED, 15000) == 1, "%s: HERD_EVENT_RELOAD_FINISHED came",
              mode);
        int started = find_event(&log_, from, HERD_EVENT_RELOAD_STARTED, -1);
        int finished = find_event(&log_, from, HERD_EVENT_RELOAD_FINISHED, -1);
        CHECK(started >= 0 && started < finished && log_.e[started].generation == gen &&
                  log_.e[finished].generation == gen && find_event(&log_, from, HERD_EVENT_RELOAD_FAILED, -1) < 0,
              "%s: RELOAD_STARTED then RELOAD_FINISHED, generation %" PRIu64, mode, gen);
        /* The old workers drain and exit: expected, with code 0. */
        int64_t deadline = now_ms() + 10000;
        while (now_ms() < deadline && (find_event(&log_, from, HERD_EVENT_EXIT, old[0]) < 0 ||
                                       find_event(&log_, from, HERD_EVENT_EXIT, old[1]) < 0))
            pump_until(p, &log_, HERD_EVENT_EXIT, 100);
        int exits_ok = 1;
        for (int k = 0; k < WORKERS; k++) {
            int e = find_event(&log_, from, HERD_EVENT_EXIT, old[k]);
            exits_ok = exits_ok && e >= 0 && log_.e[e].flag == 1 && log_.e[e].exit_code == 0;
        }
        CHECK(exits_ok, "%s: each worker of generation %" PRIu64 " exited with code 0, expected", mode, gen - 1);
        /* The new generation's pids, for the next round. */
        herd_worker_info info[2 * WORKERS];
        int live = herd_primary_workers(p, info, 2 * WORKERS);
        int new_ok = live == WORKERS;
        for (int i = 0; new_ok && i < live; i++) {
            new_ok = info[i].generation == gen && info[i].listening == 1 && (int32_t)info[i].pid != old[0] &&
                     (int32_t)info[i].pid != old[1];
            old[i] = (int32_t)info[i].pid;
        }
        CHECK(new_ok, "%s: herd_primary_workers: %d live, all of generation %" PRIu64, mode, live, gen);
        pump_until(p, &log_, 0, 200); /* the load runs a while on the new generation */
    }

    /* The clients go on a little, then stop. */
    CHECK(write(stop[1], "s", 1) == 1, "%s: clients told to finish", mode);
    CHECK(pump_while_children(p, &log_, kids, status, CLIENTS, 30000) == 0, "%s: clients done", mode);
    struct client_result r;
    CHECK(collect_results(results[0], CLIENTS, &r) == 0, "%s: every client reported", mode);
    close(stop[0]);
    close(stop[1]);
    close(results[0]);
    close(results[1]);
    printf("   %u requests: %u to generation 0, %u to 1, %u to 2\n", r.ok, r.per_gen[0], r.per_gen[1], r.per_gen[2]);
    CHECK(r.failed == 0 && r.bad_body == 0, "%s: not one of %u requests failed across the reloads %s", mode,
          r.ok + r.failed, r.first_error);
    CHECK(r.per_gen[0] > 0 && r.per_gen[1] > 0 && r.per_gen[2] > 0, "%s: every generation answered", mode);
    CHECK(r.after_stop == CLIENTS * AFTER && r.after_stop_gen[RELOADS] == r.after_stop,
          "%s: after the reloads, the last generation answered all %u requests", mode, r.after_stop);

    int from = log_.n;
    CHECK(shutdown_and_finish(p, &log_, 10000) == 0, "%s: shut down and finished", mode);
    CHECK(count_events(&log_, from, HERD_EVENT_EXIT) == WORKERS, "%s: the new workers exited", mode);
    int crashes = 0;
    for (int i = 0; i < log_.n; i++)
        crashes += log_.e[i].kind == HERD_EVENT_EXIT && (log_.e[i].flag != 1 || log_.e[i].exit_code != 0);
    CHECK(crashes == 0 && count_events(&log_, 0, HERD_EVENT_WARNING) == 0,
          "%s: no crash, no warning (every worker's descriptors all closed at its end)", mode);
    CHECK(all_described(&log_), "%s: all %d events had a description", mode, log_.n);
    herd_primary_free(p);
    int fds_after = count_fds();
    if (fds_after != fds_before) print_fds("primary");
    CHECK(fds_after == fds_before, "%s: %d descriptors before, %d after herd_primary_free", mode, fds_before,
          fds_after);
}

int main(void) {
    test_start();
    run_mode("shared");
    run_mode("handoff");
    run_mode("reuseport");
    return finish();
}
