// The one way the library issues an ioctl: by the request's uapi name. The
// number comes from the generated uapi modules, and a failure comes back as a
// VfioError that names the request, the file it was issued on and the device
// it concerned (`ioctl VFIO_GROUP_SET_CONTAINER /dev/vfio/3: EBUSY (device
// 0000:00:03.0)`), so no caller has to repeat that bookkeeping. open(2) of a
// VFIO node gets the same treatment (`openFile`).
import { VfioError } from '../base/errors.js';
import type { Fd, Sys } from '../libc/sys.js';
import { ioctls as iommufdIoctls } from './iommufd.js';
import { ioctls as vfioIoctls } from './vfio.js';

/** The name of an ioctl request defined in the generated uapi modules. */
export type IoctlName = keyof typeof vfioIoctls | keyof typeof iommufdIoctls;

// A Map: every ioctl looks its number up here, and a Map answers a lookup by
// a varying string about twice as fast as a plain object's keyed load.
const REQUESTS: ReadonlyMap<string, number> = new Map(Object.entries({ ...vfioIoctls, ...iommufdIoctls }));

/** What the caller knows about the fd: which file it is, which device it concerns. */
export interface IoctlContext {
  readonly path?: string | undefined;
  readonly device?: string | undefined;
}

/** No context: shared, so a call without one allocates nothing. */
const NO_CONTEXT: IoctlContext = Object.freeze({});

function requestNumber(name: IoctlName): number {
  // Every IoctlName is a key (the type is made from the same two objects).
  return REQUESTS.get(name)!;
}

function annotated(err: unknown, name: IoctlName, ctx: IoctlContext): unknown {
  if (err instanceof VfioError) err.annotate({ request: name, path: ctx.path, device: ctx.device });
  return err;
}

/**
 * ioctl(2) with a pointer argument: the kernel reads and writes `arg`.
 * @throws VfioError with `request` set to `name` when the kernel refuses.
 */
export function ioctl(sys: Sys, fd: Fd, name: IoctlName, arg: Uint8Array, ctx: IoctlContext = NO_CONTEXT): number {
  try {
    return sys.ioctl(fd, requestNumber(name), arg);
  } catch (err) {
    throw annotated(err, name, ctx);
  }
}

/**
 * ioctl(2) with an integer argument (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU,
 * and the argument-less requests, which take 0).
 * @throws VfioError with `request` set to `name` when the kernel refuses.
 */
export function ioctlInt(sys: Sys, fd: Fd, name: IoctlName, arg: number | bigint = 0, ctx: IoctlContext = NO_CONTEXT): number {
  try {
    return sys.ioctlInt(fd, requestNumber(name), arg);
  } catch (err) {
    throw annotated(err, name, ctx);
  }
}

/** open(2) that names the device the file belongs to when it fails. */
export function openFile(sys: Sys, path: string, flags: number, device?: string): Fd {
  try {
    return sys.open(path, flags);
  } catch (err) {
    if (err instanceof VfioError) err.annotate({ path, device });
    throw err;
  }
}
