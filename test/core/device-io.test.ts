// The user story of the API sketch, in every mode: a Device opened through the
// core drives edu's DMA engine through its BAR, with a buffer of its container.
import t from 'tap';
import { EDU_ID } from '../../lib/testing/index.js';
import { EDU, MODES, NO_LEAKS, machine, vfioErrorOf } from './harness.js';
import { until } from '../testing/harness.js';

const DMA_BUF = 0x40000n;

for (const mode of MODES) {
  t.test(`${mode}: BAR, config space and a DMA round trip through edu`, async (t) => {
    const { kernel, vfio } = machine(mode);
    t.teardown(() => kernel.dispose());
    let bar: ReturnType<typeof vfio.openDevice>['mapBar'] extends (...a: never[]) => infer R ? R : never;
    {
      using dev = vfio.openDevice(EDU);
      t.equal(dev.mode, mode);
      t.ok(dev.info().pci, 'info() from the Device');
      using bar0 = dev.mapBar(0);
      bar = bar0;
      t.equal(bar0.read32(0x00), EDU_ID, 'edu identifies itself');
      dev.config.setBusMaster(true);
      using buf = dev.container.allocDma(4096, { dmaLimit: 2n ** 28n });
      buf.bytes.fill(0xab, 0, 16);
      // RAM → device buffer.
      bar0.write64(0x80, buf.iova);
      bar0.write64(0x88, DMA_BUF);
      bar0.write64(0x90, 16n);
      bar0.write32(0x98, 0x1);
      // As on QEMU, the engine runs on its own time: the start bit clears when it is done.
      await until('the DMA to the device', () => (bar0.read32(0x98) & 0x1) === 0);
      t.same([...bar0.copyOut(Number(DMA_BUF), 16)], new Array(16).fill(0xff), 'as on QEMU, BAR0 does not show the DMA buffer');
      // Device buffer → RAM, at an offset in the buffer.
      bar0.write64(0x80, DMA_BUF);
      bar0.write64(0x88, buf.iovaAt(2048));
      bar0.write64(0x90, 16n);
      bar0.write32(0x98, 0x1 | 0x2);
      await until('the DMA to RAM', () => (bar0.read32(0x98) & 0x1) === 0);
      t.same([...buf.bytes.subarray(2048, 2064)], new Array(16).fill(0xab), 'the device read the buffer and wrote it back');
    }
    t.match(
      vfioErrorOf(() => bar.read32(0)),
      { code: 'ECLOSED' },
      'the BAR closed with its device',
    );
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('group mode: a device knows the group fds its context holds', async (t) => {
  const { kernel, vfio } = machine('group');
  t.teardown(() => kernel.dispose());
  const a = vfio.openDevice(EDU);
  const other = vfio.createContainer();
  other.assignDevice('0000:00:04.0');
  const state = other.kernelState;
  t.equal(a.groupFd(6), state.mode === 'group' ? state.groups[0]!.fd : -1, 'a group of another container of the context');
  t.equal(a.groupFd(9), null, 'a group nobody holds');
  vfio.close();
});
