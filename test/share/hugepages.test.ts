// A shareable DMA buffer on 2 MiB huge pages, shared with a secondary (over
// the fake's socket) and with a thread (a ticket): the borrower's DmaBuffer
// says `hugepages: true`, maps the same huge pages, and uses the lender's
// (2 MiB-aligned) IOVA. A grant that says huge pages for a size that is not a
// whole number of them is refused.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVfio, type Vfio } from '../../lib/core/context.js';
import { ShareServer, adoptFromThread, connectPrimary, lendToThread } from '../../lib/share/index.js';
import { FakeKernel, edu, type FakeMode } from '../../lib/testing/index.js';

const EDU = '0000:00:03.0';
const HUGE = 2 * 1024 * 1024;
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };
const MODES: readonly FakeMode[] = ['cdev', 'group', 'noiommu'];

function world(t: Test, mode: FakeMode): { kernel: FakeKernel; primary: Vfio; secondary: Vfio; path: string } {
  const kernel = new FakeKernel({ mode, hugepages: 4, devices: [edu()] });
  const roots = { sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} };
  const dir = mkdtempSync(join(tmpdir(), 'vfio-share-huge-'));
  t.teardown(() => {
    kernel.dispose();
    rmSync(dir, { recursive: true, force: true });
  });
  return { kernel, primary: createVfio(roots), secondary: createVfio(roots), path: join(dir, 'primary.sock') };
}

for (const mode of MODES) {
  t.test(`${mode}: a huge-page buffer imported by a secondary is a huge-page buffer there too`, async (t) => {
    const { kernel, primary, secondary, path } = world(t, mode);
    const c = primary.createContainer({ mode });
    c.assignDevice(EDU);
    // No DMA limit: the fake's huge page frames sit above 64 GiB (their physical address in no-IOMMU mode).
    const huge = c.allocDma(4096, { shareable: true, hugepages: true });
    const small = c.allocDma(4096, { shareable: true });
    t.equal(huge.hugepages, true, 'the lender got huge pages');
    t.equal(huge.size, HUGE);
    if (mode !== 'noiommu') t.equal(huge.iova % BigInt(HUGE), 0n, 'at a 2 MiB-aligned IOVA');
    huge.bytes[HUGE - 1] = 0x5a;
    const server = ShareServer.listen(path, { containers: [c] });
    server.shareBuffer('huge', huge);
    server.shareBuffer('small', small);

    const sec = await connectPrimary(secondary, path);
    const imported = await sec.importBuffer('huge');
    t.equal(imported.hugepages, true, 'importBuffer: hugepages carried by the grant');
    t.equal(imported.size, HUGE, 'the whole huge page');
    t.equal(imported.iova, huge.iova, "the lender's IOVA");
    t.equal(imported.vaddr % BigInt(HUGE), 0n, 'mapped on a huge-page boundary here too');
    t.equal(imported.bytes[HUGE - 1], 0x5a, 'the same pages');
    imported.bytes[0] = 0xa5;
    t.equal(huge.bytes[0], 0xa5, 'both ways');
    t.equal(kernel.hugepagesFree, 3, "the secondary's mapping takes no huge page of its own");
    const plain = await sec.importBuffer('small');
    t.equal(plain.hugepages, false, 'a buffer on normal pages stays one');

    sec.close();
    await server.close();
    primary.close();
    secondary.close();
    t.equal(kernel.hugepagesFree, 4, 'the huge page came back');
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('a thread adopting a huge-page buffer; grants that lie about huge pages are refused', async (t) => {
  const { kernel, primary, secondary } = world(t, 'cdev');
  const c = primary.createContainer({ mode: 'cdev' });
  c.assignDevice(EDU);
  const huge = c.allocDma(HUGE, { shareable: true, hugepages: true });
  const small = c.allocDma(4096, { shareable: true });

  const lease = lendToThread(c, { buffers: { huge } });
  const borrow = adoptFromThread(secondary, structuredClone(lease.ticket));
  t.equal(borrow.buffer('huge').hugepages, true, 'adoptFromThread: hugepages carried by the ticket');
  t.equal(borrow.buffer('huge').iova, huge.iova);
  borrow.close();
  lease.end();

  const bad: [string, (b: Record<string, unknown>) => void, RegExp][] = [
    ['no hugepages field', (b) => delete b['hugepages'], /buffer\.hugepages is not a boolean/],
    ['hugepages not a boolean', (b) => (b['hugepages'] = 1), /buffer\.hugepages is not a boolean/],
    ['huge pages for a 4 KiB buffer', (b) => (b['hugepages'] = true), /buffer\.size 4096 is not a whole number of huge pages/],
  ];
  for (const [what, spoil, message] of bad) {
    const l = lendToThread(c, { buffers: { small } });
    const ticket = structuredClone(l.ticket) as unknown as { buffers: Record<string, unknown>[] };
    spoil(ticket.buffers[0]!);
    const before = kernel.leaks().fds;
    t.throws(() => adoptFromThread(secondary, ticket), { code: 'EPROTO', message }, what);
    t.equal(kernel.leaks().fds, before, `${what}: refused before any fd was taken (none closed)`);
    l.end();
    t.equal(kernel.leaks().fds, before - l.ticket.fds.length, `${what}: the lender took the unadopted ticket back and closed its fds`);
  }
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});
