/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Interactive authorization, as systemd's tools do it: the client's calls carry D-Bus's
 * ALLOW_INTERACTIVE_AUTHORIZATION flag (so polkit may ask instead of refusing an auth_admin or
 * auth_self action), and on a terminal the client starts pkttyagent(1), which registers for this
 * process and asks for the password on the terminal when polkit needs it.
 */

#include <stdbool.h>

/* Starts the agent when standard input and standard error are a terminal and we are not root
 * (root needs no authentication), and waits until it has registered with polkit. Idempotent.
 * bus_address: the bus the daemon (and so its polkitd) is on, when not the system bus.
 * Failing to start it is not an error: the call then fails with polkit's refusal, which says
 * that authentication was required. The agent is stopped at exit. */
void ctl_polkit_agent_open(const char *bus_address);
/* Stops the agent (also done at exit). */
void ctl_polkit_agent_close(void);
