/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The names of the org.vfiomig1 D-Bus contract, shared by vfiomigd and its clients. The
 * interface XML next to this file is the source of truth for signatures; this header holds the
 * strings both sides must agree on. An incompatible change means org.vfiomig2, served beside.
 */

#define VFIOMIG_BUS_NAME "org.vfiomig1"
#define VFIOMIG_MANAGER_PATH "/org/vfiomig1"
#define VFIOMIG_DEVICE_PATH_PREFIX "/org/vfiomig1/device"
#define VFIOMIG_SPACE_PATH_PREFIX "/org/vfiomig1/space"
#define VFIOMIG_MIGRATION_PATH_PREFIX "/org/vfiomig1/migration"

#define VFIOMIG_MANAGER_INTERFACE "org.vfiomig1.Manager"
#define VFIOMIG_DEVICE_INTERFACE "org.vfiomig1.Device"
#define VFIOMIG_SPACE_INTERFACE "org.vfiomig1.AddressSpace"
#define VFIOMIG_MIGRATION_INTERFACE "org.vfiomig1.Migration"
/* Only on simulated devices: their "DMA", for tests and demonstrations. */
#define VFIOMIG_SIM_DEVICE_INTERFACE "org.vfiomig1.SimDevice"

/* polkit actions */
#define VFIOMIG_ACTION_MANAGE_DEVICES "org.vfiomig1.manage-devices"
#define VFIOMIG_ACTION_SET_STATE "org.vfiomig1.set-state"
#define VFIOMIG_ACTION_MAP_DMA "org.vfiomig1.map-dma"
#define VFIOMIG_ACTION_MIGRATE "org.vfiomig1.migrate"

/* Named errors. InvalidArgs is the standard org.freedesktop.DBus.Error.InvalidArgs. */
#define VFIOMIG_ERROR_PREFIX "org.vfiomig1.Error."
#define VFIOMIG_ERROR_NO_SUCH_DEVICE VFIOMIG_ERROR_PREFIX "NoSuchDevice"
#define VFIOMIG_ERROR_NOT_MIGRATABLE VFIOMIG_ERROR_PREFIX "NotMigratable"
#define VFIOMIG_ERROR_INVALID_TRANSITION VFIOMIG_ERROR_PREFIX "InvalidTransition"
#define VFIOMIG_ERROR_TRANSITION_FAILED VFIOMIG_ERROR_PREFIX "TransitionFailed"
#define VFIOMIG_ERROR_DEVICE_IN_ERROR VFIOMIG_ERROR_PREFIX "DeviceInError"
#define VFIOMIG_ERROR_P2P_REQUIRED VFIOMIG_ERROR_PREFIX "P2PRequired"
#define VFIOMIG_ERROR_BUSY VFIOMIG_ERROR_PREFIX "Busy"
#define VFIOMIG_ERROR_LIMIT_EXCEEDED VFIOMIG_ERROR_PREFIX "LimitExceeded"
#define VFIOMIG_ERROR_NOT_SUPPORTED VFIOMIG_ERROR_PREFIX "NotSupported"
#define VFIOMIG_ERROR_DEVICE_FAILED VFIOMIG_ERROR_PREFIX "DeviceFailed"
#define VFIOMIG_ERROR_NO_PRECOPY_SESSION VFIOMIG_ERROR_PREFIX "NoPreCopySession"
#define VFIOMIG_ERROR_NO_SUCH_ADDRESS_SPACE VFIOMIG_ERROR_PREFIX "NoSuchAddressSpace"
#define VFIOMIG_ERROR_MAPPING_CONFLICT VFIOMIG_ERROR_PREFIX "MappingConflict"
#define VFIOMIG_ERROR_NO_SUCH_MAPPING VFIOMIG_ERROR_PREFIX "NoSuchMapping"
#define VFIOMIG_ERROR_DMA_FAULT VFIOMIG_ERROR_PREFIX "DmaFault"
#define VFIOMIG_ERROR_STREAM_REJECTED VFIOMIG_ERROR_PREFIX "StreamRejected"
#define VFIOMIG_ERROR_TRANSFER_FAILED VFIOMIG_ERROR_PREFIX "TransferFailed"
/* Migration jobs: StartMigration/PrepareIncoming refusals, and Migration.ErrorName. */
#define VFIOMIG_ERROR_NO_SUCH_MIGRATION VFIOMIG_ERROR_PREFIX "NoSuchMigration"
#define VFIOMIG_ERROR_PEER_UNREACHABLE VFIOMIG_ERROR_PREFIX "PeerUnreachable"  /* connecting failed */
#define VFIOMIG_ERROR_PEER_REJECTED VFIOMIG_ERROR_PREFIX "PeerRejected"        /* the peer refused the handshake */
#define VFIOMIG_ERROR_PEER_VIOLATION VFIOMIG_ERROR_PREFIX "PeerViolation"      /* the peer broke the protocol */
#define VFIOMIG_ERROR_PEER_ABORTED VFIOMIG_ERROR_PREFIX "PeerAborted"          /* the peer sent ABORT */
#define VFIOMIG_ERROR_PEER_LOST VFIOMIG_ERROR_PREFIX "PeerLost"                /* a channel broke or stalled */
#define VFIOMIG_ERROR_CANCELLED VFIOMIG_ERROR_PREFIX "Cancelled"
/* a deadline passed: a prepared job no source joined, a SaveState/LoadState past its timeout */
#define VFIOMIG_ERROR_TIMEOUT VFIOMIG_ERROR_PREFIX "Timeout"
/* TLS: a side refused the other's credentials (unknown CA, expired, identity not allowed, PSK mismatch) */
#define VFIOMIG_ERROR_AUTHENTICATION_FAILED VFIOMIG_ERROR_PREFIX "AuthenticationFailed"
/* cleartext where it is not allowed: no credentials and a non-loopback peer, or a peer without TLS */
#define VFIOMIG_ERROR_INSECURE_TRANSPORT VFIOMIG_ERROR_PREFIX "InsecureTransport"
/* CancelTransfer with no state transfer running */
#define VFIOMIG_ERROR_NO_TRANSFER VFIOMIG_ERROR_PREFIX "NoTransfer"

/*
 * Migration states as they appear on the bus, indexed by the kernel's
 * enum vfio_device_mig_state value (ERROR = 0 … PRE_COPY_P2P = 7).
 */
#define VFIOMIG_STATE_NAMES                                                                  \
        { "error", "stop", "running", "stop-copy", "resuming", "running-p2p", "pre-copy",   \
          "pre-copy-p2p" }

/* Migration capability flags as they appear on the bus, in bit order (VFIO_MIGRATION_*). */
#define VFIOMIG_MIGRATION_FLAG_NAMES { "stop-copy", "p2p", "pre-copy" }

/* Device backends (Device.Backend). */
#define VFIOMIG_BACKEND_IOMMUFD "iommufd"
#define VFIOMIG_BACKEND_LEGACY "legacy"
#define VFIOMIG_BACKEND_SIM "sim"

/* Manager.KernelFeatures values. */
#define VFIOMIG_FEATURE_IOMMUFD "iommufd"
#define VFIOMIG_FEATURE_VFIO_CDEV "vfio-cdev"
#define VFIOMIG_FEATURE_VFIO_CONTAINER "vfio-container"
#define VFIOMIG_FEATURE_IOAS_MAP_FILE "ioas-map-file"
#define VFIOMIG_FEATURE_IOAS_CHANGE_PROCESS "ioas-change-process"
#define VFIOMIG_FEATURE_TYPE1_UPDATE_VADDR "type1-update-vaddr"
#define VFIOMIG_FEATURE_IO_URING "io_uring"

/* Prefix of simulated device addresses: "sim:NAME". */
#define VFIOMIG_SIM_ADDRESS_PREFIX "sim:"

/*
 * Options of AttachDevice("sim:NAME", options): key and D-Bus signature. Clients that take
 * options as text (vfiomigctl attach --option KEY=VALUE) convert by this table.
 */
#define VFIOMIG_SIM_OPTIONS                                     \
        {                                                       \
                { "state-size", "t" },   /* bytes of device state */                   \
                { "precopy-size", "t" }, /* bytes offered during pre-copy */           \
                { "dirty-rate", "t" },   /* bytes rewritten per second while running */ \
                { "flags", "as" },       /* "stop-copy", "p2p", "pre-copy" */           \
                { "seed", "t" },         /* content seed; default derived from NAME */  \
                { "mtty-quirks", "b" },  /* read() returns 0, not ENOMSG, in pre-copy */ \
                { "fail-arcs", "as" },   /* testing: "FROM>TO" arcs fail, device stays */ \
                { "error-arcs", "as" },  /* testing: "FROM>TO" arcs fail into error */  \
                { "arc-latency-usec", "t" }, /* testing: each arc takes this long */    \
                { "latency-arcs", "as" },    /* testing: only these "FROM>TO" arcs do */ \
                { "reinit", "t" },       /* REINIT after this many pre-copy bytes; 0 never */ \
                { "precopy-v2", "b" },   /* accept the PRECOPY_INFOv2 opt-in (default yes) */ \
        }

/* Options of Manager.CreateAddressSpace. */
#define VFIOMIG_OPTION_BACKEND "backend"         /* s: "iommufd", "legacy" or "sim"; default: what the host offers */
#define VFIOMIG_OPTION_SIM_MAPPING "sim-mapping" /* s: "by-file" (default) or "by-address"; sim spaces only */

/* Options of Device.SetState. */
#define VFIOMIG_OPTION_RECOVER_STATE "recover-state" /* s: state to return to if the SET fails */
/* Options of Device.SaveState and Device.LoadState. */
#define VFIOMIG_OPTION_TIMEOUT "timeout" /* t: ms the whole transfer may take, default 600000 */
/* Options of Manager.SetStates (and StartMigration, PrepareIncoming). */
#define VFIOMIG_OPTION_FORCE_WITHOUT_P2P "force-without-p2p" /* b: allow devices lacking P2P */

/* Options of Manager.StartMigration. */
#define VFIOMIG_OPTION_CHANNELS "channels"               /* u: TCP connections, 1..64, default 2 */
#define VFIOMIG_OPTION_PRECOPY "precopy"                 /* b: default true when every device has pre-copy */
#define VFIOMIG_OPTION_BANDWIDTH_LIMIT "bandwidth-limit" /* t: bytes per second, 0 (default) = none */
#define VFIOMIG_OPTION_SWITCHOVER "switchover"           /* s: "auto" (default) or "manual" */
#define VFIOMIG_OPTION_DOWNTIME_LIMIT "downtime-limit"   /* t: milliseconds auto switchover aims for, default 300 */
#define VFIOMIG_OPTION_IO_URING "io-uring"               /* b: false forces plain socket I/O; default true */
/* Options of Manager.PrepareIncoming. */
#define VFIOMIG_OPTION_RUN "run"                         /* b: run the devices after the commit; default false */
#define VFIOMIG_OPTION_REASSEMBLY_BUDGET "reassembly-budget" /* t: bytes held for reordering, default 256 MiB */
#define VFIOMIG_OPTION_STALL_TIMEOUT "stall-timeout"     /* t: ms without progress before failing, default 30000 (both) */
#define VFIOMIG_OPTION_SETUP_TIMEOUT "setup-timeout"     /* t: ms a prepared job waits for its source, default 600000 */

/* Migration.Direction, Migration.Phase and the result of Migration.Completed. */
#define VFIOMIG_DIRECTION_NAMES { "outgoing", "incoming" }
#define VFIOMIG_PHASE_NAMES { "setup", "precopy", "stop-copy", "resuming", "completed", "failed", "cancelled", \
                              "indeterminate" }
/* Migration.Resolve(outcome) of an indeterminate outgoing job. */
#define VFIOMIG_OUTCOME_COMMITTED "committed"
#define VFIOMIG_OUTCOME_NOT_COMMITTED "not-committed"
/* The stream port the unit vfiomigd-stream.socket and the default listen address use. */
#define VFIOMIG_STREAM_PORT 7179
