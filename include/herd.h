/*
 * herd — a TCP server as a primary process plus forked workers, from C.
 *
 * Generated from capi/src by cbindgen; do not edit: change the Rust code and run
 * `make header`. docs/c-api.md explains the model; every function is documented below.
 *
 * Conventions: opaque handles (`_new`/`herd_start` ... `_free`); functions return 0 (or a
 * count) on success and a negative errno on failure, or NULL for a handle, with
 * herd_last_error() naming the call and the cause. Pointers in events borrow from the handle
 * until its next call. herd_worker_* calls are for the worker callback, in the worker process;
 * the others for the primary's process, from the thread that called herd_start.
 */

#ifndef HERD_H
#define HERD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// A worker was forked (`worker`, `pid`).
#define HERD_EVENT_FORK 1

// A worker is running and has said so.
#define HERD_EVENT_ONLINE 2

// A worker takes connections now.
#define HERD_EVENT_LISTENING 3

// A worker sent a message: `data`/`len`, and `fds`/`nfds` (now the program's to close).
#define HERD_EVENT_MESSAGE 4

// A worker's channel closed: it takes no more connections and is finishing.
#define HERD_EVENT_DISCONNECT 5

// A worker exited: its `exit_code` (or -1) or the `signal` that killed it (or 0); `flag` is 1
// if the exit was expected (the worker was asked to go, or announced it would), 0 for a crash.
#define HERD_EVENT_EXIT 6

// A worker announced it will exit on its own; its replacement is forked at once.
#define HERD_EVENT_RETIRING 7

// A worker stopped answering heartbeats for `millis` ms and is killed.
#define HERD_EVENT_UNRESPONSIVE 8

// A reload to generation `generation` started.
#define HERD_EVENT_RELOAD_STARTED 9

// Every worker of generation `generation` listens; the old ones are retired.
#define HERD_EVENT_RELOAD_FINISHED 10

// The reload failed (`text` says why); the old workers keep serving.
#define HERD_EVENT_RELOAD_FAILED 11

// The target number of workers is now `count`.
#define HERD_EVENT_SCALE 12

// More than the restart limit: `count` restarts within `millis` ms. Every worker is stopped.
#define HERD_EVENT_GAVE_UP 13

// Forking worker `worker` failed (`text`); it is retried in `millis` ms (0: not retried).
#define HERD_EVENT_SPAWN_FAILED 14

// Something the program should know (`text`); `worker` and `pid` are -1 for the primary's own.
#define HERD_EVENT_WARNING 15

// A shutdown began: `signal` (0 when asked from code), `graceful` or not.
#define HERD_EVENT_SHUTDOWN 16

// An event this version of the header does not know; `description` says what it is.
#define HERD_EVENT_OTHER 255

// A connection for the worker: `fd`, now the program's (to read, write and close).
#define HERD_WORKER_CONNECTION 1

// A message from the primary: `data`/`len`, and `fds`/`nfds` (now the program's to close).
#define HERD_WORKER_MESSAGE 2

// The primary asks the worker to stop: no more connections will come. Finish the open ones and
// return from the worker callback.
#define HERD_WORKER_STOP 3

// The settings of a cluster not yet started. Opaque: made by `herd_builder_new`, consumed by
// `herd_start`, or released by `herd_builder_free`.
typedef struct herd_builder herd_builder;

// A running cluster, seen from the primary process. Opaque: made by `herd_start`, released by
// `herd_primary_free`.
typedef struct herd_primary herd_primary;

// A worker, seen from inside the worker callback (valid until the callback returns), or made
// by `herd_worker_from_env` in a program `herd run` started (valid until `herd_worker_free`).
// Opaque.
typedef struct herd_worker herd_worker;

// One event of the primary (`herd_primary_next_event`). Fields that do not apply to `kind`
// are 0, -1 or `NULL`, as each says. Pointers borrow from the primary: valid until the next
// call on it.
typedef struct {
  // One of `HERD_EVENT_*`.
  uint32_t kind;
  // The worker's slot (0 to N-1), or -1.
  int32_t worker;
  // The worker's pid, or -1.
  int32_t pid;
  // `HERD_EVENT_EXIT`: the exit code, or -1 (killed by a signal, or unknown).
  int32_t exit_code;
  // `HERD_EVENT_EXIT`: the signal that killed it, or 0. `HERD_EVENT_SHUTDOWN`: the signal
  // that asked for it, or 0.
  int32_t signal;
  // `HERD_EVENT_EXIT`: the exit was asked for (1) or is a crash (0).
  // `HERD_EVENT_SHUTDOWN`: graceful (1) or immediate (0).
  int32_t flag;
  // `HERD_EVENT_RELOAD_*`: the new generation.
  uint64_t generation;
  // `HERD_EVENT_SCALE`: workers. `HERD_EVENT_GAVE_UP`: restarts.
  uint64_t count;
  // `HERD_EVENT_UNRESPONSIVE`: silent for. `HERD_EVENT_GAVE_UP`: within.
  // `HERD_EVENT_SPAWN_FAILED`: retried in (0: not retried). In milliseconds.
  uint64_t millis;
  // `HERD_EVENT_WARNING`, `_SPAWN_FAILED`, `_RELOAD_FAILED`: what happened; else `NULL`.
  const char *text;
  // `HERD_EVENT_MESSAGE`: the bytes (`len` of them); else `NULL`.
  const uint8_t *data;
  size_t len;
  // `HERD_EVENT_MESSAGE`: the descriptors that came with it (`nfds`), now the program's to
  // close; else `NULL`.
  const int *fds;
  size_t nfds;
  // Every event: one line saying what happened, as `herd serve` logs it.
  const char *description;
} herd_event;

// The counters of the primary (`herd_primary_counters`).
typedef struct {
  // Connections the primary accepted (handoff; reuseport slots without a worker).
  uint64_t accepted;
  // Handoffs sent to workers.
  uint64_t dispatched;
  // Connections that waited in the primary's queue.
  uint64_t queued;
  // Handoffs taken back from a worker that died or ran out of descriptors, and sent on.
  uint64_t requeued;
  // System calls the primary made on its hot path.
  uint64_t syscalls;
} herd_primary_stats;

// The counters of one worker slot (`herd_primary_worker_counters`).
typedef struct {
  // Times the worker woke for its accept source.
  uint64_t wakeups;
  // Connections it accepted itself.
  uint64_t accepts;
  // Accepts that found nothing (`EAGAIN`).
  uint64_t eagains;
  // Connections handed to it by the primary.
  uint64_t handoffs_received;
  // Handoffs it acknowledged.
  uint64_t handoffs_acked;
  // Connections it finished with.
  uint64_t closed;
  // System calls it made on herd's hot path.
  uint64_t syscalls;
} herd_worker_stats;

// One live worker (`herd_primary_workers`).
typedef struct {
  // Its slot, 0 to N-1.
  uint32_t worker;
  // Its pid.
  int32_t pid;
  // Its generation: 0, then one more per reload.
  uint64_t generation;
  // Its channel is open (1) or closed (0).
  int32_t connected;
  // It takes connections (1).
  int32_t listening;
  // It was asked to exit, or announced it would, and is finishing (1).
  int32_t exiting;
} herd_worker_info;

// One event of a worker (`herd_worker_next_event`). Pointers borrow from the worker: valid
// until the next call on it.
typedef struct {
  // One of `HERD_WORKER_*`.
  uint32_t kind;
  // `HERD_WORKER_CONNECTION`: the connection (non-blocking, close-on-exec); else -1.
  int fd;
  // `HERD_WORKER_MESSAGE`: the bytes; else `NULL`.
  const uint8_t *data;
  size_t len;
  // `HERD_WORKER_MESSAGE`: the descriptors that came with it; else `NULL`.
  const int *fds;
  size_t nfds;
} herd_worker_event;

// The worker callback: runs in each forked worker with its `herd_worker` and the `user_data`
// given to `herd_start`; the worker process exits when it returns (0: success).
typedef int (*herd_worker_fn)(herd_worker *worker, void *user_data);

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// A new builder for a cluster listening on `listen`: `"127.0.0.1:8080"`, `"[::1]:0"` (port 0:
// any free port), or a Unix socket path (`"/run/app.sock"`, `"unix:app.sock"`). Every other
// setting starts at herd's default (shared mode, epoll, one worker per CPU).
//
// Returns `NULL` for an address that cannot be parsed (`EINVAL`; see `herd_last_error`).
herd_builder *herd_builder_new(const char *listen);

// Releases a builder that `herd_start` did not consume. `NULL` is ignored.
void herd_builder_free(herd_builder *builder);

// How connections reach the workers: `"shared"` (every worker accepts on one listener, with the
// default strategy `epoll-balance`), `"shared/epoll"`, `"shared/epoll-exclusive"`,
// `"shared/epoll-rotate"`, `"shared/blocking"`, `"shared/epoll-balance"`, `"handoff"` (the primary accepts and passes
// each connection on) or `"reuseport"` (one `SO_REUSEPORT` listener per worker).
//
// Returns 0, or `-EINVAL` for an unknown mode.
int herd_builder_mode(herd_builder *builder, const char *mode);

// How connections are taken off listeners: `"epoll"` (the default) or `"io-uring"`. Where
// io_uring cannot run, the cluster runs on epoll and a `HERD_EVENT_WARNING` says why.
//
// Returns 0, or `-EINVAL` for an unknown backend.
int herd_builder_backend(herd_builder *builder, const char *backend);

// The number of workers (1 to 1024; default: the number of CPUs).
int herd_builder_workers(herd_builder *builder, uint32_t workers);

// The `listen(2)` backlog (default 1024).
int herd_builder_backlog(herd_builder *builder, int32_t backlog);

// Handoff mode: the handoffs in flight per worker, unacknowledged (default 32).
int herd_builder_window(herd_builder *builder, uint32_t window);

// A graceful shutdown kills the workers still busy after this many milliseconds (default
// 30 000).
int herd_builder_shutdown_timeout(herd_builder *builder, uint64_t ms);

// The primary gives up (and stops every worker) after more than `limit` restarts within
// `window_ms` milliseconds (default: 10 within 60 000).
int herd_builder_restart_limit(herd_builder *builder, uint32_t limit, uint64_t window_ms);

// Pings every worker each `interval_ms`, and kills (and replaces) one silent for `timeout_ms`.
// `interval_ms` 0 turns heartbeats off (the default).
int herd_builder_heartbeat(herd_builder *builder, uint64_t interval_ms, uint64_t timeout_ms);

// A reload gives up on a new worker that is not listening after this many milliseconds
// (default 10 000).
int herd_builder_reload_timeout(herd_builder *builder, uint64_t ms);

// Whether the primary takes `SIGINT`, `SIGTERM`, `SIGQUIT`, `SIGHUP`, `SIGTTIN` and `SIGTTOU`
// itself (non-zero, the default: they shut down, reload and scale as `herd serve` documents) or
// leaves them to the program (0), which then calls `herd_primary_shutdown`, `_reload` and
// `_scale`.
int herd_builder_handle_signals(herd_builder *builder, int on);

// Lets `herd_start` (and every later fork: a restart, a reload) fork a process that has other
// threads (non-zero). By default herd refuses (`-ENOTSUP`): a fork copies only the calling
// thread, and a lock another thread held at that moment — the allocator's, stdio's, the
// program's own — stays locked in the child for ever. Turn this on only if no other thread
// can hold such a lock while herd forks.
int herd_builder_allow_threads(herd_builder *builder, int on);

// `TCP_DEFER_ACCEPT`: a connection is accepted once its first bytes have arrived (non-zero) or
// at once (0, the default).
int herd_builder_defer_accept(herd_builder *builder, int on);

// The message of the last call that failed on this thread — which call and why, e.g.
// `herd_start: bind(127.0.0.1:80): Permission denied (os error 13)` — or an empty string.
//
// The string belongs to herd and stays valid until the next herd call on this thread.
const char *herd_last_error(void);

// Binds the listener(s) `builder` describes, forks the workers, and returns the primary.
// `builder` is consumed, whether this succeeds or not: do not use it or free it afterwards.
//
// Each worker, in its own process, calls `worker_main(worker, user_data)` (a
// `herd_worker_fn`) and exits once it returns: with 0 if it returned 0, else with 1 after
// telling the primary (a `HERD_EVENT_WARNING`). It takes connections from `worker` (see
// `herd_worker_accept` and `herd_worker_next_event`); `user_data` is passed as given.
//
// Call from a single-threaded process: herd forks, and a fork copies only the calling thread
// (a lock another thread held would stay locked in the child for ever). herd refuses to fork
// a process that has other threads (`-ENOTSUP`).
//
// Returns `NULL` on failure — a bad address, a port in use (`EADDRINUSE`), a failed fork —
// with `errno` and `herd_last_error()` saying why.
herd_primary *herd_start(herd_builder *builder, int (*worker_main)(herd_worker *worker, void *user_data), void *user_data);

// Releases the primary. Workers still running are killed (`SIGKILL`) and reaped first: call
// `herd_primary_shutdown` and wait for the events to end for a graceful stop. `NULL` is
// ignored.
void herd_primary_free(herd_primary *primary);

// The primary's descriptor, to poll for reading in the program's own event loop: readable
// whenever `herd_primary_next_event(primary, &event, 0)` has something to do. Call that until
// it returns 0. Owned by herd: do not close it. -1 for `NULL`.
int herd_primary_fd(herd_primary *primary);

// The next event, waiting at most `timeout_ms` milliseconds (0: not at all, -1: for ever).
//
// Returns 1 with `*event` filled; 0 if none came in time — or none will come any more, once
// every worker has exited after a shutdown (`herd_primary_finished` tells the two apart); or a
// negative errno if the primary itself failed (its epoll or timer). What `*event` points to is
// valid until the next call on `primary`.
int herd_primary_next_event(herd_primary *primary, herd_event *event, int64_t timeout_ms);

// 1 once every worker has exited after a shutdown (or none is left at all): no event will
// come any more. 0 otherwise.
int herd_primary_finished(herd_primary *primary);

// The address the cluster listens on, e.g. `127.0.0.1:40123` (the port chosen if it was 0), or
// the Unix socket's path. Owned by the primary, valid until `herd_primary_free`.
const char *herd_primary_local_addr(herd_primary *primary);

// The backend that runs: `"epoll"`, or `"io-uring"` if it was asked for and can run here.
// A static string.
const char *herd_primary_backend(herd_primary *primary);

// Sends `len` bytes (at most 65 528), and `nfds` descriptors (duplicated into the worker; the
// program keeps its own), to the worker `pid`, which gets a `HERD_WORKER_MESSAGE`. Never blocks.
//
// Returns 0; `-ESRCH` if `pid` is no live worker; `-EINVAL` for too many bytes; `-EPIPE` if
// its channel is closed.
int herd_primary_send(herd_primary *primary, int32_t pid, const void *data, size_t len, const int *fds, size_t nfds);

// Sends `len` bytes to every connected worker; returns how many it reached.
int herd_primary_broadcast(herd_primary *primary, const void *data, size_t len);

// Asks the worker `pid` to stop taking connections, finish its open ones and exit (Node's
// `worker.disconnect()`); it is not replaced. Returns 0 or `-ESRCH`.
int herd_primary_disconnect(herd_primary *primary, int32_t pid);

// Sends `signal` to the worker `pid`. A signal that ends it makes its exit expected (it is not
// replaced); one it survives (`SIGUSR1` to reopen logs, say) changes nothing. Returns 0 or
// `-ESRCH`.
int herd_primary_kill(herd_primary *primary, int32_t pid, int signal);

// A rolling reload, as `SIGHUP` does: a new generation is forked, and each old worker retired
// once its replacement listens. The `HERD_EVENT_RELOAD_*` events follow. Returns 0, or
// `-EINVAL` once the cluster has shut down.
int herd_primary_reload(herd_primary *primary);

// Sets the number of workers to `workers` (1 to 1024), forking or retiring the difference.
// Returns 0, or `-EINVAL` for a number out of range or a cluster that has shut down.
int herd_primary_scale(herd_primary *primary, uint32_t workers);

// Begins a shutdown: graceful (non-zero: the workers finish their connections and exit, and
// are killed after the shutdown timeout) or immediate (0: killed at once). Keep calling
// `herd_primary_next_event` until `herd_primary_finished`.
int herd_primary_shutdown(herd_primary *primary, int graceful);

// The primary's counters, into `*out`. Returns 0.
int herd_primary_counters(herd_primary *primary, herd_primary_stats *out);

// The counters of worker slot `slot` into `*out` (cumulative over every worker that has
// filled the slot). Returns the number of slots used so far (so `slot` may range below it), or
// `-EINVAL` for a slot beyond them.
int herd_primary_worker_counters(herd_primary *primary, uint32_t slot, herd_worker_stats *out);

// The live workers, in fork order: up to `capacity` into `out`. Returns how many there are
// (which may be more than `capacity`).
int herd_primary_workers(herd_primary *primary, herd_worker_info *out, size_t capacity);

// For a program that `herd run` started (each worker a program of its own): the worker it
// was started as, taken from what herd passed — the listener at descriptor 3 (`LISTEN_FDS`),
// the channel, the lane and the counters (`HERD_CHANNEL_FD`...; see docs/exec.md). Use it as
// the worker callback uses its handle (`herd_worker_accept`, `herd_worker_next_event`...),
// then release it with `herd_worker_free` before exiting.
//
// Returns `NULL` with `errno` and `herd_last_error()` saying why: `ENOENT` if the program
// was not started by herd (`HERD_CHANNEL_FD is not set`), `EINVAL` naming the variable for a
// value that does not parse or a descriptor that is not open.
herd_worker *herd_worker_from_env(void);

// Releases a worker made by `herd_worker_from_env` (its descriptors close). `NULL`, and the
// handle a worker callback was given (herd releases that one), are ignored.
void herd_worker_free(herd_worker *worker);

// The worker's slot, 0 to N-1 (a replacement takes its predecessor's).
uint32_t herd_worker_id(herd_worker *worker);

// The worker's generation: 0 for the first workers, one more for each reload.
uint64_t herd_worker_generation(herd_worker *worker);

// The worker's descriptor, to poll for reading in the program's own event loop (epoll, libuv,
// libevent): readable whenever `herd_worker_next_event(worker, &event, 0)` has something.
// Call that until it returns 0; call `herd_worker_ready` once the loop runs. Owned by herd:
// do not close it.
int herd_worker_fd(herd_worker *worker);

// Tells the primary this worker takes connections — once; herd does it on the first
// `herd_worker_accept` or `herd_worker_next_event`. Until then the primary hands it nothing,
// and a reload does not retire the worker it replaces.
void herd_worker_ready(herd_worker *worker);

// The next event of the worker — a connection, a message, or the request to stop — waiting at
// most `timeout_ms` milliseconds (0: not at all, -1: for ever).
//
// Returns 1 with `*event` filled, 0 if none came in time, or a negative errno. A connection's
// descriptor is non-blocking and the program's to close; what a message points to is valid
// until the next call on `worker`. After `HERD_WORKER_STOP`, finish the open connections and
// return from the callback; every later call returns `HERD_WORKER_STOP` again, at once.
int herd_worker_next_event(herd_worker *worker, herd_worker_event *event, int64_t timeout_ms);

// The blocking way: waits for the next connection and returns 1 with its descriptor — in
// blocking mode, the program's to close — in `*fd`; 0 when the primary asks the worker to stop
// (return from the callback); or a negative errno. Messages that arrive meanwhile are kept for
// `herd_worker_take_message`.
int herd_worker_accept(herd_worker *worker, int *fd);

// A message that arrived during `herd_worker_accept`: returns 1 with `*event` filled
// (`HERD_WORKER_MESSAGE`), or 0 if none is waiting.
int herd_worker_take_message(herd_worker *worker, herd_worker_event *event);

// Sends `len` bytes (at most 65 528), and `nfds` descriptors (duplicated into the primary; the
// program keeps its own), to the primary, which reports a `HERD_EVENT_MESSAGE`. Blocks while
// the channel is full — the primary has not yet read earlier messages.
int herd_worker_send(herd_worker *worker, const void *data, size_t len, const int *fds, size_t nfds);

// "I am about to exit": the primary forks this worker's replacement at once and does not count
// the exit as a crash. No more connections come; `herd_worker_accept` returns 0 (or
// `herd_worker_next_event` `HERD_WORKER_STOP`) once those already taken are out.
int herd_worker_retire(herd_worker *worker);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* HERD_H */
