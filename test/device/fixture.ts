// Test fixture for the device I/O tests: a fake machine and one opened device
// fd, reached straight through the fake kernel's device nodes (cdev: bind to
// an iommufd; group: container + Type1v2 + GET_DEVICE_FD), wrapped in the
// DeviceHandle the device I/O modules take. Independent of lib/core/device.ts, so
// these tests exercise exactly the device I/O layer.
import { FakeKernel, type FakeKernelOptions } from '../../lib/testing/index.js';
import { VfioError } from '../../lib/base/errors.js';
import { O_CLOEXEC, O_RDWR, type Fd, type Sys } from '../../lib/libc/sys.js';
import { alloc, read } from '../../lib/uapi/codec.js';
import {
  VFIO_DEVICE_BIND_IOMMUFD,
  VFIO_DEVICE_GET_INFO,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_SET_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  vfio_device_bind_iommufd,
  vfio_device_info,
} from '../../lib/uapi/vfio.js';
import type { DeviceBasics, DeviceHandle, DeviceMode } from '../../lib/device/handle.js';
import { DeviceIo } from '../../lib/device/index.js';
import { EventfdPoller } from '../../lib/libc/eventfd-poller.js';

/** Device I/O over the rig's bare handle, as lib/core's Device is over its container's fd. */
export class BareDeviceIo extends DeviceIo {
  readonly #h: DeviceHandle;
  constructor(h: DeviceHandle) {
    super();
    this.#h = h;
  }
  get sys(): Sys {
    return this.#h.sys;
  }
  get fd(): Fd {
    return this.#h.fd;
  }
  get address(): string {
    return this.#h.address;
  }
  get mode(): DeviceMode {
    return this.#h.mode;
  }
  get closed(): boolean {
    return this.#h.closed;
  }
  assertOpen(): void {
    this.#h.assertOpen();
  }
  info(): DeviceBasics {
    return this.#h.info();
  }
  groupFd(groupId: number): Fd | null {
    return this.#h.groupFd(groupId);
  }
  /** Closes the device I/O (not the fd). */
  close(): void {
    this.closeIo();
  }
}

export interface Opened {
  readonly handle: DeviceHandle & { close(): void };
  readonly io: BareDeviceIo;
  /** Closes device I/O, then the device fd and what opened it. Idempotent. */
  close(): void;
}

export interface Rig {
  readonly kernel: FakeKernel;
  readonly mode: 'cdev' | 'group';
  open(address?: string): Opened;
  /** Closes everything still open, waits for the poller to stop, removes the fake's tree. */
  dispose(): Promise<void>;
}

export function rig(opts: FakeKernelOptions & { mode?: 'cdev' | 'group' } = {}): Rig {
  const mode = opts.mode ?? 'cdev';
  const kernel = new FakeKernel({ ...opts, mode });
  const sys = kernel.sys;
  const opened: Opened[] = [];
  const groups = new Map<number, Fd>();
  let container: Fd = -1;
  /** cdev mode: one iommufd for every device of the rig (a hot reset needs them in one). */
  let iommufd: Fd = -1;

  const groupOf = (address: string): number => {
    const d = kernel.pciDevices.get(address);
    if (d === undefined) throw new Error(`no device ${address}`);
    return d.desc.group;
  };

  const openGroup = (id: number): Fd => {
    const have = groups.get(id);
    if (have !== undefined) return have;
    if (container < 0) container = sys.open(`${kernel.devRoot}/vfio/vfio`, O_RDWR | O_CLOEXEC);
    const g = sys.open(`${kernel.devRoot}/vfio/${id}`, O_RDWR | O_CLOEXEC);
    const arg = Buffer.alloc(4);
    arg.writeInt32LE(container);
    sys.ioctl(g, VFIO_GROUP_SET_CONTAINER, arg);
    if (groups.size === 0) sys.ioctlInt(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    groups.set(id, g);
    return g;
  };

  const open = (address = '0000:00:03.0'): Opened => {
    let fd: Fd;
    if (mode === 'cdev') {
      const index = kernel.pciDevices.get(address)?.vfioIndex;
      fd = sys.open(`${kernel.devRoot}/vfio/devices/vfio${index}`, O_RDWR | O_CLOEXEC);
      if (iommufd < 0) iommufd = sys.open(`${kernel.devRoot}/iommu`, O_RDWR | O_CLOEXEC);
      sys.ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, alloc(vfio_device_bind_iommufd, { argsz: vfio_device_bind_iommufd.size, iommufd }));
    } else {
      const g = openGroup(groupOf(address));
      fd = sys.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${address}\0`, 'latin1'));
    }
    let closed = false;
    let basics: DeviceBasics | null = null;
    const handle = {
      sys,
      fd,
      address,
      mode,
      get closed() {
        return closed;
      },
      assertOpen() {
        if (closed) throw new VfioError({ code: 'ECLOSED', device: address, detail: 'device is closed' });
      },
      info(): DeviceBasics {
        if (basics === null) {
          const buf = alloc(vfio_device_info, { argsz: vfio_device_info.size });
          sys.ioctl(fd, VFIO_DEVICE_GET_INFO, buf);
          const i = read(vfio_device_info, buf);
          basics = { flags: i.flags, numRegions: i.num_regions, numIrqs: i.num_irqs };
        }
        return basics;
      },
      groupFd(id: number): Fd | null {
        return mode === 'group' ? (groups.get(id) ?? null) : null;
      },
      close() {
        if (closed) return;
        closed = true;
        sys.close(fd);
      },
    };
    const io = new BareDeviceIo(handle);
    const o: Opened = {
      handle,
      io,
      close() {
        try {
          io.close();
        } finally {
          handle.close();
        }
      },
    };
    opened.push(o);
    return o;
  };

  return {
    kernel,
    mode,
    open,
    async dispose() {
      for (const o of opened) o.close();
      for (const g of groups.values()) sys.close(g);
      groups.clear();
      if (container >= 0) sys.close(container);
      container = -1;
      if (iommufd >= 0) sys.close(iommufd);
      iommufd = -1;
      await EventfdPoller.of(sys).idle();
      kernel.dispose();
    },
  };
}
