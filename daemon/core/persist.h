/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Restart without losing anything (DESIGN §6): every long-lived descriptor — the iommufd, VFIO
 * containers, groups and device fds, the simulated devices' fds and the files behind every
 * mapping — is kept in systemd's file descriptor store, one entry per open file description
 * (fd-table.h: systemd keeps no more), next to a memfd holding the serialized state (JSON:
 * devices, spaces, mappings, kernel object ids, and which objects use which entry).
 *
 * The state is saved after every change, before the reply reaches the client, as a new memfd
 * named "state-<seq>" whose header carries a CRC32C; the previous one is removed from the store
 * only after the new one is in. A crash at any point leaves at least one complete state.
 *
 * On start the daemon adopts what the store hands back, makes itself the owner of every mapping
 * (iommufd: IOMMU_IOAS_CHANGE_PROCESS; legacy: VFIO_DMA_MAP_FLAG_VADDR with its own mapping of
 * each file, after invalidating the dead process's addresses if it crashed), and only then
 * registers its bus objects and reports READY. Descriptors it does not recognise are removed from
 * the store with a log line.
 */

#include "error-message.h"
#include "manager.h"
#include "named-fds.h"

typedef struct Persist Persist;

/* Talks to the service manager only when $NOTIFY_SOCKET says there is one. */
int persist_new(Manager *m, Persist **ret);
Persist *persist_free(Persist *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(Persist *, persist_free);

/* Adopts the descriptors passed by the service manager (sd_listen_fds_with_names()). Returns
 * the number of devices and spaces restored; with nothing to restore, 0. Failures to restore
 * one object are logged and that object skipped. A state that cannot be used at all (no intact
 * one, one persist_state_parse() refuses, kernel objects that cannot be adopted) is refused:
 * logged in one line naming the problem, nothing restored, 0 returned, and from then on
 * persist_refused() is true: the store is never touched and nothing is saved, so that a daemon
 * that can read the state finds it complete. Negative only when out of memory. */
int persist_restore(Persist *p, NamedFds *received, ErrorMessage *err);
bool persist_refused(const Persist *p);
/* Saves the state and brings the fd store in line with it. */
int persist_save(Persist *p);
/* A planned stop: lets every space prepare for its successor (legacy: invalidate host
 * addresses, DMA continuing), then saves. */
int persist_prepare_stop(Persist *p);

/* What the fd store would hold now: duplicates of every descriptor plus the state memfd, all
 * owned by ret. A restart in one process, for tests: export, free, restore from the export. */
int persist_export(Persist *p, NamedFds *ret);
