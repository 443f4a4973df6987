/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl-polkit-agent.h"
#include "macro.h"

#define POLKIT_AGENT_PATH "/usr/bin/pkttyagent"
/* How long the agent may take to register before the call goes ahead without it. */
#define POLKIT_AGENT_REGISTER_TIMEOUT_MSEC 10000

extern char **environ;

static pid_t agent_pid = 0;

void ctl_polkit_agent_close(void) {
        if (agent_pid <= 0)
                return;
        (void) kill(agent_pid, SIGTERM);
        while (waitpid(agent_pid, NULL, 0) < 0 && errno == EINTR)
                ;
        agent_pid = 0;
}

/* Our environment, with bus_variable ("DBUS_SYSTEM_BUS_ADDRESS=...") in place of ours, so that
 * pkttyagent registers with the polkitd of the daemon's bus. The strings are borrowed; NULL on
 * allocation failure. */
static char **agent_environment(char *bus_variable) {
        size_t n = 0, k = 0;
        char **env;

        while (environ[n])
                n++;
        env = calloc(n + 2, sizeof *env);
        if (!env)
                return NULL;
        for (size_t i = 0; i < n; i++)
                if (strncmp(environ[i], "DBUS_SYSTEM_BUS_ADDRESS=", 24) != 0)
                        env[k++] = environ[i];
        env[k] = bus_variable;
        return env;
}

void ctl_polkit_agent_open(const char *bus_address) {
        static bool registered_exit = false;
        posix_spawn_file_actions_t actions;
        _cleanup_free_ char *bus_variable = NULL;
        char **env = environ, notify_arg[32];
        int pipe_fds[2], r;
        pid_t pid;

        if (agent_pid > 0 || geteuid() == 0 || !isatty(STDIN_FILENO) || !isatty(STDERR_FILENO))
                return;
        if (access(POLKIT_AGENT_PATH, X_OK) < 0)
                return; /* polkit's tools are not installed: the call says what it needed */
        /* The agent closes its end when it has registered: EOF on ours. Only the write end is
         * inherited, as fd 3 (dup2 clears O_CLOEXEC). */
        if (pipe2(pipe_fds, O_CLOEXEC) < 0)
                return;
        (void) snprintf(notify_arg, sizeof notify_arg, "--notify-fd=%d", 3);
        /* Registered for this process (pkttyagent's parent), and not as a --fallback: polkitd
         * uses a fallback agent only for a subject it can find a login session for, which a
         * host without logind sessions (a service, a container, ssh without pam_systemd) lacks. */
        char *const argv[] = { (char *) "pkttyagent", notify_arg, NULL };

        if (bus_address) {
                if (asprintf(&bus_variable, "DBUS_SYSTEM_BUS_ADDRESS=%s", bus_address) < 0) {
                        bus_variable = NULL; /* undefined after a failure */
                        env = NULL;
                } else
                        env = agent_environment(bus_variable);
                if (!env) {
                        safe_close(pipe_fds[0]);
                        safe_close(pipe_fds[1]);
                        return;
                }
        }
        r = posix_spawn_file_actions_init(&actions);
        if (r == 0)
                r = posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 3);
        if (r == 0)
                r = posix_spawn(&pid, POLKIT_AGENT_PATH, &actions, NULL, argv, env);
        posix_spawn_file_actions_destroy(&actions);
        if (env != environ)
                free(env);
        safe_close(pipe_fds[1]);
        if (r != 0) {
                safe_close(pipe_fds[0]);
                return;
        }
        agent_pid = pid;
        if (!registered_exit) {
                (void) atexit(ctl_polkit_agent_close);
                registered_exit = true;
        }

        /* EOF (or an error) when it has registered; after the timeout the call goes ahead, and
         * fails with polkit's "authentication required" if the agent is not there by then. */
        struct pollfd p = { .fd = pipe_fds[0], .events = POLLIN };
        (void) poll(&p, 1, POLKIT_AGENT_REGISTER_TIMEOUT_MSEC);
        safe_close(pipe_fds[0]);
}
