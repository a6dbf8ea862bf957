/* Bad input gets a negative errno and a message naming the call and the cause; nothing is
 * left behind. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static int never_runs(herd_worker *worker, void *user_data) {
    (void)worker;
    (void)user_data;
    return 0;
}

int main(void) {
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

    if (failures == 0) printf("ok: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
