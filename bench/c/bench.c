// The C baseline of `npm run bench`: the same work as bench/ts/cases.ts, done
// the way a small C driver would do it (raw ioctls, a volatile pointer into
// the BAR, poll(2) on the eventfd). Built by bench/host.ts with gcc against
// the kernel uapi headers the uapi generator fetched (never copied into the
// repository), and run inside the VM tier's guest next to the TypeScript side.
//
// Usage: [BENCH_WARMUP_MS=N] bench-c MODE EDU CASE:ITERS:BATCHES ...
//   MODE  group | cdev      EDU  PCI address of edu, bound to vfio-pci
// Prints one line per case: `BENCH {json}` with per-operation nanoseconds per
// batch (or per event for `irq`), in the format bench/ts/report.ts reads.
//
// What each case does is described in bench/README.md; the TypeScript side
// must do the same kernel work, so both sides keep the same order of system
// calls (checked by hand with strace; see README).
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <linux/vfio.h>

#define PAGE 4096u
#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
// edu's registers (QEMU docs/specs/edu.rst).
#define EDU_LIVENESS 0x04
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64
// The IOVAs the C side maps at: where the library's allocator puts the same
// buffers (it hands out the lowest free pages above page 0, in order), so
// that both sides make the IOMMU touch the same page-table entries.
#define IOVA_FIRST 0x1000ull
#define IOVA_HUGE 0x200000ull
#define HUGE_2M (2u << 20)

// `host` runs only the cases that need no device (ram-*, ffi-floor),
// natively on the host, for the ratio without TCG in the way.
enum mode { MODE_GROUP, MODE_CDEV, MODE_HOST };

static enum mode g_mode;
static const char *g_mode_name;
static const char *g_edu;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench-c: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, " (errno %d: %s)\n", errno, strerror(errno));
  va_end(ap);
  exit(1);
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what) {
  int r;
  do r = ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR);
  if (r < 0) die("ioctl %s", what);
  return r;
}

static int xopen(const char *path) {
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) die("open %s", path);
  return fd;
}

// --- a device set up in a container: what a C driver's bring-up does --------

struct device {
  int container;  // group mode: /dev/vfio/vfio
  int group;      // group mode: /dev/vfio/N
  int iommufd;    // cdev mode: /dev/iommu
  uint32_t ioas;  // cdev mode
  int fd;         // the device fd
  uint64_t config_offset;
  volatile uint32_t *bar;
  size_t bar_size;
  int irq_fd;     // MSI vector 0's eventfd, -1 when not enabled
};

static int open_container_group(struct device *d) {
  d->container = xopen("/dev/vfio/vfio");
  if (ioctl(d->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) die("VFIO API version");
  if (ioctl(d->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0) die("no Type1v2");
  char link[256], path[512];
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", g_edu);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) die("readlink %s", path);
  link[n] = 0;
  const char *slash = strrchr(link, '/');
  snprintf(path, sizeof path, "/dev/vfio/%s", slash ? slash + 1 : link);
  d->group = xopen(path);
  struct vfio_group_status status = {.argsz = sizeof status};
  xioctl(d->group, VFIO_GROUP_GET_STATUS, &status, "VFIO_GROUP_GET_STATUS");
  if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE)) die("group not viable");
  xioctl(d->group, VFIO_GROUP_SET_CONTAINER, &d->container, "VFIO_GROUP_SET_CONTAINER");
  if (ioctl(d->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) die("VFIO_SET_IOMMU");
  int fd = ioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, g_edu);
  if (fd < 0) die("VFIO_GROUP_GET_DEVICE_FD");
  return fd;
}

static int open_container_cdev(struct device *d) {
  d->iommufd = xopen("/dev/iommu");
  struct iommu_ioas_alloc alloc = {.size = sizeof alloc};
  xioctl(d->iommufd, IOMMU_IOAS_ALLOC, &alloc, "IOMMU_IOAS_ALLOC");
  d->ioas = alloc.out_ioas_id;
  char path[512], node[300] = "";
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", g_edu);
  DIR *dir = opendir(path);
  if (!dir) die("opendir %s", path);
  for (struct dirent *e; (e = readdir(dir)) != NULL;) {
    if (strncmp(e->d_name, "vfio", 4) == 0) snprintf(node, sizeof node, "/dev/vfio/devices/%s", e->d_name);
  }
  closedir(dir);
  if (!node[0]) die("no vfio-dev entry under %s", path);
  int fd = xopen(node);
  struct vfio_device_bind_iommufd bind = {.argsz = sizeof bind, .iommufd = d->iommufd};
  xioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind, "VFIO_DEVICE_BIND_IOMMUFD");
  struct vfio_device_attach_iommufd_pt attach = {.argsz = sizeof attach, .pt_id = d->ioas};
  xioctl(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
  return fd;
}

// VFIO_DEVICE_GET_REGION_INFO the way the library asks it: once, and again
// with room for the capability chain when the kernel says it did not fit.
static void region_info(int fd, uint32_t index, struct vfio_region_info *out) {
  struct vfio_region_info info = {.argsz = sizeof info, .index = index};
  xioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &info, "VFIO_DEVICE_GET_REGION_INFO");
  if ((info.flags & VFIO_REGION_INFO_FLAG_CAPS) && info.argsz > sizeof info) {
    struct vfio_region_info *big = calloc(1, info.argsz);
    if (!big) die("calloc");
    big->argsz = info.argsz;
    big->index = index;
    xioctl(fd, VFIO_DEVICE_GET_REGION_INFO, big, "VFIO_DEVICE_GET_REGION_INFO");
    info = *big;
    free(big);
  }
  *out = info;
}

static uint16_t config_read16(struct device *d, unsigned off) {
  uint16_t v;
  if (pread(d->fd, &v, 2, (off_t)(d->config_offset + off)) != 2) die("pread config");
  return v;
}

static void config_write16(struct device *d, unsigned off, uint16_t v) {
  if (pwrite(d->fd, &v, 2, (off_t)(d->config_offset + off)) != 2) die("pwrite config");
}

static void set_command_bits(struct device *d, uint16_t bits) {
  uint16_t cmd = config_read16(d, PCI_COMMAND);
  if ((cmd & bits) != bits) config_write16(d, PCI_COMMAND, cmd | bits);
}

static void enable_msi(struct device *d) {
  struct vfio_irq_info irq = {.argsz = sizeof irq, .index = VFIO_PCI_MSI_IRQ_INDEX};
  xioctl(d->fd, VFIO_DEVICE_GET_IRQ_INFO, &irq, "VFIO_DEVICE_GET_IRQ_INFO");
  if (irq.count < 1 || !(irq.flags & VFIO_IRQ_INFO_EVENTFD)) die("edu has no MSI vector");
  d->irq_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (d->irq_fd < 0) die("eventfd");
  char buf[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
  struct vfio_irq_set *set = (struct vfio_irq_set *)buf;
  *set = (struct vfio_irq_set){
      .argsz = sizeof buf,
      .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
      .index = VFIO_PCI_MSI_IRQ_INDEX,
      .start = 0,
      .count = 1,
  };
  memcpy(set->data, &d->irq_fd, sizeof(int32_t));
  xioctl(d->fd, VFIO_DEVICE_SET_IRQS, set, "VFIO_DEVICE_SET_IRQS");
}

// Bring-up: open the container, assign the device, read its info, map BAR0
// (memory decoding on), enable one MSI vector.
static void bring_up(struct device *d) {
  memset(d, 0, sizeof *d);
  d->container = d->group = d->iommufd = d->irq_fd = -1;
  d->fd = g_mode == MODE_GROUP ? open_container_group(d) : open_container_cdev(d);
  struct vfio_device_info info = {.argsz = sizeof info};
  xioctl(d->fd, VFIO_DEVICE_GET_INFO, &info, "VFIO_DEVICE_GET_INFO");
  if (info.argsz > sizeof info) {  // capability chain: ask again with room, as the library does
    struct vfio_device_info *big = calloc(1, info.argsz);
    if (!big) die("calloc");
    big->argsz = info.argsz;
    xioctl(d->fd, VFIO_DEVICE_GET_INFO, big, "VFIO_DEVICE_GET_INFO");
    free(big);
  }
  if (!(info.flags & VFIO_DEVICE_FLAGS_PCI)) die("edu is not a PCI device?");
  struct vfio_region_info bar0, config;
  region_info(d->fd, VFIO_PCI_BAR0_REGION_INDEX, &bar0);
  region_info(d->fd, VFIO_PCI_CONFIG_REGION_INDEX, &config);
  d->config_offset = config.offset;
  set_command_bits(d, PCI_COMMAND_MEMORY);
  if (!(bar0.flags & VFIO_REGION_INFO_FLAG_MMAP)) die("BAR0 is not mappable");
  void *bar = mmap(NULL, bar0.size, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, (off_t)bar0.offset);
  if (bar == MAP_FAILED) die("mmap BAR0");
  d->bar = bar;
  d->bar_size = bar0.size;
  enable_msi(d);
}

static void tear_down(struct device *d) {
  if (d->irq_fd >= 0) {
    struct vfio_irq_set off = {.argsz = sizeof off,
                               .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                               .index = VFIO_PCI_MSI_IRQ_INDEX};
    xioctl(d->fd, VFIO_DEVICE_SET_IRQS, &off, "VFIO_DEVICE_SET_IRQS (disable)");
    close(d->irq_fd);
  }
  munmap((void *)d->bar, d->bar_size);
  if (g_mode == MODE_CDEV) {
    struct vfio_device_detach_iommufd_pt detach = {.argsz = sizeof detach};
    xioctl(d->fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &detach, "VFIO_DEVICE_DETACH_IOMMUFD_PT");
    close(d->fd);
    close(d->iommufd);
  } else {
    close(d->fd);
    xioctl(d->group, VFIO_GROUP_UNSET_CONTAINER, NULL, "VFIO_GROUP_UNSET_CONTAINER");
    close(d->group);
    close(d->container);
  }
}

// --- DMA ----------------------------------------------------------------------

static void dma_map(struct device *d, void *vaddr, uint64_t iova, uint64_t size) {
  if (g_mode == MODE_GROUP) {
    struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map,
                                           .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                           .vaddr = (uintptr_t)vaddr, .iova = iova, .size = size};
    xioctl(d->container, VFIO_IOMMU_MAP_DMA, &map, "VFIO_IOMMU_MAP_DMA");
  } else {
    struct iommu_ioas_map map = {.size = sizeof map,
                                 .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                                 .ioas_id = d->ioas, .user_va = (uintptr_t)vaddr, .length = size, .iova = iova};
    xioctl(d->iommufd, IOMMU_IOAS_MAP, &map, "IOMMU_IOAS_MAP");
  }
}

// Checks the kernel unmapped exactly what was mapped, as the library does.
static void dma_unmap(struct device *d, uint64_t iova, uint64_t size) {
  if (g_mode == MODE_GROUP) {
    struct vfio_iommu_type1_dma_unmap unmap = {.argsz = sizeof unmap, .iova = iova, .size = size};
    xioctl(d->container, VFIO_IOMMU_UNMAP_DMA, &unmap, "VFIO_IOMMU_UNMAP_DMA");
    if (unmap.size != size) die("unmapped %llu of %llu bytes", (unsigned long long)unmap.size, (unsigned long long)size);
  } else {
    struct iommu_ioas_unmap unmap = {.size = sizeof unmap, .ioas_id = d->ioas, .iova = iova, .length = size};
    xioctl(d->iommufd, IOMMU_IOAS_UNMAP, &unmap, "IOMMU_IOAS_UNMAP");
    if (unmap.length != size) die("unmapped %llu of %llu bytes", (unsigned long long)unmap.length, (unsigned long long)size);
  }
}

// Locked shared anonymous memory, as the library's DMA buffers are.
static void *alloc_locked(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) die("mmap %zu", size);
  if (mlock(p, size) < 0) die("mlock");
  return p;
}

// --- output -------------------------------------------------------------------

struct samples {
  double *v;
  int n;
};

static void emit(const char *name, const char *unit, struct samples s) {
  printf("BENCH {\"impl\":\"c\",\"mode\":\"%s\",\"case\":\"%s\",\"unit\":\"%s\",\"samples\":[", g_mode_name, name, unit);
  for (int i = 0; i < s.n; i++) printf("%s%.1f", i ? "," : "", s.v[i]);
  printf("]}\n");
  fflush(stdout);
  free(s.v);
}

static struct samples new_samples(int n) {
  struct samples s = {calloc((size_t)n, sizeof(double)), n};
  if (!s.v) die("calloc");
  return s;
}

// Warm-up: batches run untimed until BENCH_WARMUP_MS have passed (at least
// one), then `b` timed batches. The TypeScript side does the same with a
// longer warm-up, which its JIT needs (see bench/guest/run.sh).
static double g_warmup_ns;

#define BATCHES(b, body)                                                  \
  do {                                                                    \
    double w0_ = now_ns();                                                \
    do {                                                                  \
      body;                                                               \
    } while (now_ns() - w0_ < g_warmup_ns);                               \
    for (int batch_ = 0; batch_ < (b); batch_++) {                        \
      double t0_ = now_ns();                                              \
      body;                                                               \
      out.v[batch_] = (now_ns() - t0_) / iters;                           \
    }                                                                     \
  } while (0)

// --- the cases ----------------------------------------------------------------

static volatile uint32_t sink;

static void case_region_info(struct device *d, const char *name, int iters, int batches) {
  struct samples out = new_samples(batches);
  struct vfio_region_info info;
  BATCHES(batches, for (int i = 0; i < iters; i++) region_info(d->fd, VFIO_PCI_BAR0_REGION_INDEX, &info));
  emit(name, "op", out);
}

/** map + unmap of `buf` at `iova`, timed; then frees the buffer. */
static void time_map_unmap(struct device *d, const char *name, void *buf, uint64_t iova, size_t size, int iters, int batches) {
  struct samples out = new_samples(batches);
  BATCHES(batches, for (int i = 0; i < iters; i++) {
    dma_map(d, buf, iova, size);
    dma_unmap(d, iova, size);
  });
  munmap(buf, size);
  emit(name, "op", out);
}

static void case_dma(struct device *d, const char *name, size_t size, int iters, int batches) {
  time_map_unmap(d, name, alloc_locked(size), IOVA_FIRST, size, iters, batches);
}

// dma-2m: a 2 MiB buffer on one 2 MiB huge page (the guest's init reserves
// some), as the library's allocDma(size, { hugepages: true }) does: one
// physical page makes the pinning the same work in every run and in both
// programs, where normal pages are as contiguous as the page allocator left
// them in that process (which made the medians of both sides wander by 2x).
// The IOVA is where the library puts a huge-page buffer: the first 2 MiB-
// aligned address of its range. Without a free huge page, normal pages at
// IOVA_FIRST, and a warning (the library falls back alike).
static void case_dma_huge(struct device *d, const char *name, int iters, int batches) {
  size_t size = HUGE_2M;
  void *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
  int huge = buf != MAP_FAILED;
  if (!huge) {
    fprintf(stderr, "bench: no free 2 MiB huge page: dma-2m on normal pages\n");
    buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) die("mmap %zu", size);
  }
  if (mlock(buf, size) < 0) die("mlock");
  time_map_unmap(d, name, buf, huge ? IOVA_HUGE : IOVA_FIRST, size, iters, batches);
}

static void case_mmio(const char *name, volatile uint32_t *p, int write, int iters, int batches) {
  struct samples out = new_samples(batches);
  if (write) {
    BATCHES(batches, for (int i = 0; i < iters; i++) p[EDU_LIVENESS / 4] = (uint32_t)i);
  } else {
    BATCHES(batches, {
      uint32_t sum = 0;
      for (int i = 0; i < iters; i++) sum += p[EDU_LIVENESS / 4];
      sink = sum;
    });
  }
  emit(name, "op", out);
}

// RAM-backed mapped memory: a memfd mapped shared, as a BAR is mapped from
// the device fd (the TypeScript side opens its Region over the same kind of
// mapping).
static volatile uint32_t *map_ram(size_t size, int *fd_out) {
  int fd = memfd_create("bench-ram", MFD_CLOEXEC);
  if (fd < 0) die("memfd_create");
  if (ftruncate(fd, (off_t)size) < 0) die("ftruncate");
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) die("mmap memfd");
  *fd_out = fd;
  return p;
}


static void case_irq(struct device *d, const char *name, int iters) {
  set_command_bits(d, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);  // edu's MSI is a bus-master write
  struct samples out = new_samples(iters);
  struct pollfd pfd = {.fd = d->irq_fd, .events = POLLIN};
  uint64_t count;
  double w0 = now_ns();
  int warm = 1;
  for (int i = 0; i < iters;) {
    double t0 = now_ns();
    d->bar[EDU_IRQ_RAISE / 4] = 1;
    for (;;) {
      int r = poll(&pfd, 1, 5000);
      if (r == 0) die("no interrupt within 5 s");
      if (r < 0 && errno != EINTR) die("poll");
      if (r > 0 && read(d->irq_fd, &count, sizeof count) == sizeof count) break;
    }
    double dt = now_ns() - t0;
    d->bar[EDU_IRQ_ACK / 4] = 1;
    if (warm) warm = now_ns() - w0 < g_warmup_ns;
    else out.v[i++] = dt;
  }
  emit(name, "event", out);
}

static void case_bring_up(const char *name, int iters, int batches) {
  struct samples out = new_samples(batches);
  struct device d;
  // Only the bring-up is timed; the teardown of each one runs outside the clock.
  double w0 = now_ns();
  int warm = 1;
  for (int batch = 0; batch < batches;) {
    double total = 0;
    for (int i = 0; i < iters; i++) {
      double t0 = now_ns();
      bring_up(&d);
      total += now_ns() - t0;
      tear_down(&d);
    }
    if (warm) warm = now_ns() - w0 < g_warmup_ns;
    else out.v[batch++] = total / iters;
  }
  emit(name, "op", out);
}

static void case_first_bring_up(const char *name) {
  struct samples out = new_samples(1);
  struct device d;
  double t0 = now_ns();
  bring_up(&d);
  out.v[0] = now_ns() - t0;
  tear_down(&d);
  emit(name, "op", out);
}

// N live mappings: map N buffers (IOVAs from a bump allocator, which is what
// a C driver would write), then unmap them all. One operation is one buffer's
// map + unmap.
static void case_scale(struct device *d, const char *name, int n, int batches) {
  void **bufs = calloc((size_t)n, sizeof *bufs);
  if (!bufs) die("calloc");
  for (int i = 0; i < n; i++) bufs[i] = alloc_locked(PAGE);
  struct samples out = new_samples(batches);
  int iters = n;
  BATCHES(batches, {
    for (int i = 0; i < n; i++) dma_map(d, bufs[i], IOVA_FIRST + (uint64_t)i * PAGE, PAGE);
    for (int i = 0; i < n; i++) dma_unmap(d, IOVA_FIRST + (uint64_t)i * PAGE, PAGE);
  });
  for (int i = 0; i < n; i++) munmap(bufs[i], PAGE);
  free(bufs);
  emit(name, "op", out);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: bench-c group|cdev EDU CASE:ITERS:BATCHES ...\n");
    return 2;
  }
  if (strcmp(argv[1], "group") == 0) g_mode = MODE_GROUP;
  else if (strcmp(argv[1], "cdev") == 0) g_mode = MODE_CDEV;
  else if (strcmp(argv[1], "host") == 0) g_mode = MODE_HOST;
  else die("unknown mode %s", argv[1]);
  g_mode_name = argv[1];
  g_edu = argv[2];
  const char *warmup = getenv("BENCH_WARMUP_MS");
  g_warmup_ns = (warmup ? atof(warmup) : 0) * 1e6;

  // Cases that set the device up themselves run before the shared device is.
  struct device dev;
  int have_dev = 0;
  for (int a = 3; a < argc; a++) {
    char name[64];
    int iters = 0, batches = 0;
    if (sscanf(argv[a], "%63[^:]:%d:%d", name, &iters, &batches) != 3 || iters < 1 || batches < 1) die("bad case %s", argv[a]);
    if (strcmp(name, "first-bring-up") == 0 || strcmp(name, "bring-up") == 0) {
      if (have_dev) {
        tear_down(&dev);
        have_dev = 0;
      }
      if (name[0] == 'f') case_first_bring_up(name);
      else case_bring_up(name, iters, batches);
      continue;
    }
    // The floor of any system call from each language: getuid(2), which
    // does no work in the kernel (TS: the library's libc binding).
    if (strcmp(name, "ffi-floor") == 0) {
      struct samples out = new_samples(batches);
      BATCHES(batches, for (int i = 0; i < iters; i++) sink += (uint32_t)getuid());
      emit(name, "op", out);
      continue;
    }
    // ram-views-read32 is an informational TypeScript variant (typed-array
    // views): C has one way to read memory.
    if (strncmp(name, "ram-", 4) == 0) {
      if (strcmp(name, "ram-read32") != 0 && strcmp(name, "ram-write32") != 0 && strcmp(name, "ram-views-read32") != 0) die("unknown case %s", name);
      int fd;
      volatile uint32_t *ram = map_ram(PAGE, &fd);
      case_mmio(name, ram, strcmp(name, "ram-write32") == 0, iters, batches);
      munmap((void *)ram, PAGE);
      close(fd);
      continue;
    }
    if (g_mode == MODE_HOST) die("case %s needs the VM's device", name);
    if (!have_dev) {
      bring_up(&dev);
      have_dev = 1;
    }
    if (strcmp(name, "region-info") == 0) case_region_info(&dev, name, iters, batches);
    else if (strcmp(name, "dma-4k") == 0) case_dma(&dev, name, PAGE, iters, batches);
    else if (strcmp(name, "dma-2m") == 0) case_dma_huge(&dev, name, iters, batches);
    else if (strcmp(name, "mmio-read32") == 0) case_mmio(name, dev.bar, 0, iters, batches);
    else if (strcmp(name, "mmio-write32") == 0) case_mmio(name, dev.bar, 1, iters, batches);
    // irq-wait is an informational TypeScript variant (one wait() per
    // interrupt): C has one way to wait.
    // irq-remote is the same work with the MSI on the other CPU (run.sh
    // places it, for both sides alike).
    else if (strcmp(name, "irq") == 0 || strcmp(name, "irq-remote") == 0 || strcmp(name, "irq-wait") == 0) case_irq(&dev, name, iters);
    else if (strcmp(name, "scale-1k") == 0) case_scale(&dev, name, 1000, batches);
    else if (strcmp(name, "scale-10k") == 0) case_scale(&dev, name, 10000, batches);
    else die("unknown case %s", name);
  }
  if (have_dev) tear_down(&dev);
  return 0;
}
