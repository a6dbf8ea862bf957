/* Bad input gets a negative errno (or NULL and errno) and a message naming the call and the
 * cause, kept per thread; a failed herd_start leaves nothing behind; a running primary refuses
 * pids that are not its workers'; a worker callback that fails is a crash the primary reports
 * and replaces. */
#include <pthread.h>

#include "common.h"

static int never_runs(herd_worker *worker, void *user_data) {
    (void)worker;
    (void)user_data;
    return 0;
}

/* A worker that fails once: the first to find a byte in the pipe returns 7; the others serve. */
static int fails_once(herd_worker *w, void *user_data) {
    alarm(60);
    char byte;
    if (read(*(const int *)user_data, &byte, 1) == 1) return 7;
    int fd;
    while (herd_worker_accept(w, &fd) == 1) close(fd);
    return 0;
}

/* A second thread: blocks until the pipe it reads is written to. */
static void *blocked(void *fd) {
    char byte;
    return read(*(const int *)fd, &byte, 1) == 1 ? NULL : fd;
}

/* Another thread's failure: its message is its own. */
static void *fails_in_a_thread(void *out) {
    herd_builder_new("elsewhere");
    snprintf(out, 256, "%s", herd_last_error());
    return NULL;
}

static int signal_mask_is(const sigset_t *want) {
    sigset_t now;
    sigprocmask(SIG_SETMASK, NULL, &now);
    for (int s = 1; s < 32; s++)
        if (sigismember(&now, s) != sigismember(want, s)) return 0;
    return 1;
}

static void builder_errors(void) {
    herd_builder *b = herd_builder_new("127.0.0.1:0");
    CHECK(herd_builder_backend(b, "carrier-pigeon") == -EINVAL && errno == EINVAL,
          "an unknown backend is -EINVAL: %s", herd_last_error());
    CHECK(herd_builder_workers(b, 1025) == -EINVAL, "1025 workers is -EINVAL: %s", herd_last_error());
    CHECK(herd_builder_window(b, 0) == -EINVAL, "a handoff window of 0 is -EINVAL");
    CHECK(herd_builder_heartbeat(b, 1000, 10) == -EINVAL, "a heartbeat timeout under its interval is -EINVAL: %s",
          herd_last_error());
    CHECK(herd_builder_mode(b, NULL) == -EINVAL, "a NULL mode is -EINVAL: %s", herd_last_error());
    CHECK(herd_builder_mode(NULL, "shared") == -EINVAL, "a NULL builder is -EINVAL");
    CHECK(herd_builder_backend(b, "epoll") == 0 && herd_builder_workers(b, 1024) == 0 && herd_builder_window(b, 1) == 0 &&
              herd_builder_heartbeat(b, 0, 0) == 0 && herd_builder_backlog(b, 16) == 0 &&
              herd_builder_shutdown_timeout(b, 1) == 0 && herd_builder_restart_limit(b, 3, 1000) == 0 &&
              herd_builder_reload_timeout(b, 1000) == 0 && herd_builder_handle_signals(b, 0) == 0 &&
              herd_builder_defer_accept(b, 1) == 0,
          "every setting in range is 0");
    herd_builder_free(b);
    herd_builder_free(NULL);

    b = herd_builder_new("127.0.0.1:0");
    CHECK(herd_start(b, NULL, NULL) == NULL && errno == EINVAL,
          "a NULL worker callback: herd_start is NULL with EINVAL (the builder consumed): %s", herd_last_error());

    /* herd_last_error is the calling thread's. */
    herd_builder_new("here");
    char theirs[256] = "";
    pthread_t t;
    pthread_create(&t, NULL, fails_in_a_thread, theirs);
    pthread_join(t, NULL);
    CHECK(strstr(herd_last_error(), "\"here\"") != NULL && strstr(theirs, "\"elsewhere\"") != NULL,
          "herd_last_error is per thread: \"%s\" here, \"%s\" in the other", herd_last_error(), theirs);

    /* herd_start in a process with a second thread: refused, and nothing left behind. */
    int fds_before = count_fds();
    sigset_t mask_before;
    sigprocmask(SIG_SETMASK, NULL, &mask_before);
    int release[2];
    pipe2(release, O_CLOEXEC);
    pthread_create(&t, NULL, blocked, &release[0]);
    b = herd_builder_new("127.0.0.1:0");
    herd_builder_workers(b, 1);
    herd_primary *p = herd_start(b, fails_once, NULL);
    CHECK(p == NULL && errno == ENOTSUP, "herd_start with two threads is NULL with ENOTSUP: %s", herd_last_error());
    herd_primary_free(p);
    CHECK(write(release[1], "x", 1) == 1 && pthread_join(t, NULL) == 0, "the other thread ended");
    close(release[0]);
    close(release[1]);
    CHECK(count_fds() == fds_before && signal_mask_is(&mask_before),
          "the failed herd_start left no descriptor open (%d, %d before) and the signal mask as it was", count_fds(),
          fds_before);

    /* NULL handles. */
    int fd = 0;
    CHECK(herd_primary_fd(NULL) == -1 && herd_primary_finished(NULL) == 1 && herd_primary_local_addr(NULL) == NULL &&
              herd_primary_backend(NULL) == NULL && herd_primary_shutdown(NULL, 1) == -EINVAL &&
              herd_worker_accept(NULL, &fd) == -EINVAL && herd_worker_fd(NULL) == -1,
          "a NULL handle is -EINVAL, -1, 1 (finished) or NULL, as each function says");
    herd_primary_free(NULL);
}

/* A pid that is no worker: a child of ours that has exited and been reaped. */
static pid_t a_dead_pid(void) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, NULL, 0);
    return pid;
}

static void running_errors(void) {
    static struct event_log log;
    int fds_before = count_fds();
    int once[2];
    pipe2(once, O_CLOEXEC | O_NONBLOCK);
    CHECK(write(once[1], "x", 1) == 1, "one worker will fail");
    herd_builder *b = herd_builder_new("127.0.0.1:0");
    herd_builder_workers(b, 1);
    herd_builder_handle_signals(b, 0);
    herd_primary *p = herd_start(b, fails_once, &once[0]);
    CHECK(p != NULL, "herd_start");
    if (p == NULL) return;

    /* The first worker returns 7: a warning names it, its exit is a crash, and it is replaced. */
    CHECK(pump_until_listening(p, &log, 0, 1, 10000) == 0, "a worker listens");
    int warning = find_event(&log, 0, HERD_EVENT_WARNING, -1);
    int crash = find_event(&log, 0, HERD_EVENT_EXIT, -1);
    CHECK(warning >= 0 && strstr(log.e[warning].text, "returned 7") != NULL, "a HERD_EVENT_WARNING: %s",
          warning >= 0 ? log.e[warning].text : "(none)");
    CHECK(crash >= 0 && log.e[crash].exit_code == 1 && log.e[crash].flag == 0 && log.e[crash].signal == 0,
          "the failed worker's exit: code 1, flag 0 (a crash)");
    int listening = find_event(&log, 0, HERD_EVENT_LISTENING, -1);
    CHECK(count_events(&log, 0, HERD_EVENT_FORK) == 2 && crash < listening && log.e[listening].worker == 0,
          "its replacement was forked into slot 0 and listens");
    uint32_t pid = (uint32_t)log.e[listening].pid;

    pid_t dead = a_dead_pid();
    errno = 0;
    CHECK(herd_primary_send(p, (uint32_t)dead, "x", 1, NULL, 0) == -ESRCH && errno == ESRCH,
          "herd_primary_send to a pid that is no worker is -ESRCH: %s", herd_last_error());
    CHECK(strstr(herd_last_error(), "herd_primary_send") != NULL, "the message names the call");
    CHECK(herd_primary_disconnect(p, (uint32_t)dead) == -ESRCH, "herd_primary_disconnect too: %s", herd_last_error());
    CHECK(herd_primary_kill(p, (uint32_t)dead, SIGCONT) == -ESRCH, "herd_primary_kill too: %s", herd_last_error());
    CHECK(herd_primary_send(p, pid, NULL, 1, NULL, 0) == -EINVAL, "a message of 1 byte at NULL is -EINVAL: %s",
          herd_last_error());
    int bad = -1;
    CHECK(herd_primary_send(p, pid, "x", 1, NULL, 1) == -EINVAL && herd_primary_send(p, pid, "x", 1, &bad, 1) == -EINVAL,
          "descriptors at NULL, or a descriptor -1, are -EINVAL: %s", herd_last_error());
    herd_worker_stats ws;
    herd_primary_stats ps;
    CHECK(herd_primary_worker_counters(p, 1, &ws) == -EINVAL && herd_primary_worker_counters(p, 0, NULL) == -EINVAL &&
              herd_primary_counters(p, NULL) == -EINVAL && herd_primary_counters(p, &ps) == 0,
          "counters: a slot not in use, or NULL to fill, is -EINVAL");
    CHECK(herd_primary_workers(p, NULL, 1) == -EINVAL && herd_primary_workers(p, NULL, 0) == 1,
          "herd_primary_workers: NULL with room for 1 is -EINVAL, with room for 0 counts (1)");
    CHECK(herd_primary_next_event(p, NULL, 0) == -EINVAL, "herd_primary_next_event with a NULL event is -EINVAL");
    CHECK(herd_primary_send(p, pid, "fine", 4, NULL, 0) == 0, "after all that, a good call still works");

    CHECK(shutdown_and_finish(p, &log, 10000) == 0, "shut down and finished");
    herd_primary_free(p);
    close(once[0]);
    close(once[1]);
    CHECK(count_fds() == fds_before, "%d descriptors before, %d after herd_primary_free", fds_before, count_fds());
}

int main(void) {
    test_start();
    herd_builder *b = herd_builder_new("not an address");
    CHECK(b == NULL && errno == EINVAL, "a bad address is NULL with EINVAL");
    CHECK(strstr(herd_last_error(), "herd_builder_new") != NULL, "the message names the call: %s",
          herd_last_error());

    b = herd_builder_new("127.0.0.1:0");
    CHECK(b != NULL, "a good address makes a builder");
    CHECK(herd_builder_mode(b, "sideways") == -EINVAL, "an unknown mode is -EINVAL");
    CHECK(strstr(herd_last_error(), "sideways") != NULL, "the message names the input: %s",
          herd_last_error());
    CHECK(herd_builder_workers(b, 0) == -EINVAL, "0 workers is -EINVAL");
    CHECK(herd_builder_mode(b, "handoff") == 0, "the builder survives bad settings");
    herd_builder_free(b);

    /* A port in use: bind a socket first, then ask herd for the same port. */
    int taken = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (taken < 0 || bind(taken, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(taken, 1) != 0 ||
        getsockname(taken, (struct sockaddr *)&addr, &len) != 0) {
        perror("setting up a taken port");
        return 1;
    }
    char listen_on[64];
    snprintf(listen_on, sizeof listen_on, "127.0.0.1:%d", ntohs(addr.sin_port));
    b = herd_builder_new(listen_on);
    herd_builder_workers(b, 1);
    herd_primary *p = herd_start(b, never_runs, NULL);
    CHECK(p == NULL && errno == EADDRINUSE, "a port in use fails herd_start with EADDRINUSE (errno %d)", errno);
    CHECK(strstr(herd_last_error(), "herd_start") != NULL && strstr(herd_last_error(), "bind") != NULL,
          "the message names herd_start and bind: %s", herd_last_error());
    close(taken);

    CHECK(herd_start(NULL, never_runs, NULL) == NULL && errno == EINVAL, "a NULL builder is EINVAL");
    CHECK(herd_primary_reload(NULL) == -EINVAL, "a NULL primary is -EINVAL");

    builder_errors();
    running_errors();
    return finish();
}
