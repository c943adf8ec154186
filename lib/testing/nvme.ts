// An NVMe controller shaped like QEMU's `nvme` (hw/nvme/ctrl.c, QEMU 7.2,
// the VM tier's): vendor 0x1b36 device 0x0010 (Red Hat), class 0x010802,
// PCIe with FLR, one 16 KiB BAR0 holding the registers (0x0-0xfff), the
// doorbells (from 0x1000, stride 4: CAP.DSTRD 0), the MSI-X table at 0x2000
// and its PBA at 0x3000, 65 MSI-X vectors (one per queue pair, admin
// included), and one namespace kept in memory. Facts from the NVMe Base
// Specification 1.4 (what QEMU 7.2 implements) and from ctrl.c where QEMU
// chooses:
//
// - Registers. CAP (MQES 2047, CQR, TO, DSTRD 0, NVM command set, MPSMIN 0,
//   MPSMAX 4), VS 1.4, CC, CSTS (RDY, CFS, SHST), AQA, ASQ, ACQ. Setting
//   CC.EN checks the admin queue registers and CC's MPS/IOSQES/IOCQES and
//   sets CSTS.CFS when they are wrong (nvme_start_ctrl); otherwise CSTS.RDY
//   comes `readyMs` later (QEMU: at once; a driver must poll it within
//   CAP.TO either way). Clearing CC.EN resets the controller: every queue
//   goes, CSTS is 0. CC.SHN sets CSTS.SHST to "complete".
// - Admin commands: Delete/Create I/O SQ and CQ, Identify (controller,
//   namespace, active namespace list), Set/Get Features (Number of Queues;
//   others are accepted and ignored), and nothing else (Invalid Command
//   Opcode). I/O commands: Flush, Write, Read, with PRP1/PRP2 and PRP lists
//   (chained through a list page's last entry), up to MDTS (2^mdts pages of
//   CAP.MPSMIN), on namespace 1.
// - Status codes returned: Invalid Command Opcode, Invalid Field in Command,
//   Data Transfer Error (a PRP that faults), Invalid Namespace, Invalid PRP
//   Offset, LBA Out of Range (generic); Completion Queue Invalid, Invalid
//   Queue Identifier, Invalid Queue Size, Invalid Queue Deletion, Invalid
//   Interrupt Vector (command specific).
// - Interrupts, with QEMU's quirk: a completion queue's MSI-X vector is put
//   to use (msix_vector_use) only if MSI-X is enabled when the queue is
//   created, the admin queue's at CC.EN; a notification on a vector not in
//   use is dropped by QEMU's msix_notify. So a driver must enable MSI-X
//   before it enables the controller, as Linux's nvme driver does. Without
//   MSI-X: MSI vector 0 if enabled, else INTx asserted while a queue with
//   interrupts on has entries the host has not consumed.
// - SR-IOV (`nvmeSriov`: QEMU's `sriov_max_vfs`, `sriov_vq_flexible`,
//   `sriov_vi_flexible`, `sriov_max_vq_per_vf`, `sriov_max_vi_per_vf`, with
//   QEMU's rules from ctrl.c): the PF answers Identify CNS 15h (Secondary
//   Controller List) and Virtualization Management (1Ch). Its flexible
//   queues and vectors start allocated to itself; "primary allocate N"
//   takes effect at its next function reset (FLR), which also takes every
//   secondary controller offline. A secondary controller is given resources
//   while offline (at most the per-VF maxima and what is free), and goes
//   online only with at least 2 queues (admin + 1) and 1 vector and its VF
//   present. A VF whose secondary controller is offline reads 0 in every
//   register but CSTS, which says CFS, and ignores every store; online, it
//   is a controller with `queues - 1` I/O queue pairs. Not modelled: QEMU
//   7.2's loss of the VFs at a PF FLR (a QEMU bug, see test/vm/README.md).
// - Time: commands are fetched when the device sees the doorbell (its next
//   tick: device-model.ts), never inside the store that rang it, and
//   complete in that tick. A completion queue that is full holds its
//   submission queues back until the host frees entries.
//
// Through a mapping the model sees stores as changed bytes at its next tick,
// as for edu: doorbells show the last value written (QEMU reads them as 0
// through pread), which is what makes a new tail visible; CC is the only
// control register whose change acts; CAP, VS and CSTS are shown again at
// every tick, undoing stores to them.
import type { AccessWidth, DeviceContext, DeviceModel } from './device-model.js';
import { pciDevice, type PciDeviceDescription, type PciDeviceSpec } from './pci-spec.js';

/** QEMU's nvme PCI identity. */
export const NVME_VENDOR = 0x1b36;
export const NVME_DEVICE = 0x0010;
/** Mass storage, non-volatile memory controller, NVM Express. */
export const NVME_CLASS = 0x010802;

const REG = { cap: 0x00, vs: 0x08, intms: 0x0c, intmc: 0x10, cc: 0x14, csts: 0x1c, aqa: 0x24, asq: 0x28, acq: 0x30 } as const;
/** Bytes of register space shown through a mapping (the rest up to the doorbells reads 0). */
const REG_WINDOW = 0x40;
const DOORBELLS = 0x1000;
const BAR0_SIZE = 16384;
const MSIX_TABLE = 0x2000;
const MSIX_PBA = 0x3000;
const MQES = 2047;
const PAGE_MIN = 4096;

const CC_EN = 1;
const CSTS_RDY = 1;
const CSTS_CFS = 2;
const CSTS_SHST_COMPLETE = 2 << 2;

/** Status code type (SCT) << 8 | status code (SC), as the completion's status field holds them. */
export const NVME_STATUS = {
  success: 0x000,
  invalidOpcode: 0x001,
  invalidField: 0x002,
  dataTransferError: 0x004,
  invalidNamespace: 0x00b,
  invalidPrpOffset: 0x013,
  lbaOutOfRange: 0x080,
  cqInvalid: 0x100,
  invalidQid: 0x101,
  invalidQueueSize: 0x102,
  invalidVector: 0x108,
  invalidQueueDeletion: 0x10c,
  invalidControllerId: 0x11f,
  invalidSecondaryControllerState: 0x120,
  invalidNumberOfResources: 0x121,
  invalidResourceId: 0x122,
} as const;
/** Do Not Retry: set on every error this model returns (none is transient). */
const DNR = 0x4000;

const ADMIN = {
  deleteSq: 0x00,
  createSq: 0x01,
  deleteCq: 0x04,
  createCq: 0x05,
  identify: 0x06,
  setFeatures: 0x09,
  getFeatures: 0x0a,
  virtualizationManagement: 0x1c,
} as const;
const IO = { flush: 0x00, write: 0x01, read: 0x02 } as const;
const FEATURE_NUM_QUEUES = 0x07;

export interface NvmeOptions extends Partial<Omit<PciDeviceSpec, 'vendor' | 'device' | 'class' | 'bars' | 'model' | 'irqs'>> {
  /** Identify Controller's serial number (QEMU: `-device nvme,serial=...`). Default 'fake-nvme-0'. */
  readonly serial?: string;
  /** Identify Controller's model number. Default QEMU's, 'QEMU NVMe Ctrl'. */
  readonly modelNumber?: string;
  /** Namespace 1's size in logical blocks of 512 bytes. Default 32768 (16 MiB; memory is allocated as it is written). */
  readonly blocks?: number;
  /** Maximum Data Transfer Size, log2 of pages of 4 KiB; 0 means no limit. Default 7 (512 KiB), QEMU's. */
  readonly mdts?: number;
  /** I/O queue pairs the controller offers (QEMU's max_ioqpairs). Default 64; MSI-X vectors are this + 1. */
  readonly ioQueuePairs?: number;
  /** CAP.TO, in 500 ms units. Default 15 (7.5 s), QEMU's. */
  readonly timeout?: number;
  /** Milliseconds from CC.EN until CSTS.RDY (default 1); Infinity: never ready. */
  readonly readyMs?: number;
}

interface Sq {
  readonly id: number;
  readonly base: bigint;
  readonly size: number;
  readonly cqid: number;
  head: number;
  tail: number;
}

interface Cq {
  readonly id: number;
  readonly base: bigint;
  readonly size: number;
  readonly ien: boolean;
  readonly vector: number;
  /** msix_vector_use was called: MSI-X was enabled when the queue was created. */
  readonly wired: boolean;
  head: number;
  tail: number;
  phase: number;
}

class NvmeError extends Error {
  constructor(readonly status: number) {
    super(`status 0x${status.toString(16)}`);
  }
}

const CHUNK = 65536;

class NvmeModel implements DeviceModel {
  private cc = 0;
  private csts = 0;
  private readyAt: number | null = null;
  private sqs = new Map<number, Sq>();
  private cqs = new Map<number, Cq>();
  /** Queue pairs granted by Set Features (Number of Queues); QEMU starts at its maximum. */
  private grantedPairs: number;
  private readonly shown = new Uint8Array(REG_WINDOW);
  /** The doorbells as last seen: a store through a mapping is a difference from them. */
  private readonly bells: Uint32Array;
  /** Namespace 1's data, CHUNK bytes at a time, allocated on first write (reads of the rest give zeros). */
  private readonly data = new Map<number, Uint8Array>();
  private intxAsserted = false;
  /** Doorbells written through pwrite since the last tick. */
  private readonly rung = new Set<number>();

  constructor(
    private readonly o: Required<Omit<NvmeOptions, keyof PciDeviceSpec>>,
    /** SR-IOV: the PF's resource books, and which of its VFs this is (1-based; 0: the PF itself). */
    private readonly sriov: { readonly books: SriovBooks; readonly vfn: number } | null = null,
  ) {
    this.grantedPairs = this.maxPairs;
    this.bells = new Uint32Array(2 * (o.ioQueuePairs + 1));
  }

  /** I/O queue pairs the controller has now: a PF's private plus its flexible share, a VF's assigned queues less its admin queue. */
  private get maxPairs(): number {
    if (this.sriov === null) return this.o.ioQueuePairs;
    const { books, vfn } = this.sriov;
    return vfn === 0 ? books.primaryPairs : Math.max(books.secondary[vfn - 1]!.nvq - 1, 0);
  }

  /** A VF whose secondary controller is offline: registers read 0 but CSTS (CFS), stores are ignored (QEMU 7.2). */
  private get offline(): boolean {
    return this.sriov !== null && this.sriov.vfn !== 0 && !this.sriov.books.secondary[this.sriov.vfn - 1]!.online;
  }

  private get cap(): bigint {
    const mpsmax = 4n;
    return (
      BigInt(MQES) | // MQES (0's based)
      (1n << 16n) | // CQR: queues must be physically contiguous
      (BigInt(this.o.timeout) << 24n) |
      (1n << 37n) | // CSS: the NVM command set
      (0n << 48n) | // MPSMIN: 4 KiB
      (mpsmax << 52n)
    );
  }

  reset(ctx: DeviceContext): void {
    // A PF's FLR takes its secondary controllers offline and applies its next flexible allocation (nvme_ctrl_reset).
    if (this.sriov?.vfn === 0) this.sriov.books.functionReset();
    // A function reset (FLR) resets the controller; the namespace's data is on the "disk" and stays.
    this.controllerReset(ctx);
    this.cc = 0;
    this.bells.fill(0);
    ctx.bar(0).fill(0, 0, MSIX_TABLE);
    this.publish(ctx);
  }

  tick(ctx: DeviceContext): void {
    if (this.readyAt !== null) {
      if (ctx.now() >= this.readyAt) this.becomeReady(ctx);
      else if (Number.isFinite(this.readyAt)) ctx.wakeAt(this.readyAt);
    }
    this.absorb(ctx);
    this.publish(ctx);
  }

  read(ctx: DeviceContext, bar: number, offset: number, width: AccessWidth): bigint {
    if (bar !== 0 || offset % width !== 0) return 0n;
    if (offset >= DOORBELLS) return 0n; // QEMU: doorbells are write-only and read as 0
    if (this.offline && offset !== REG.csts) return 0n;
    const mem = ctx.bar(0);
    let v = 0n;
    for (let i = width - 1; i >= 0; i--) v = (v << 8n) | BigInt(mem[offset + i]!);
    return v;
  }

  write(ctx: DeviceContext, bar: number, offset: number, width: AccessWidth, value: bigint): void {
    if (bar !== 0 || offset % width !== 0 || this.offline) return;
    const mem = ctx.bar(0);
    for (let i = 0; i < width; i++) mem[offset + i] = Number((value >> BigInt(8 * i)) & 0xffn);
    // A doorbell written through pwrite counts even when it repeats the last value.
    if (offset >= DOORBELLS && offset < DOORBELLS + this.bells.length * 4) this.rung.add((offset - DOORBELLS) >> 2);
    // The controller acts at its next tick, never inside the store (as QEMU's bottom halves).
    ctx.wakeAt(ctx.now());
  }

  // ---- registers ----

  private publish(ctx: DeviceContext): void {
    const dv = new DataView(ctx.bar(0).buffer, ctx.bar(0).byteOffset, REG_WINDOW);
    if (this.offline) {
      // Through a mapping too: stores are undone, every register reads 0 but CSTS.
      ctx.bar(0).fill(0, 0, REG_WINDOW);
      this.cc = 0;
      dv.setUint32(REG.csts, CSTS_CFS, true);
      this.shown.set(ctx.bar(0).subarray(0, REG_WINDOW));
      return;
    }
    dv.setBigUint64(REG.cap, this.cap, true);
    dv.setUint32(REG.vs, 0x00010400, true);
    dv.setUint32(REG.cc, this.cc, true);
    dv.setUint32(REG.csts, this.csts, true);
    this.shown.set(ctx.bar(0).subarray(0, REG_WINDOW));
  }

  private absorb(ctx: DeviceContext): void {
    if (this.offline) return;
    const mem = ctx.bar(0);
    const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
    const cc = dv.getUint32(REG.cc, true);
    if (cc !== this.cc) this.writeCc(ctx, cc, dv);
    const changed: number[] = [];
    for (let i = 0; i < this.bells.length; i++) {
      const v = dv.getUint32(DOORBELLS + 4 * i, true);
      if (v !== this.bells[i] || this.rung.has(i)) {
        this.bells[i] = v;
        changed.push(i);
      }
    }
    this.rung.clear();
    if (changed.length === 0) return;
    // CQ heads first: they may free room that held a submission queue back.
    for (const i of changed.filter((i) => i % 2 === 1)) this.cqHead(ctx, (i - 1) / 2, this.bells[i]!);
    for (const i of changed.filter((i) => i % 2 === 0)) this.sqTail(ctx, i / 2, this.bells[i]!);
    this.run(ctx);
  }

  private writeCc(ctx: DeviceContext, cc: number, dv: DataView): void {
    const was = this.cc;
    this.cc = cc;
    if ((was & CC_EN) !== 0 && (cc & CC_EN) === 0) {
      this.controllerReset(ctx);
      return;
    }
    const shn = (cc >> 14) & 3;
    if (shn !== 0 && ((was >> 14) & 3) === 0) {
      // nvme_ctrl_shutdown: queues go, shutdown processing complete at once.
      this.dropQueues(ctx);
      this.csts = (this.csts & ~(3 << 2)) | CSTS_SHST_COMPLETE;
      return;
    }
    if (shn === 0) this.csts &= ~(3 << 2);
    if ((was & CC_EN) === 0 && (cc & CC_EN) !== 0) {
      // nvme_start_ctrl's checks.
      const aqa = dv.getUint32(REG.aqa, true);
      const asq = dv.getBigUint64(REG.asq, true);
      const acq = dv.getBigUint64(REG.acq, true);
      const mps = (cc >> 7) & 0xf;
      const why =
        (cc >> 4) & 7
          ? 'CC.CSS is not the NVM command set'
          : mps > 4
            ? `CC.MPS ${mps} above CAP.MPSMAX 4`
            : ((cc >> 16) & 0xf) !== 6 || ((cc >> 20) & 0xf) !== 4
              ? 'CC.IOSQES/IOCQES are not 6/4 (64-byte commands, 16-byte completions)'
              : asq === 0n || acq === 0n
                ? 'ASQ or ACQ is 0'
                : (asq | acq) & BigInt((PAGE_MIN << mps) - 1)
                  ? 'ASQ or ACQ is not aligned to the memory page size'
                  : (aqa & 0xfff) === 0 || ((aqa >> 16) & 0xfff) === 0
                    ? 'AQA gives an admin queue of 1 entry'
                    : null;
      if (why !== null) {
        ctx.log(`nvme: CC.EN refused: ${why}; CSTS.CFS set`);
        this.csts = CSTS_CFS;
        return;
      }
      this.readyAt = ctx.now() + this.o.readyMs;
      if (Number.isFinite(this.readyAt)) ctx.wakeAt(this.readyAt);
    }
  }

  private becomeReady(ctx: DeviceContext): void {
    this.readyAt = null;
    const mem = ctx.bar(0);
    const dv = new DataView(mem.buffer, mem.byteOffset, REG_WINDOW);
    const aqa = dv.getUint32(REG.aqa, true);
    this.cqs.set(0, this.newCq(ctx, 0, dv.getBigUint64(REG.acq, true), ((aqa >> 16) & 0xfff) + 1, true, 0));
    this.sqs.set(0, { id: 0, base: dv.getBigUint64(REG.asq, true), size: (aqa & 0xfff) + 1, cqid: 0, head: 0, tail: 0 });
    this.csts = CSTS_RDY;
  }

  private newCq(ctx: DeviceContext, id: number, base: bigint, size: number, ien: boolean, vector: number): Cq {
    const wired = ctx.msixEnabled;
    if (ien && !wired) ctx.log(`nvme: CQ ${id} created with MSI-X off: its vector ${vector} is not in use (QEMU's msix_vector_use)`);
    return { id, base, size, ien, vector, wired, head: 0, tail: 0, phase: 1 };
  }

  private dropQueues(ctx: DeviceContext): void {
    this.sqs.clear();
    this.cqs.clear();
    this.bells.fill(0);
    ctx.bar(0).fill(0, DOORBELLS, DOORBELLS + this.bells.length * 4);
    this.updateIntx(ctx);
  }

  private controllerReset(ctx: DeviceContext): void {
    this.dropQueues(ctx);
    this.readyAt = null;
    this.csts = 0;
    this.grantedPairs = this.maxPairs;
  }

  private get pageSize(): number {
    return PAGE_MIN << ((this.cc >> 7) & 0xf);
  }

  // ---- queues ----

  private sqTail(ctx: DeviceContext, qid: number, tail: number): void {
    const sq = this.sqs.get(qid);
    if (sq === undefined || tail >= sq.size) {
      ctx.log(`nvme: doorbell write to SQ ${qid} (tail ${tail}): no such queue or tail past its end, ignored`);
      return;
    }
    sq.tail = tail;
  }

  private cqHead(ctx: DeviceContext, qid: number, head: number): void {
    const cq = this.cqs.get(qid);
    if (cq === undefined || head >= cq.size) {
      ctx.log(`nvme: doorbell write to CQ ${qid} (head ${head}): no such queue or head past its end, ignored`);
      return;
    }
    cq.head = head;
    this.updateIntx(ctx);
  }

  /** Fetches and executes commands while some submission queue has one and its completion queue has room. */
  private run(ctx: DeviceContext): void {
    if ((this.csts & CSTS_RDY) === 0 || !ctx.busMaster) return;
    const notify = new Set<Cq>();
    for (let progress = true; progress; ) {
      progress = false;
      for (const sq of [...this.sqs.values()]) {
        const cq = this.cqs.get(sq.cqid);
        if (cq === undefined || sq.head === sq.tail || (cq.tail + 1) % cq.size === cq.head) continue;
        let cmd: Uint8Array;
        try {
          cmd = ctx.dmaRead(sq.base + BigInt(sq.head * 64), 64);
        } catch (e) {
          // nvme_process_sq: a command it cannot fetch stops that queue.
          ctx.log(`nvme: cannot fetch SQ ${sq.id} entry ${sq.head}: ${(e as Error).message}`);
          continue;
        }
        sq.head = (sq.head + 1) % sq.size;
        const { status, dw0 } = this.execute(ctx, sq.id, cmd);
        const cqe = new DataView(new ArrayBuffer(16));
        cqe.setUint32(0, dw0, true);
        cqe.setUint16(8, sq.head, true);
        cqe.setUint16(10, sq.id, true);
        cqe.setUint16(12, new DataView(cmd.buffer, cmd.byteOffset).getUint16(2, true), true);
        cqe.setUint16(14, ((status === 0 ? 0 : status | DNR) << 1) | cq.phase, true);
        // The queue may be gone if the command deleted it (an SQ deleting itself is refused, a CQ is not).
        try {
          ctx.dmaWrite(cq.base + BigInt(cq.tail * 16), new Uint8Array(cqe.buffer));
        } catch (e) {
          // nvme_post_cqes: a completion it cannot write is a controller fatal status.
          ctx.log(`nvme: cannot post to CQ ${cq.id}: ${(e as Error).message}; CSTS.CFS set`);
          this.csts |= CSTS_CFS;
          return;
        }
        cq.tail = (cq.tail + 1) % cq.size;
        if (cq.tail === 0) cq.phase ^= 1;
        if (cq.ien) notify.add(cq);
        progress = true;
      }
    }
    for (const cq of notify) this.interrupt(ctx, cq);
  }

  private interrupt(ctx: DeviceContext, cq: Cq): void {
    if (ctx.msixEnabled) {
      if (cq.wired) ctx.raise('msix', cq.vector);
      else ctx.log(`nvme: CQ ${cq.id}'s vector ${cq.vector} is not in use: notification dropped (QEMU's msix_notify)`);
    } else if (ctx.msiEnabled) ctx.raise('msi', 0);
    else this.updateIntx(ctx);
  }

  private updateIntx(ctx: DeviceContext): void {
    if (ctx.msixEnabled || ctx.msiEnabled) return;
    const pending = [...this.cqs.values()].some((c) => c.ien && c.head !== c.tail);
    if (pending && !this.intxAsserted) ctx.raise('intx');
    if (!pending && this.intxAsserted) ctx.lowerIntx();
    this.intxAsserted = pending;
  }

  private execute(ctx: DeviceContext, sqid: number, cmd: Uint8Array): { status: number; dw0: number } {
    const dv = new DataView(cmd.buffer, cmd.byteOffset, 64);
    try {
      const dw0 = sqid === 0 ? this.admin(ctx, dv) : this.io(ctx, dv);
      return { status: 0, dw0 };
    } catch (e) {
      if (!(e instanceof NvmeError)) throw e;
      return { status: e.status, dw0: 0 };
    }
  }

  private admin(ctx: DeviceContext, c: DataView): number {
    const opcode = c.getUint8(0);
    const cdw10 = c.getUint32(40, true);
    const cdw11 = c.getUint32(44, true);
    const qid = cdw10 & 0xffff;
    const qsize = (cdw10 >>> 16) + 1;
    const prp1 = c.getBigUint64(24, true);
    switch (opcode) {
      case ADMIN.createCq: {
        if (qid === 0 || qid > this.grantedPairs || this.cqs.has(qid)) throw new NvmeError(NVME_STATUS.invalidQid);
        if (qsize < 2 || qsize > MQES + 1) throw new NvmeError(NVME_STATUS.invalidQueueSize);
        const vector = cdw11 >>> 16;
        if (vector > this.maxPairs) throw new NvmeError(NVME_STATUS.invalidVector);
        if ((cdw11 & 1) === 0 || prp1 === 0n || prp1 % BigInt(this.pageSize) !== 0n) throw new NvmeError(NVME_STATUS.invalidField);
        this.cqs.set(qid, this.newCq(ctx, qid, prp1, qsize, (cdw11 & 2) !== 0, vector));
        return 0;
      }
      case ADMIN.createSq: {
        if (qid === 0 || qid > this.grantedPairs || this.sqs.has(qid)) throw new NvmeError(NVME_STATUS.invalidQid);
        if (qsize < 2 || qsize > MQES + 1) throw new NvmeError(NVME_STATUS.invalidQueueSize);
        const cqid = cdw11 >>> 16;
        if (cqid === 0 || !this.cqs.has(cqid)) throw new NvmeError(NVME_STATUS.cqInvalid);
        if ((cdw11 & 1) === 0 || prp1 === 0n || prp1 % BigInt(this.pageSize) !== 0n) throw new NvmeError(NVME_STATUS.invalidField);
        this.sqs.set(qid, { id: qid, base: prp1, size: qsize, cqid, head: 0, tail: 0 });
        return 0;
      }
      case ADMIN.deleteSq:
        if (qid === 0 || !this.sqs.delete(qid)) throw new NvmeError(NVME_STATUS.invalidQid);
        this.setBell(ctx, 2 * qid, 0);
        return 0;
      case ADMIN.deleteCq:
        if (qid === 0 || !this.cqs.has(qid)) throw new NvmeError(NVME_STATUS.invalidQid);
        if ([...this.sqs.values()].some((s) => s.cqid === qid)) throw new NvmeError(NVME_STATUS.invalidQueueDeletion);
        this.cqs.delete(qid);
        this.setBell(ctx, 2 * qid + 1, 0);
        this.updateIntx(ctx);
        return 0;
      case ADMIN.identify:
        return this.identify(ctx, c, cdw10 & 0xff);
      case ADMIN.virtualizationManagement:
        // QEMU: a controller without SR-IOV has no secondary controller to name.
        if (this.sriov?.vfn !== 0) throw new NvmeError(NVME_STATUS.invalidControllerId);
        return this.sriov.books.manage(cdw10 & 0xf, (cdw10 >> 8) & 7, cdw10 >>> 16, cdw11 & 0xffff);
      case ADMIN.setFeatures:
      case ADMIN.getFeatures: {
        if ((cdw10 & 0xff) !== FEATURE_NUM_QUEUES) return 0;
        if (opcode === ADMIN.setFeatures) {
          const nsq = (cdw11 & 0xffff) + 1;
          const ncq = (cdw11 >>> 16) + 1;
          if (nsq === 0x10000 || ncq === 0x10000) throw new NvmeError(NVME_STATUS.invalidField);
          this.grantedPairs = Math.min(this.maxPairs, Math.max(nsq, ncq));
        }
        // Allocated counts, 0's based (QEMU answers its maximum whatever was asked).
        return (((this.grantedPairs - 1) << 16) | (this.grantedPairs - 1)) >>> 0;
      }
      default:
        throw new NvmeError(NVME_STATUS.invalidOpcode);
    }
  }

  private setBell(ctx: DeviceContext, i: number, v: number): void {
    this.bells[i] = v;
    new DataView(ctx.bar(0).buffer, ctx.bar(0).byteOffset).setUint32(DOORBELLS + 4 * i, v, true);
  }

  private identify(ctx: DeviceContext, c: DataView, cns: number): number {
    const page = new Uint8Array(4096);
    const dv = new DataView(page.buffer);
    const nsid = c.getUint32(4, true);
    const ascii = (at: number, len: number, s: string): void => {
      page.fill(0x20, at, at + len); // space padded
      for (let i = 0; i < Math.min(len, s.length); i++) page[at + i] = s.charCodeAt(i) & 0x7f;
    };
    if (cns === 1) {
      dv.setUint16(0, NVME_VENDOR, true);
      dv.setUint16(2, 0x1af4, true);
      ascii(4, 20, this.o.serial);
      ascii(24, 40, this.o.modelNumber);
      ascii(64, 8, '7.2.0');
      page[77] = this.o.mdts;
      // CNTLID: a primary's (or a lone controller's) is 0; a VF's is its secondary controller id.
      const vfn = this.sriov?.vfn ?? 0;
      dv.setUint16(78, vfn === 0 ? 0 : this.sriov!.books.secondary[vfn - 1]!.scid, true);
      dv.setUint32(80, 0x00010400, true); // VER
      page[512] = 0x66; // SQES: 64-byte entries
      page[513] = 0x44; // CQES: 16-byte entries
      dv.setUint32(516, 1, true); // NN
    } else if (cns === 0) {
      if (nsid !== 1) throw new NvmeError(NVME_STATUS.invalidNamespace);
      const n = BigInt(this.o.blocks);
      dv.setBigUint64(0, n, true); // NSZE
      dv.setBigUint64(8, n, true); // NCAP
      dv.setBigUint64(16, n, true); // NUSE
      page[25] = 0; // NLBAF: one format
      page[26] = 0; // FLBAS: format 0
      dv.setUint32(128, 9 << 16, true); // LBAF0: 512-byte blocks, no metadata
    } else if (cns === 2) {
      if (nsid < 1) dv.setUint32(0, 1, true); // namespaces above nsid: just 1
    } else if (cns === 0x15 && this.sriov?.vfn === 0) {
      this.sriov.books.list(dv);
    } else throw new NvmeError(NVME_STATUS.invalidField);
    this.transfer(ctx, c, page.byteLength, (bus, off, len) => ctx.dmaWrite(bus, page.subarray(off, off + len)));
    return 0;
  }

  private io(ctx: DeviceContext, c: DataView): number {
    const opcode = c.getUint8(0);
    if (opcode !== IO.flush && opcode !== IO.read && opcode !== IO.write) throw new NvmeError(NVME_STATUS.invalidOpcode);
    if (c.getUint32(4, true) !== 1) throw new NvmeError(NVME_STATUS.invalidNamespace);
    if (opcode === IO.flush) return 0;
    const slba = c.getBigUint64(40, true);
    const nlb = (c.getUint32(48, true) & 0xffff) + 1;
    if (slba + BigInt(nlb) > BigInt(this.o.blocks)) throw new NvmeError(NVME_STATUS.lbaOutOfRange);
    const length = nlb * 512;
    if (this.o.mdts !== 0 && length > PAGE_MIN << this.o.mdts) throw new NvmeError(NVME_STATUS.invalidField);
    const at = Number(slba) * 512;
    this.transfer(ctx, c, length, (bus, off, len) => {
      if (opcode === IO.write) this.store(at + off, ctx.dmaRead(bus, len));
      else ctx.dmaWrite(bus, this.load(at + off, len));
    });
    return 0;
  }

  /**
   * Walks the data pointer of a command (PRP1, PRP2, PRP lists) for `length`
   * bytes and calls `seg` for each piece: device address, offset in the
   * transfer, length. A PRP fault is a Data Transfer Error.
   */
  private transfer(ctx: DeviceContext, c: DataView, length: number, seg: (bus: bigint, off: number, len: number) => void): void {
    const page = this.pageSize;
    const P = BigInt(page);
    const prp1 = c.getBigUint64(24, true);
    const prp2 = c.getBigUint64(32, true);
    if (c.getUint8(1) >> 6 !== 0) throw new NvmeError(NVME_STATUS.invalidField); // PSDT: SGLs are not offered
    if (prp1 & 3n) throw new NvmeError(NVME_STATUS.invalidPrpOffset);
    const entries: bigint[] = [prp1];
    const first = Math.min(length, page - Number(prp1 % P));
    const more = Math.ceil((length - first) / page);
    try {
      if (more === 1) entries.push(prp2);
      else if (more > 1) {
        // PRP2 points at a list; each list page's last entry chains to the next list page.
        if (prp2 & 7n) throw new NvmeError(NVME_STATUS.invalidPrpOffset);
        let list = prp2;
        let left = more;
        while (left > 0) {
          const room = Number((P - (list % P)) / 8n);
          const take = left > room ? room - 1 : left;
          const raw = ctx.dmaRead(list, (left > room ? room : take) * 8);
          const ldv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
          for (let i = 0; i < take; i++) entries.push(ldv.getBigUint64(i * 8, true));
          left -= take;
          if (left > 0) list = ldv.getBigUint64((room - 1) * 8, true);
          if (list & 7n) throw new NvmeError(NVME_STATUS.invalidPrpOffset);
        }
      }
      let off = 0;
      entries.forEach((bus, i) => {
        if (i > 0 && bus % P !== 0n) throw new NvmeError(NVME_STATUS.invalidPrpOffset);
        const len = i === 0 ? first : Math.min(page, length - off);
        seg(bus, off, len);
        off += len;
      });
    } catch (e) {
      if (e instanceof NvmeError) throw e;
      ctx.log(`nvme: DMA failed: ${(e as Error).message}`);
      throw new NvmeError(NVME_STATUS.dataTransferError);
    }
  }

  private store(at: number, bytes: Uint8Array): void {
    for (let done = 0; done < bytes.length; ) {
      const k = Math.floor((at + done) / CHUNK);
      const o = (at + done) % CHUNK;
      const n = Math.min(bytes.length - done, CHUNK - o);
      let chunk = this.data.get(k);
      if (chunk === undefined) this.data.set(k, (chunk = new Uint8Array(CHUNK)));
      chunk.set(bytes.subarray(done, done + n), o);
      done += n;
    }
  }

  private load(at: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const k = Math.floor((at + done) / CHUNK);
      const o = (at + done) % CHUNK;
      const n = Math.min(length - done, CHUNK - o);
      const chunk = this.data.get(k);
      if (chunk !== undefined) out.set(chunk.subarray(o, o + n), done);
      done += n;
    }
    return out;
  }
}

/** The model's options with QEMU's defaults, checked. */
function nvmeOptions(opts: NvmeOptions): Required<Omit<NvmeOptions, keyof PciDeviceSpec>> {
  const { serial, modelNumber, blocks, mdts, ioQueuePairs, timeout, readyMs } = opts;
  const o = {
    serial: serial ?? 'fake-nvme-0',
    modelNumber: modelNumber ?? 'QEMU NVMe Ctrl',
    blocks: blocks ?? 32768,
    mdts: mdts ?? 7,
    ioQueuePairs: ioQueuePairs ?? 64,
    timeout: timeout ?? 15,
    readyMs: readyMs ?? 1,
  };
  if (!Number.isSafeInteger(o.blocks) || o.blocks < 1) throw new RangeError(`nvme blocks ${o.blocks} is not a positive integer`);
  if (!Number.isInteger(o.mdts) || o.mdts < 0 || o.mdts > 10) throw new RangeError(`nvme mdts ${o.mdts} is not 0..10`);
  if (!Number.isInteger(o.ioQueuePairs) || o.ioQueuePairs < 1 || o.ioQueuePairs > 64)
    throw new RangeError(`nvme ioQueuePairs ${o.ioQueuePairs} is not 1..64`);
  if (!Number.isInteger(o.timeout) || o.timeout < 1 || o.timeout > 255) throw new RangeError(`nvme timeout ${o.timeout} is not 1..255`);
  if (!(o.readyMs >= 0)) throw new RangeError(`nvme readyMs ${o.readyMs} is not a number of milliseconds`);
  return o;
}

/** QEMU's SR-IOV properties of an nvme PF (`-device nvme,sriov_max_vfs=...`). */
export interface NvmeSriovOptions {
  /** sriov_vq_flexible: queues (admin queues included) the PF can hand to VFs; at least 2 per VF. */
  readonly vqFlexible: number;
  /** sriov_vi_flexible: interrupt vectors the PF can hand to VFs; at least 1 per VF. */
  readonly viFlexible: number;
  /** sriov_max_vq_per_vf (default vqFlexible / VFs, QEMU's). */
  readonly maxVqPerVf?: number;
  /** sriov_max_vi_per_vf (default viFlexible / VFs, QEMU's). */
  readonly maxViPerVf?: number;
}

/** A secondary controller (one per VF) as the Secondary Controller List shows it. */
interface Secondary {
  readonly scid: number;
  online: boolean;
  nvq: number;
  nvi: number;
}

/** The PF's flexible-resource books (QEMU's pri_ctrl_cap and sec_ctrl_list), shared by the PF's and its VFs' models. */
class SriovBooks {
  readonly secondary: Secondary[];
  /** Flexible queues / vectors allocated to the primary now (VQRFAP / VIRFAP) and from its next FLR on. */
  private vqrfap: number;
  private virfap: number;
  private nextVqrfap: number;
  private nextVirfap: number;

  constructor(
    /** The PF's max_ioqpairs: its queues, admin included, are this + 1. */
    private readonly maxIoqpairs: number,
    readonly vfs: number,
    private readonly o: Required<NvmeSriovOptions>,
  ) {
    // Secondary controller ids follow the primary's (0), one per VF (QEMU: cntlid + 1 + i).
    this.secondary = Array.from({ length: vfs }, (_, i) => ({ scid: i + 1, online: false, nvq: 0, nvi: 0 }));
    this.vqrfap = this.nextVqrfap = o.vqFlexible;
    this.virfap = this.nextVirfap = o.viFlexible;
  }

  /** The primary's I/O queue pairs now: its private queues plus its flexible share, less the admin queue. */
  get primaryPairs(): number {
    return this.maxIoqpairs + 1 - this.o.vqFlexible + this.vqrfap - 1;
  }

  functionReset(): void {
    for (const s of this.secondary) s.online = false;
    this.vqrfap = this.nextVqrfap;
    this.virfap = this.nextVirfap;
  }

  /** Identify CNS 15h: byte 0 the count, 32-byte entries from byte 32 (SCID, PCID, SCS, VFN, NVQ, NVI). */
  list(dv: DataView): void {
    dv.setUint8(0, this.secondary.length);
    this.secondary.forEach((s, i) => {
      const at = 32 + 32 * i;
      dv.setUint16(at, s.scid, true);
      dv.setUint16(at + 2, 0, true);
      dv.setUint8(at + 4, s.online ? 1 : 0);
      dv.setUint16(at + 8, i + 1, true);
      dv.setUint16(at + 10, s.nvq, true);
      dv.setUint16(at + 12, s.nvi, true);
    });
  }

  /** Virtualization Management (nvme_virt_mngmt): returns completion DW0 or throws the status QEMU 7.2 gives. */
  manage(action: number, resource: number, cntlid: number, nr: number): number {
    if (resource !== 0 && resource !== 1) throw new NvmeError(NVME_STATUS.invalidResourceId);
    const vectors = resource === 1;
    const total = vectors ? this.o.viFlexible : this.o.vqFlexible;
    const inSecondaries = this.secondary.reduce((n, s) => n + (vectors ? s.nvi : s.nvq), 0);
    const s = this.secondary.find((e) => e.scid === cntlid);
    switch (action) {
      case 0x1: // primary flexible allocation, effective at the next FLR
        if (cntlid !== 0) throw new NvmeError(NVME_STATUS.invalidControllerId);
        if (nr > total) throw new NvmeError(NVME_STATUS.invalidNumberOfResources);
        if (nr > total - inSecondaries) throw new NvmeError(NVME_STATUS.invalidResourceId);
        if (vectors) this.nextVirfap = nr;
        else this.nextVqrfap = nr;
        return nr;
      case 0x8: {
        // secondary assign
        if (s === undefined) throw new NvmeError(NVME_STATUS.invalidControllerId);
        if (s.online) throw new NvmeError(NVME_STATUS.invalidSecondaryControllerState);
        if (nr > (vectors ? this.o.maxViPerVf : this.o.maxVqPerVf)) throw new NvmeError(NVME_STATUS.invalidNumberOfResources);
        const free = total - (vectors ? this.virfap : this.vqrfap) - inSecondaries;
        if (nr - (vectors ? s.nvi : s.nvq) > free) throw new NvmeError(NVME_STATUS.invalidResourceId);
        if (vectors) s.nvi = nr;
        else s.nvq = nr;
        return nr;
      }
      case 0x9: // secondary online: needs resources and its VF
        if (s === undefined) throw new NvmeError(NVME_STATUS.invalidControllerId);
        if (s.nvi === 0 || s.nvq < 2) throw new NvmeError(NVME_STATUS.invalidSecondaryControllerState);
        s.online = true;
        return 0;
      case 0x7: // secondary offline: its resources go back
        if (s === undefined) throw new NvmeError(NVME_STATUS.invalidControllerId);
        s.online = false;
        s.nvi = s.nvq = 0;
        return 0;
      default:
        throw new NvmeError(NVME_STATUS.invalidField);
    }
  }
}

/**
 * QEMU's nvme as an SR-IOV physical function with its VFs already created
 * (the fake kernel's VFs are fixed at construction: they are the PF's
 * sriov_numvfs): `pf` describes the PF (`sriov.totalVfs` is set to the
 * number of `vfs`), each of `vfs` a VF (`physfn` is set to the PF's
 * address). The PF keeps `ioQueuePairs + 1 - vqFlexible` queues and
 * `ioQueuePairs + 1 - viFlexible` vectors of its own; the rest it hands to
 * the VFs' secondary controllers through Virtualization Management (see the
 * top of this file). Returns the PF's description, then the VFs'.
 */
export function nvmeSriov(
  pf: NvmeOptions & { readonly address: string },
  vfs: readonly (NvmeOptions & { readonly address: string })[],
  sriov: NvmeSriovOptions,
): PciDeviceDescription[] {
  const n = vfs.length;
  if (n < 1) throw new RangeError('nvmeSriov needs at least one VF');
  const maxIoqpairs = pf.ioQueuePairs ?? 64;
  const o: Required<NvmeSriovOptions> = {
    vqFlexible: sriov.vqFlexible,
    viFlexible: sriov.viFlexible,
    maxVqPerVf: sriov.maxVqPerVf ?? Math.floor(sriov.vqFlexible / n),
    maxViPerVf: sriov.maxViPerVf ?? Math.floor(sriov.viFlexible / n),
  };
  // QEMU's nvme_check_params for SR-IOV.
  if (!Number.isInteger(o.vqFlexible) || o.vqFlexible < 2 * n || o.vqFlexible > maxIoqpairs)
    throw new RangeError(`nvme vqFlexible ${o.vqFlexible} is not ${2 * n}..${maxIoqpairs} (2 per VF, within ioQueuePairs)`);
  if (!Number.isInteger(o.viFlexible) || o.viFlexible < n || o.viFlexible > maxIoqpairs)
    throw new RangeError(`nvme viFlexible ${o.viFlexible} is not ${n}..${maxIoqpairs} (1 per VF, within the vectors)`);
  if (!Number.isInteger(o.maxVqPerVf) || o.maxVqPerVf < 2 || !Number.isInteger(o.maxViPerVf) || o.maxViPerVf < 1)
    throw new RangeError(`nvme maxVqPerVf ${o.maxVqPerVf} / maxViPerVf ${o.maxViPerVf} are below 2 / 1`);
  const books = new SriovBooks(maxIoqpairs, n, o);
  const withModel = (d: PciDeviceDescription, vfn: number, opts: NvmeOptions): PciDeviceDescription => {
    const base = nvmeOptions(opts);
    return { ...d, model: () => new NvmeModel(base, { books, vfn }) };
  };
  return [
    withModel(nvme({ ...pf, sriov: { totalVfs: n } }), 0, pf),
    ...vfs.map((vf, i) => withModel(nvme({ ...vf, physfn: pf.address }), i + 1, vf)),
  ];
}

/**
 * QEMU's NVMe controller (`-device nvme,serial=...`) as a fake PCI device, at
 * 0000:00:04.0 in group 4 unless told otherwise: BAR0 of 16 KiB with the
 * MSI-X table at 0x2000 and the PBA at 0x3000 (mmap-able, MSIX_MAPPABLE, as
 * Linux 6.12 reports it), `ioQueuePairs + 1` MSI-X vectors, MSI off, INTx.
 * Pass `bars` through `sparse` to model a kernel that excludes the MSI-X
 * pages from the mapping.
 */
export function nvme(opts: NvmeOptions & { readonly sparseBar0?: boolean } = {}): PciDeviceDescription {
  const { serial, modelNumber, blocks, mdts, ioQueuePairs, timeout, readyMs, sparseBar0, ...spec } = opts;
  const o = nvmeOptions({ serial, modelNumber, blocks, mdts, ioQueuePairs, timeout, readyMs });
  return pciDevice({
    address: '0000:00:04.0',
    group: 4,
    revision: 0x02,
    subsystemVendor: 0x1af4,
    subsystemDevice: 0x1100,
    pcie: true,
    reset: true,
    ...spec,
    vendor: NVME_VENDOR,
    device: NVME_DEVICE,
    class: NVME_CLASS,
    bars: [
      {
        index: 0,
        size: BAR0_SIZE,
        type: 'mem64',
        // The registers and doorbells only: the MSI-X table and PBA pages are left out.
        ...(sparseBar0 === true ? { sparse: [{ offset: 0, size: MSIX_TABLE }], msixMappable: false } : {}),
      },
    ],
    irqs: { intx: 1, msi: 0, msix: o.ioQueuePairs + 1, msixBar: 0, msixTableOffset: MSIX_TABLE, msixPbaOffset: MSIX_PBA },
    model: () => new NvmeModel(o),
  });
}
