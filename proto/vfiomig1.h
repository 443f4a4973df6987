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

/* polkit actions */
#define VFIOMIG_ACTION_MANAGE_DEVICES "org.vfiomig1.manage-devices"
#define VFIOMIG_ACTION_SET_STATE "org.vfiomig1.set-state"
#define VFIOMIG_ACTION_MAP_DMA "org.vfiomig1.map-dma"
#define VFIOMIG_ACTION_MIGRATE "org.vfiomig1.migrate"

/* Named errors. InvalidArgs is the standard org.freedesktop.DBus.Error.InvalidArgs. */
#define VFIOMIG_ERROR_PREFIX "org.vfiomig1.Error."
#define VFIOMIG_ERROR_NO_SUCH_DEVICE VFIOMIG_ERROR_PREFIX "NoSuchDevice"
#define VFIOMIG_ERROR_DEVICE_EXISTS VFIOMIG_ERROR_PREFIX "DeviceExists"
#define VFIOMIG_ERROR_NOT_MIGRATABLE VFIOMIG_ERROR_PREFIX "NotMigratable"
#define VFIOMIG_ERROR_INVALID_TRANSITION VFIOMIG_ERROR_PREFIX "InvalidTransition"
#define VFIOMIG_ERROR_TRANSITION_FAILED VFIOMIG_ERROR_PREFIX "TransitionFailed"
#define VFIOMIG_ERROR_DEVICE_IN_ERROR VFIOMIG_ERROR_PREFIX "DeviceInError"
#define VFIOMIG_ERROR_P2P_REQUIRED VFIOMIG_ERROR_PREFIX "P2PRequired"
#define VFIOMIG_ERROR_BUSY VFIOMIG_ERROR_PREFIX "Busy"
#define VFIOMIG_ERROR_LIMIT_EXCEEDED VFIOMIG_ERROR_PREFIX "LimitExceeded"
#define VFIOMIG_ERROR_NOT_SUPPORTED VFIOMIG_ERROR_PREFIX "NotSupported"
#define VFIOMIG_ERROR_SIMULATION_DISABLED VFIOMIG_ERROR_PREFIX "SimulationDisabled"
#define VFIOMIG_ERROR_DEVICE_FAILED VFIOMIG_ERROR_PREFIX "DeviceFailed"

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
