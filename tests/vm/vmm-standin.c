/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A VMM stand-in for the VM tier (tests/vm/guest_tests.py drives it). It does what a VMM does
 * with a device vfiomigd owns: it asks for a duplicate of the device fd over D-Bus
 * (org.vfiomig1.Device.OpenFd), stays connected while it holds it, and then talks to the
 * device directly -- no further help from the daemon.
 *
 *   vmm-standin --device=OBJECT_PATH edu --file=PATH --iova=N
 *   vmm-standin --device=OBJECT_PATH mtty
 *
 * The bus is $DBUS_SYSTEM_BUS_ADDRESS (or --address=). After OpenFd it prints one line
 *   ready fd=N regions=N irqs=N unique=:1.N ...
 * and then answers one line per command read from stdin ("ok ..." or "fail ...").
 *
 * edu (QEMU's educational PCI device, bound to vfio-pci): the stand-in sets bus mastering through
 * the config region (vfio-pci does not), mmaps BAR0 and maps PATH -- the file the test also
 * mapped for DMA through vfiomigd at IOVA N -- into its own memory, MAP_SHARED: the same pages.
 *   copy SRC DST LEN SEED  fill file[SRC..] with a pattern made from SEED, zero file[DST..], DMA
 *                          IOVA+SRC -> edu buffer -> IOVA+DST, and check file[DST..] holds the
 *                          pattern: "ok t=START,END" or "fail ...".
 *   loop LEN               copy over and over (pages chosen round the whole file, a new seed
 *                          each time), printing "iter N ok|fail t=START,END ..." per copy, until
 *   stop                   "ok iterations=N failed=N".
 *   to-ram DST LEN FILL    fill file[DST..] with FILL, DMA the edu buffer to IOVA+DST, and say
 *                          how many bytes of file[DST..] changed: "ok changed=N status=..."
 *                          (0 when the IOMMU blocked the write).
 * Transfers stay below 4096 bytes (QEMU 7.2's edu aborts the VM on a full 4 KiB DMA), IOVAs
 * below 256 MiB (edu's default 28-bit DMA mask), and every DMA is polled to completion (edu
 * finishes one per 100 ms of virtual time).
 *
 * mtty (the kernel's sample mdev, a virtual 16550 UART; BARs are 8-byte I/O regions accessed
 * with 1-byte pread/pwrite at the region offset):
 *   reg-read BAR OFF / reg-write BAR OFF VALUE    a UART register ("ok value=N")
 *   mig-state                                     VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE
 *   resume-load FILE   SET RESUMING on this fd (the kernel walks there) and write FILE into the
 *                      data fd, which stays open: the device is in RESUMING holding a stream,
 *                      as a VMM loading state would leave it. "ok wrote=N"
 *   mig-set STATE      VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE (a number) on this fd, behind the
 *                      daemon's back (a control experiment: what the driver does on its own)
 *   reset              VFIO_DEVICE_RESET on this fd, behind the daemon's back
 *   close-data         close the data fd held since resume-load
 * Common: cfg-read OFF SIZE, cfg-write OFF SIZE VALUE (PCI config space); save-state FILE and
 * load-state FILE (Device.SaveState/LoadState with FILE's fd, over this connection: "ok bytes=N"
 * or "fail error=NAME message=TEXT"); quit.
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

#include "vfiomig1.h"

#define EDU_BUFFER 0x40000
#define EDU_REG_ID 0x00
#define EDU_REG_LIVENESS 0x04
#define EDU_REG_DMA_SRC 0x80
#define EDU_REG_DMA_DST 0x88
#define EDU_REG_DMA_COUNT 0x90
#define EDU_REG_DMA_CMD 0x98
#define EDU_DMA_START 0x1
#define EDU_DMA_TO_RAM 0x2
#define EDU_DMA_TIMEOUT_MS 5000
#define EDU_MAX_TRANSFER 4095

static sd_bus *bus;
static const char *device_path;
static int device_fd = -1;
static uint64_t config_offset;

/* edu */
static volatile uint8_t *bar0;
static size_t bar0_size;
static uint8_t *mem;
static uint64_t mem_size;
static uint64_t iova;

/* mtty */
static int data_fd = -1;

/* One answer line; returns 0 so that a command can end with "return reply(...)". */
static int reply(const char *format, ...) __attribute__((format(printf, 1, 2)));
static int reply(const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        vprintf(format, ap);
        va_end(ap);
        putchar('\n');
        fflush(stdout);
        return 0;
}

/* Says why on stderr (the test keeps it as the stand-in's log) and returns r. */
static int complain(int r, const char *format, ...) __attribute__((format(printf, 2, 3)));
static int complain(int r, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fputc('\n', stderr);
        return r;
}

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int region_info(uint32_t index, struct vfio_region_info *ret) {
        *ret = (struct vfio_region_info) { .argsz = sizeof *ret, .index = index };
        if (ioctl(device_fd, VFIO_DEVICE_GET_REGION_INFO, ret) < 0)
                return -errno;
        return 0;
}

static int config_read(uint64_t off, unsigned size, uint32_t *ret) {
        uint32_t v = 0;
        ssize_t n = pread(device_fd, &v, size, (off_t) (config_offset + off));

        if (n != (ssize_t) size)
                return n < 0 ? -errno : -EIO;
        *ret = v;
        return 0;
}

static int config_write(uint64_t off, unsigned size, uint32_t v) {
        ssize_t n = pwrite(device_fd, &v, size, (off_t) (config_offset + off));

        if (n != (ssize_t) size)
                return n < 0 ? -errno : -EIO;
        return 0;
}

/* ---- edu ---- */

static uint32_t edu_read32(unsigned off) {
        return *(volatile uint32_t *) (bar0 + off);
}

static void edu_write32(unsigned off, uint32_t v) {
        *(volatile uint32_t *) (bar0 + off) = v;
}

static void edu_write64(unsigned off, uint64_t v) {
        *(volatile uint64_t *) (bar0 + off) = v;
}

/* One DMA; 0 when the device reports it done. */
static int edu_dma(uint64_t src, uint64_t dst, uint64_t len, bool to_ram) {
        double deadline = now() + EDU_DMA_TIMEOUT_MS / 1000.0;

        /* Writes to the DMA registers are ignored while a transfer runs. */
        while (edu_read32(EDU_REG_DMA_CMD) & EDU_DMA_START) {
                if (now() > deadline)
                        return -ETIMEDOUT;
                usleep(1000);
        }
        edu_write64(EDU_REG_DMA_SRC, src);
        edu_write64(EDU_REG_DMA_DST, dst);
        edu_write64(EDU_REG_DMA_COUNT, len);
        edu_write64(EDU_REG_DMA_CMD, EDU_DMA_START | (to_ram ? EDU_DMA_TO_RAM : 0));
        while (edu_read32(EDU_REG_DMA_CMD) & EDU_DMA_START) {
                if (now() > deadline)
                        return -ETIMEDOUT;
                usleep(2000);
        }
        return 0;
}

static void pattern(uint8_t *p, uint64_t len, uint64_t seed) {
        uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;

        for (uint64_t i = 0; i < len; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = (uint8_t) x;
        }
}

static bool range_ok(uint64_t off, uint64_t len) {
        return len > 0 && len <= EDU_MAX_TRANSFER && off < mem_size && len <= mem_size - off;
}

/* RAM -> edu -> RAM through the IOMMU, checked against the file's own pages. */
static int edu_copy(uint64_t src, uint64_t dst, uint64_t len, uint64_t seed, double *t0, double *t1,
                    char *why, size_t why_size) {
        uint8_t expect[EDU_MAX_TRANSFER];
        int r;

        pattern(expect, len, seed);
        memcpy(mem + src, expect, len);
        memset(mem + dst, 0, len);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        *t0 = now();
        r = edu_dma(iova + src, EDU_BUFFER, len, false);
        if (r == 0)
                r = edu_dma(EDU_BUFFER, iova + dst, len, true);
        *t1 = now();
        if (r < 0) {
                snprintf(why, why_size, "dma-timeout");
                return r;
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (memcmp(mem + dst, expect, len) != 0) {
                uint64_t i = 0, zero = 0;

                while (i < len && mem[dst + i] == expect[i])
                        i++;
                for (uint64_t j = 0; j < len; j++)
                        zero += mem[dst + j] == 0;
                snprintf(why, why_size, "mismatch first-bad-byte=%" PRIu64 " zero-bytes=%" PRIu64, i, zero);
                return -EIO;
        }
        return 0;
}

static int edu_setup(const char *path) {
        struct vfio_region_info bar;
        struct stat st;
        uint32_t id, cmd, after, live;
        int fd, r;

        r = region_info(VFIO_PCI_BAR0_REGION_INDEX, &bar);
        if (r < 0)
                return complain(r, "VFIO_DEVICE_GET_REGION_INFO(BAR0): %s", strerror(-r));
        if (!(bar.flags & VFIO_REGION_INFO_FLAG_MMAP) || bar.size < 0x1000)
                return complain(-ENODEV, "BAR0 is not mmap-able (flags 0x%x, size %llu)", bar.flags,
                                (unsigned long long) bar.size);
        bar0_size = bar.size;
        bar0 = mmap(NULL, bar0_size, PROT_READ | PROT_WRITE, MAP_SHARED, device_fd, (off_t) bar.offset);
        if (bar0 == MAP_FAILED)
                return complain(-errno, "mmap(BAR0): %s", strerror(errno));

        /* vfio-pci leaves bus mastering off: without it edu's DMA silently does nothing. */
        r = config_read(PCI_COMMAND, 2, &cmd);
        if (r == 0)
                r = config_write(PCI_COMMAND, 2, cmd | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY);
        if (r == 0)
                r = config_read(PCI_COMMAND, 2, &after);
        if (r < 0)
                return complain(r, "PCI_COMMAND through the config region: %s", strerror(-r));

        id = edu_read32(EDU_REG_ID);
        edu_write32(EDU_REG_LIVENESS, 0x12345678);
        live = edu_read32(EDU_REG_LIVENESS);

        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return complain(-errno, "open %s: %s", path, strerror(errno));
        if (fstat(fd, &st) < 0)
                return complain(-errno, "fstat %s: %s", path, strerror(errno));
        mem_size = (uint64_t) st.st_size;
        mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (mem == MAP_FAILED)
                return complain(-errno, "mmap %s: %s", path, strerror(errno));

        reply("ready-edu id=0x%08x liveness=0x%08x command=0x%04x->0x%04x bar0-size=%zu mem-size=%" PRIu64
              " iova=0x%" PRIx64, id, live, cmd, after, bar0_size, mem_size, iova);
        return 0;
}

/* The loop: copies until "stop" arrives on stdin. */
static int edu_loop(uint64_t len) {
        uint64_t pages = mem_size / 4096, n = 0, failed = 0;
        char line[256];

        if (pages < 2 || len == 0 || len > EDU_MAX_TRANSFER)
                return reply("fail bad-loop-arguments");
        reply("ok looping");
        for (;;) {
                struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
                uint64_t src = ((2 * n) % pages) * 4096, dst = ((2 * n + 1) % pages) * 4096;
                char why[128] = "";
                double t0, t1;
                int r;

                if (poll(&p, 1, 0) > 0) {
                        if (!fgets(line, sizeof line, stdin) || strncmp(line, "stop", 4) == 0)
                                break;
                }
                r = edu_copy(src, dst, len, 1000 + n, &t0, &t1, why, sizeof why);
                failed += r < 0;
                printf("iter %" PRIu64 " %s t=%.6f,%.6f src=0x%" PRIx64 " dst=0x%" PRIx64 "%s%s\n", n,
                       r < 0 ? "fail" : "ok", t0, t1, src, dst, why[0] ? " " : "", why);
                fflush(stdout);
                n++;
        }
        return reply("ok iterations=%" PRIu64 " failed=%" PRIu64, n, failed);
}

static int edu_command(char *cmd, char *args) {
        uint64_t a = 0, b = 0, c = 0, d = 0;
        char why[128] = "";
        double t0, t1;
        int r;

        if (strcmp(cmd, "copy") == 0) {
                if (sscanf(args, "%" SCNi64 " %" SCNi64 " %" SCNi64 " %" SCNi64, &a, &b, &c, &d) != 4 ||
                    !range_ok(a, c) || !range_ok(b, c))
                        return reply("fail bad-arguments");
                r = edu_copy(a, b, c, d, &t0, &t1, why, sizeof why);
                if (r < 0)
                        return reply("fail t=%.6f,%.6f %s", t0, t1, why);
                return reply("ok t=%.6f,%.6f", t0, t1);
        }
        if (strcmp(cmd, "loop") == 0) {
                if (sscanf(args, "%" SCNi64, &a) != 1)
                        return reply("fail bad-arguments");
                return edu_loop(a);
        }
        if (strcmp(cmd, "to-ram") == 0) {
                uint64_t changed = 0;

                if (sscanf(args, "%" SCNi64 " %" SCNi64 " %" SCNi64, &a, &b, &c) != 3 || !range_ok(a, b))
                        return reply("fail bad-arguments");
                memset(mem + a, (int) c, b);
                __atomic_thread_fence(__ATOMIC_SEQ_CST);
                r = edu_dma(EDU_BUFFER, iova + a, b, true);
                /* Give a write that was let through time to land, though edu's completion is
                 * already after the write. */
                usleep(10000);
                __atomic_thread_fence(__ATOMIC_SEQ_CST);
                for (uint64_t i = 0; i < b; i++)
                        changed += mem[a + i] != (uint8_t) c;
                return reply("%s changed=%" PRIu64 " status=0x%08x", r < 0 ? "fail dma-timeout" : "ok", changed,
                             edu_read32(EDU_REG_DMA_CMD));
        }
        return reply("fail unknown-command %s", cmd);
}

/* ---- mtty ---- */

static int mig_feature(uint32_t flags, uint32_t *state, int32_t *fd) {
        /* struct vfio_device_feature ends in a flexible array: the payload follows it in one buffer. */
        uint64_t buf[(sizeof(struct vfio_device_feature) + sizeof(struct vfio_device_feature_mig_state) + 7) / 8] = {};
        struct vfio_device_feature *feature = (struct vfio_device_feature *) buf;
        struct vfio_device_feature_mig_state *mig = (struct vfio_device_feature_mig_state *) feature->data;

        feature->argsz = sizeof buf;
        feature->flags = flags | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
        mig->device_state = *state;
        mig->data_fd = -1;
        if (ioctl(device_fd, VFIO_DEVICE_FEATURE, feature) < 0)
                return -errno;
        *state = mig->device_state;
        *fd = mig->data_fd;
        return 0;
}

static int mtty_command(char *cmd, char *args) {
        struct vfio_region_info info;
        uint64_t a = 0, b = 0, c = 0;
        uint8_t v;
        int r;

        if (strcmp(cmd, "reg-read") == 0 || strcmp(cmd, "reg-write") == 0) {
                bool write = cmd[4] == 'w';
                ssize_t n;

                if (sscanf(args, "%" SCNi64 " %" SCNi64 " %" SCNi64, &a, &b, &c) != (write ? 3 : 2) || b >= 8)
                        return reply("fail bad-arguments");
                r = region_info((uint32_t) a, &info);
                if (r < 0)
                        return reply("fail region-info %s", strerror(-r));
                v = (uint8_t) c;
                n = write ? pwrite(device_fd, &v, 1, (off_t) (info.offset + b))
                          : pread(device_fd, &v, 1, (off_t) (info.offset + b));
                if (n != 1)
                        return reply("fail %s %s", write ? "pwrite" : "pread", n < 0 ? strerror(errno) : "short");
                return reply("ok value=%u", v);
        }
        if (strcmp(cmd, "mig-state") == 0) {
                uint32_t state = 0;
                int32_t fd = -1;

                r = mig_feature(VFIO_DEVICE_FEATURE_GET, &state, &fd);
                if (r < 0)
                        return reply("fail errno=%d %s", -r, strerror(-r));
                return reply("ok state=%u", state);
        }
        if (strcmp(cmd, "resume-load") == 0) {
                uint32_t state = VFIO_DEVICE_STATE_RESUMING;
                char *path = strtok(args, " \n");
                uint8_t buf[4096];
                size_t total = 0;
                int32_t fd = -1;
                ssize_t n;
                int in;

                if (!path)
                        return reply("fail bad-arguments");
                in = open(path, O_RDONLY | O_CLOEXEC);
                if (in < 0)
                        return reply("fail open %s", strerror(errno));
                n = read(in, buf, sizeof buf);
                close(in);
                if (n < 0)
                        return reply("fail read %s", strerror(errno));
                r = mig_feature(VFIO_DEVICE_FEATURE_SET, &state, &fd);
                if (r < 0)
                        return reply("fail set-resuming errno=%d %s", -r, strerror(-r));
                if (data_fd >= 0)
                        close(data_fd);
                data_fd = fd;
                while (total < (size_t) n) {
                        ssize_t k = write(data_fd, buf + total, (size_t) n - total);
                        if (k <= 0)
                                return reply("fail write errno=%d after=%zu", k < 0 ? errno : 0, total);
                        total += (size_t) k;
                }
                return reply("ok wrote=%zu", total);
        }
        if (strcmp(cmd, "mig-set") == 0) {
                uint32_t state;
                int32_t fd = -1;

                if (sscanf(args, "%" SCNi64, &a) != 1)
                        return reply("fail bad-arguments");
                state = (uint32_t) a;
                r = mig_feature(VFIO_DEVICE_FEATURE_SET, &state, &fd);
                if (r < 0)
                        return reply("fail errno=%d %s", -r, strerror(-r));
                if (fd >= 0)
                        close(fd);
                return reply("ok state=%u", state);
        }
        if (strcmp(cmd, "reset") == 0) {
                if (ioctl(device_fd, VFIO_DEVICE_RESET) < 0)
                        return reply("fail errno=%d %s", errno, strerror(errno));
                return reply("ok");
        }
        if (strcmp(cmd, "close-data") == 0) {
                if (data_fd >= 0)
                        close(data_fd);
                data_fd = -1;
                return reply("ok");
        }
        return reply("fail unknown-command %s", cmd);
}

/* ---- Device.SaveState / LoadState: the VMM asks the daemon to move the state through a file ---- */

static int transfer_state(bool save, const char *path) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL;
        uint64_t bytes = 0;
        int fd, r;

        fd = save ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return reply("fail open %s", strerror(errno));
        r = sd_bus_call_method(bus, VFIOMIG_BUS_NAME, device_path, VFIOMIG_DEVICE_INTERFACE,
                               save ? "SaveState" : "LoadState", &error, &m, "ha{sv}", fd, 0);
        close(fd);
        if (r < 0) {
                reply("fail error=%s message=%s", error.name ?: "transport", error.message ?: strerror(-r));
                sd_bus_error_free(&error);
                return 0;
        }
        r = sd_bus_message_read(m, "t", &bytes);
        sd_bus_message_unref(m);
        if (r < 0)
                return reply("fail error=bad-reply");
        return reply("ok bytes=%" PRIu64, bytes);
}

/* ---- main ---- */

static int open_device(const char *path) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL;
        int fd, r;

        r = sd_bus_call_method(bus, VFIOMIG_BUS_NAME, path, VFIOMIG_DEVICE_INTERFACE, "OpenFd", &error, &m, "");
        if (r < 0) {
                fprintf(stderr, "OpenFd on %s: %s: %s\n", path, error.name ?: "?", error.message ?: strerror(-r));
                reply("fail error=%s", error.name ?: "transport");
                sd_bus_error_free(&error);
                return r;
        }
        r = sd_bus_message_read(m, "h", &fd);
        if (r >= 0)
                fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        sd_bus_message_unref(m);
        if (r < 0 || fd < 0) {
                reply("fail error=bad-reply");
                return r < 0 ? r : -errno;
        }
        return fd;
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "address", required_argument, NULL, 'a' },
                { "device", required_argument, NULL, 'd' },
                { "file", required_argument, NULL, 'f' },
                { "iova", required_argument, NULL, 'i' },
                {}
        };
        const char *address = NULL, *device = NULL, *file = NULL, *mode, *unique = "?";
        struct vfio_device_info info = { .argsz = sizeof info };
        struct vfio_region_info cfg;
        char line[512];
        int c, r;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'a':
                        address = optarg;
                        break;
                case 'd':
                        device = optarg;
                        break;
                case 'f':
                        file = optarg;
                        break;
                case 'i':
                        iova = strtoull(optarg, NULL, 0);
                        break;
                default:
                        return 2;
                }
        if (optind != argc - 1 || !device) {
                fprintf(stderr, "usage: %s [--address=BUS] --device=PATH edu --file=PATH --iova=N | mtty\n", argv[0]);
                return 2;
        }
        mode = argv[optind];
        if (strcmp(mode, "edu") == 0 && !file) {
                fprintf(stderr, "edu needs --file=\n");
                return 2;
        }

        if (address) {
                r = sd_bus_new(&bus);
                if (r >= 0)
                        r = sd_bus_set_address(bus, address);
                if (r >= 0)
                        r = sd_bus_set_bus_client(bus, 1);
                if (r >= 0)
                        r = sd_bus_negotiate_fds(bus, 1);
                if (r >= 0)
                        r = sd_bus_start(bus);
        } else
                r = sd_bus_open_system(&bus);
        if (r < 0) {
                fprintf(stderr, "cannot connect to the bus: %s\n", strerror(-r));
                reply("fail error=connect");
                return 1;
        }
        (void) sd_bus_get_unique_name(bus, &unique);

        device_path = device;
        device_fd = open_device(device);
        if (device_fd < 0)
                return 1;
        if (ioctl(device_fd, VFIO_DEVICE_GET_INFO, &info) < 0) {
                reply("fail VFIO_DEVICE_GET_INFO %s", strerror(errno));
                return 1;
        }
        r = region_info(VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
        if (r < 0) {
                reply("fail VFIO_DEVICE_GET_REGION_INFO(config) %s", strerror(-r));
                return 1;
        }
        config_offset = cfg.offset;
        reply("ready fd=%d regions=%u irqs=%u flags=0x%x unique=%s", device_fd, info.num_regions, info.num_irqs,
              info.flags, unique);
        if (strcmp(mode, "edu") == 0 && edu_setup(file) < 0) {
                reply("fail edu-setup");
                return 1;
        }

        while (fgets(line, sizeof line, stdin)) {
                char *args, *cmd = strtok_r(line, " \n", &args);
                uint64_t a = 0, b = 0, v = 0;
                uint32_t value;

                if (!cmd)
                        continue;
                if (strcmp(cmd, "quit") == 0)
                        break;
                if (strcmp(cmd, "cfg-read") == 0 || strcmp(cmd, "cfg-write") == 0) {
                        bool write = cmd[4] == 'w';

                        if (sscanf(args, "%" SCNi64 " %" SCNi64 " %" SCNi64, &a, &b, &v) != (write ? 3 : 2) ||
                            (b != 1 && b != 2 && b != 4)) {
                                reply("fail bad-arguments");
                                continue;
                        }
                        r = write ? config_write(a, (unsigned) b, (uint32_t) v) : config_read(a, (unsigned) b, &value);
                        if (r < 0)
                                reply("fail %s", strerror(-r));
                        else
                                reply("ok value=0x%x", write ? (unsigned) v : value);
                        continue;
                }
                if (strcmp(cmd, "save-state") == 0 || strcmp(cmd, "load-state") == 0) {
                        char *path = strtok(args, " \n");

                        if (!path)
                                reply("fail bad-arguments");
                        else
                                transfer_state(cmd[0] == 's', path);
                        continue;
                }
                if (strcmp(mode, "edu") == 0)
                        edu_command(cmd, args);
                else
                        mtty_command(cmd, args);
        }

        if (data_fd >= 0)
                close(data_fd);
        close(device_fd);
        sd_bus_flush_close_unref(bus);
        return 0;
}
