/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/* What the vfiomigctl-*.c verb families share: the command line as parse_argv() left it, the
 * exit codes, every verb (for the table in vfiomigctl.c) and the helpers more than one family
 * uses. One file per verb family, as systemctl splits its verbs. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "ctl-bus.h"
#include "ctl-output.h"
#include "ctl-parse.h"
#include "ctl-token.h"
#include "ctl-wait.h"
#include "stream-wire.h"
#include "vfiomig1.h"

/* Failures exit 1; a command line we cannot act on exits 2, so that a script can tell its own
 * mistake from a refusal by the daemon. run() and the verbs return it as a positive value. */
#define EXIT_USAGE 2
/* migrate and wait: the source sent everything and cannot know whether the destination committed.
 * Neither success nor failure: the devices stay stopped until an operator resolves the job, so a
 * script must not treat it as either. */
#define EXIT_INDETERMINATE 3

#define usage_error(...) (log_error(__VA_ARGS__), EXIT_USAGE)

extern const char *arg_address;
extern JsonFormat arg_json;
extern uint64_t arg_timeout_usec;
extern bool arg_quiet;
extern CtlOptionValue *arg_options;
extern size_t arg_n_options;
extern const char *arg_recover;
extern bool arg_force_without_p2p;
extern const char *arg_backend;
extern const char *arg_sim_mapping;
extern const char *arg_file;
extern const char *arg_data;
extern const char *arg_output;
extern uint64_t arg_offset, arg_length, arg_iova;
extern bool arg_offset_set, arg_length_set, arg_iova_set;
extern int arg_access; /* CTL_ACCESS_* bits; unset means read and write */
extern bool arg_run;
extern uint64_t arg_reassembly_budget, arg_stall_timeout;
extern bool arg_reassembly_budget_set, arg_stall_timeout_set;
extern uint64_t arg_setup_timeout;
extern bool arg_setup_timeout_set;
extern const char *arg_to;
extern const char *arg_token;
extern const char *arg_token_file;
extern unsigned arg_channels;
extern bool arg_channels_set;
extern bool arg_no_precopy;
extern uint64_t arg_bandwidth, arg_downtime;
extern bool arg_bandwidth_set, arg_downtime_set;
extern const char *arg_switchover;
extern bool arg_no_io_uring;
extern bool arg_no_wait;
extern bool arg_ask_password;

/* sim-dma write --file reads the whole file into one message; the daemon's own limit per DMA
 * is far lower and it says so, but nothing larger than this is worth reading into memory. */
#define SIM_DMA_FILE_MAX (UINT64_C(64) << 20)

const char *yes_no(bool b);
const char *na(const char *s);
int acquire_bus(sd_bus **ret);
int check_device_name(const char *dev);
int check_space_name(const char *space);
int require_option(const char *verb, bool given, const char *option);
int check_state(const char *what, const char *state);
int print_json(json_object *j);
int print_table(Table *t, size_t n_rows, const char *empty);
int read_whole_fd(int fd, const char *name, uint64_t max, void **ret, size_t *ret_size);
int read_whole_file(const char *path, uint64_t max, void **ret, size_t *ret_size);
int write_all(int fd, const void *data, size_t size);
int space_to_json(const SpaceInfo *s, bool full, json_object **ret);
int migration_to_json(const MigrationInfo *i, json_object **ret);
/* With --json, after a verb changed something: the object as it is now, in the form status DEV,
 * space list and job JOB print it; nothing otherwise. */
int show_device_after(sd_bus *bus, const char *path);
int show_space_after(sd_bus *bus, const char *path);
int show_migration_after(sd_bus *bus, const char *path);
/* With --json, after detach and space destroy: {"id", "object"} of what is gone. */
int print_detached(const char *id, const char *object);
int write_output(const char *path, mode_t mode, const void *data, size_t size);
int check_job_name(const char *job, char **ret_path);
int resolve_devices(sd_bus *bus, char **devs, size_t n, char ***ret);
int append_object_paths(sd_bus_message *m, char **paths);
int append_option_bool(sd_bus_message *m, const char *key, bool b);
int append_option_u64(sd_bus_message *m, const char *key, uint64_t t);
int device_to_json(const DeviceInfo *d, bool full, json_object **ret);
int print_devices(const DeviceList *l);
int verb_list(int argc, char *argv[]);
int verb_status(int argc, char *argv[]);
int verb_attach(int argc, char *argv[]);
int verb_detach(int argc, char *argv[]);
int verb_set_state(int argc, char *argv[]);
int verb_set_states(int argc, char *argv[]);
int call_device_method(const char *dev, const char *member, sd_bus_message **ret_reply);
int verb_reset(int argc, char *argv[]);
int verb_precopy_info(int argc, char *argv[]);
int verb_save_state(int argc, char *argv[]);
int verb_load_state(int argc, char *argv[]);
int verb_cancel_transfer(int argc, char *argv[]);
int verb_revoke_clients(int argc, char *argv[]);
int verb_space_create(int argc, char *argv[]);
int verb_space_list(int argc, char *argv[]);
int verb_space_show(int argc, char *argv[]);
int verb_space_destroy(int argc, char *argv[]);
int verb_map(int argc, char *argv[]);
int verb_unmap(int argc, char *argv[]);
int verb_attach_space(int argc, char *argv[]);
int resolve_sim_device(sd_bus *bus, const char *dev, char **ret_path);
int verb_sim_dma_write(int argc, char *argv[]);
int verb_sim_dma_read(int argc, char *argv[]);
int verb_incoming(int argc, char *argv[]);
int verb_migrate(int argc, char *argv[]);
int verb_jobs(int argc, char *argv[]);
int verb_job(int argc, char *argv[]);
int verb_wait(int argc, char *argv[]);
int verb_switchover(int argc, char *argv[]);
int verb_resolve(int argc, char *argv[]);
int verb_cancel(int argc, char *argv[]);
int verb_blob_set(int argc, char *argv[]);
int verb_blob_get(int argc, char *argv[]);
