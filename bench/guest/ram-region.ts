// A Region over RAM, for the `ram-*` cases: the raw access-path cost of
// Region.read32/write32 when the memory behind it costs nothing to reach.
//
// The VM's edu has no RAM-backed BAR, so a memfd stands in for the device fd:
// openRegion maps it exactly as it maps a BAR from a device fd (same Region
// class, same accessors and checks; test/device/region-memfd.test.ts does
// the same). This is the one place the benchmarks reach past lib/index.ts,
// because the public API only builds Regions on devices. The C side maps a
// memfd the same way (bench/c/bench.c, map_ram).
import { VfioError } from '../../lib/base/errors.js';
import { koffiSys as sys } from '../../lib/libc/koffi-sys.js';
import { MFD_CLOEXEC } from '../../lib/libc/sys.js';
import type { DeviceHandle } from '../../lib/device/handle.js';
import { openRegion } from '../../lib/device/region.js';
import type { Region } from '../../lib/index.js';
import { VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE } from '../../lib/uapi/vfio.js';

/** A read-write, fully mapped Region of `size` bytes of RAM; close() frees everything. */
export function ramRegion(size: number): { region: Region; close(): void } {
  const fd = sys.memfdCreate('bench-ram', MFD_CLOEXEC);
  sys.ftruncate(fd, BigInt(size));
  let closed = false;
  const handle: DeviceHandle = {
    sys,
    fd,
    address: '0000:00:00.0',
    mode: 'cdev',
    get closed() {
      return closed;
    },
    assertOpen() {
      if (closed) throw new VfioError({ code: 'ECLOSED', detail: 'the RAM stand-in is closed' });
    },
    info: () => ({ flags: 0, numRegions: 1, numIrqs: 0 }),
    groupFd: () => null,
  };
  const region = openRegion(handle, {
    index: 0,
    name: 'ram',
    size,
    fdOffset: 0n,
    flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
    readable: true,
    writable: true,
    mappable: true,
    sparseAreas: null,
    type: null,
    msixMappable: false,
    capabilities: [],
  });
  return {
    region,
    close() {
      region.close();
      closed = true;
      sys.close(fd);
    },
  };
}
