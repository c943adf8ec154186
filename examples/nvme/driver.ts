// A small NVMe driver in TypeScript over VFIO, written only against the
// package's public API: the model to start from for a driver of your own
// that has queues in memory, doorbells and MSI-X (most PCIe devices do).
//
// What it does, in the order a controller needs it (NVMe Base Specification
// 1.4, section 7.6.1 "Initialization"):
//   1. open the device, map BAR0, turn on bus mastering;
//   2. enable MSI-X, one vector per queue pair (vector 0: admin) — BEFORE the
//      controller is enabled: QEMU's nvme puts a completion queue's vector to
//      use only if MSI-X is already enabled when the queue is created (the
//      admin queue's at CC.EN; later ones at Create I/O CQ), and silently drops
//      notifications on a vector not in use. Linux's nvme driver orders it the
//      same way, so do it on any hardware;
//   3. disable the controller (CC.EN = 0, wait for CSTS.RDY = 0 within CAP.TO);
//   4. give it the admin queues (AQA, ASQ, ACQ), enable it (CC.EN = 1, wait for
//      CSTS.RDY = 1 within CAP.TO; CSTS.CFS = it refused);
//   5. Identify Controller and Namespace 1, Set Features (Number of Queues);
//   6. create the I/O queue pairs (a CQ on its own vector, then its SQ);
//   7. Read/Write with PRP1/PRP2 or a PRP list, up to MDTS;
//   8. shutdown: delete the queues, CC.SHN = normal, wait for CSTS.SHST =
//      complete, then release everything (`using`).
//
// DMA ordering: a command is written into the submission queue (plain stores
// to a DMA buffer), then the doorbell is written (a store to BAR0). The
// device must see the command before the doorbell. On x86-64 the CPU keeps
// stores in program order, write-back memory before an uncached MMIO store
// included, so nothing is needed between them. On weakly ordered CPUs
// (arm64, POWER) a C driver puts a write barrier there (Linux: writel() has
// one built in); JavaScript cannot emit one, so there ring the doorbell with
// the BAR opened `noMmap` (pwrite is a system call: the kernel's entry and
// exit order the stores before it) — see the README's "DMA ordering" section.
// Likewise the completion's phase bit is read before its other fields.
//
// In your own project, import from 'vfio' instead of '../../lib/index.js'.
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { Device, DmaBuffer, IrqSet, IrqVector, Region, Vfio } from '../../lib/index.js';

// --- registers (BAR0) ---------------------------------------------------------
const REG_CAP = 0x00; //  capabilities (64-bit)
const REG_VS = 0x08; //   version
const REG_CC = 0x14; //   controller configuration
const REG_CSTS = 0x1c; // controller status
const REG_AQA = 0x24; //  admin queue attributes (sizes, 0's based)
const REG_ASQ = 0x28; //  admin submission queue base (64-bit)
const REG_ACQ = 0x30; //  admin completion queue base (64-bit)
const DOORBELLS = 0x1000;

const CC_EN = 1;
const CC_IOSQES_64 = 6 << 16; // 2^6-byte commands
const CC_IOCQES_16 = 4 << 20; // 2^4-byte completions
const CC_SHN_NORMAL = 1 << 14;
const CSTS_RDY = 1;
const CSTS_CFS = 2;
const CSTS_SHST_MASK = 3 << 2;
const CSTS_SHST_COMPLETE = 2 << 2;

/** The memory page size this driver uses (CC.MPS = 0), which is also the host's page size. */
const PAGE = 4096;
/** Entries per queue: a 64-entry SQ is one page; QD32 fits with room to spare. */
const QUEUE_DEPTH = 64;

const ADMIN = {
  deleteSq: 0x00,
  createSq: 0x01,
  deleteCq: 0x04,
  createCq: 0x05,
  identify: 0x06,
  setFeatures: 0x09,
  virtualizationManagement: 0x1c,
} as const;
/** Identify's CNS values this driver uses (NVMe Base Specification, Identify command). */
const CNS = { namespace: 0x00, controller: 0x01, secondaryControllerList: 0x15 } as const;
const IO = { write: 0x01, read: 0x02 } as const;

// --- status codes as typed errors ---------------------------------------------

/** Names of the status codes a driver meets most (status code type << 8 | status code). */
const STATUS_NAMES: Readonly<Record<number, string>> = {
  0x001: 'Invalid Command Opcode',
  0x002: 'Invalid Field in Command',
  0x004: 'Data Transfer Error',
  0x006: 'Internal Error',
  0x00b: 'Invalid Namespace or Format',
  0x013: 'Invalid PRP Offset',
  0x080: 'LBA Out of Range',
  0x081: 'Capacity Exceeded',
  0x100: 'Completion Queue Invalid',
  0x101: 'Invalid Queue Identifier',
  0x102: 'Invalid Queue Size',
  0x108: 'Invalid Interrupt Vector',
  0x10c: 'Invalid Queue Deletion',
};

/** A command the controller completed with a non-zero status. */
export class NvmeStatusError extends Error {
  /** Status code type (0 generic, 1 command specific, 2 media errors, ...). */
  readonly sct: number;
  /** Status code within its type. */
  readonly sc: number;
  /** Do Not Retry: the same command would fail again. */
  readonly dnr: boolean;
  constructor(
    /** The command that failed, e.g. 'Read (queue 1)'. */
    readonly command: string,
    /** The completion's status field without the phase bit. */
    readonly status: number,
  ) {
    const sct = (status >> 8) & 7;
    const sc = status & 0xff;
    const name = STATUS_NAMES[(sct << 8) | sc] ?? 'unknown status';
    super(`NVMe ${command} failed: ${name} (SCT ${sct}, SC 0x${sc.toString(16).padStart(2, '0')})`);
    this.name = 'NvmeStatusError';
    this.sct = sct;
    this.sc = sc;
    this.dnr = (status & 0x4000) !== 0;
  }
}

/** The controller itself did not do what the driver waited for (CSTS.RDY/SHST in CAP.TO), or reported a fatal status. */
export class NvmeControllerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NvmeControllerError';
  }
}

// --- queues --------------------------------------------------------------------

interface Pending {
  resolve(dw0: number): void;
  reject(err: Error): void;
  readonly command: string;
}

/**
 * One submission/completion queue pair: the rings in DMA memory, their
 * doorbells, the commands in flight by command id, and a PRP list page slot
 * per command id.
 */
class QueuePair {
  /** Views over the rings, made once: the buffers live as long as the queue. */
  readonly sqe: DataView;
  readonly cqe: DataView;
  readonly prpView: DataView;
  sqTail = 0;
  cqHead = 0;
  phase = 1;
  readonly inFlight = new Map<number, Pending>();
  readonly freeIds: number[] = [];
  /** Stops interrupt delivery (the vector's `on` subscription), if any. */
  unsubscribe: (() => void) | null = null;

  constructor(
    readonly id: number,
    readonly sq: DmaBuffer,
    readonly cq: DmaBuffer,
    /** PRP lists: `prpSlot` bytes per command id. */
    readonly prp: DmaBuffer,
    readonly prpSlot: number,
    readonly vector: IrqVector,
  ) {
    const view = (b: DmaBuffer): DataView => new DataView(b.bytes.buffer, b.bytes.byteOffset, b.size);
    this.sqe = view(sq);
    this.cqe = view(cq);
    this.prpView = view(prp);
    // One slot stays empty: a full SQ would look empty (tail == head).
    for (let i = QUEUE_DEPTH - 2; i >= 0; i--) this.freeIds.push(i);
  }
}

/** The fields of a command this driver sets (the rest of the 64 bytes are zero). */
interface Command {
  readonly opcode: number;
  readonly nsid?: number;
  readonly prp1?: bigint;
  readonly prp2?: bigint;
  readonly cdw10?: number;
  readonly cdw11?: number;
  readonly cdw12?: number;
}

export interface ControllerInfo {
  readonly vendor: number;
  readonly serial: string;
  readonly model: string;
  readonly firmware: string;
  /** NVMe version from VS, e.g. '1.4.0'. */
  readonly version: string;
  /** Largest transfer in bytes (MDTS), capped at what one PRP list page describes. */
  readonly maxTransfer: number;
  /** The controller's id in its NVM subsystem (CNTLID): a primary controller's, for Virtualization Management. */
  readonly id: number;
}

/**
 * One entry of an SR-IOV primary controller's Secondary Controller List
 * (Identify CNS 15h): the NVMe controller behind one VF.
 */
export interface SecondaryController {
  /** Secondary controller id (SCID), the `controller` of {@link VirtualizationAction}s for this VF. */
  readonly id: number;
  /** The VF it is served through, 1-based (VFN): VF n is sysfs `virtfn{n-1}` of the PF. */
  readonly vfNumber: number;
  /** Online (SCS bit 0): only an online secondary controller answers on its VF's BAR0 (CSTS.CFS is set otherwise). */
  readonly online: boolean;
  /** Flexible queue resources assigned to it (NVQ; its admin queue counts as one). */
  readonly queues: number;
  /** Flexible interrupt resources assigned to it (NVI). */
  readonly vectors: number;
}

/**
 * A Virtualization Management action (admin opcode 1Ch): how an SR-IOV
 * primary controller hands its flexible resources to the controllers behind
 * its VFs. `resource` is what `count` counts: queues (VQ) or interrupt
 * vectors (VI).
 * - `primary-allocate`: keep `count` flexible resources for the primary
 *   controller itself; takes effect at its next reset (FLR), which frees the
 *   rest for secondaries.
 * - `secondary-assign`: give `count` resources to the (offline) secondary
 *   controller `controller`.
 * - `secondary-online` / `secondary-offline`: bring it online (its VF's
 *   BAR0 then works) or offline (resources and resource type are ignored).
 */
export type VirtualizationAction =
  | { readonly action: 'primary-allocate'; readonly resource: 'queues' | 'vectors'; readonly count: number }
  | { readonly action: 'secondary-assign'; readonly controller: number; readonly resource: 'queues' | 'vectors'; readonly count: number }
  | { readonly action: 'secondary-online' | 'secondary-offline'; readonly controller: number };

export interface NamespaceInfo {
  readonly id: number;
  /** Size in logical blocks (NSZE). */
  readonly blocks: bigint;
  /** Logical block size in bytes. */
  readonly blockSize: number;
}

export interface NvmeOpenOptions {
  /** I/O queue pairs to create (default 2), each on its own MSI-X vector. */
  readonly ioQueues?: number;
  /**
   * 'interrupt' (default): completions are reaped when the queue's MSI-X
   * vector fires. 'poll': the caller's await spins on the completion queue
   * (lowest latency, one CPU busy).
   */
  readonly completions?: 'interrupt' | 'poll';
  /** Reach BAR0 with pread/pwrite instead of a mapping (slower; a doorbell then orders on any CPU). */
  readonly noMmap?: boolean;
  /** The VF token, when the controller is an SR-IOV VF whose PF is on vfio-pci (see `Device.setVfToken`). */
  readonly vfToken?: string;
}

/** A controller, enabled, identified, with its I/O queues created. */
export class Nvme implements AsyncDisposable {
  readonly #dev: Device;
  readonly #bar: Region;
  readonly #msix: IrqSet;
  readonly #poll: boolean;
  /** CAP.TO in milliseconds: how long the controller may take to become ready or shut down. */
  readonly #timeoutMs: number;
  readonly #queues: QueuePair[] = [];
  #admin!: QueuePair;
  #controller!: ControllerInfo;
  #namespace!: NamespaceInfo;
  #closed = false;

  /**
   * Opens the controller at `address` and brings it up (steps 1-6 above).
   * Everything is released again if a step fails.
   */
  static async open(ctx: Vfio, address: string, opts: NvmeOpenOptions = {}): Promise<Nvme> {
    const ioQueues = opts.ioQueues ?? 2;
    if (!Number.isInteger(ioQueues) || ioQueues < 1 || ioQueues > 64) throw new RangeError(`ioQueues ${ioQueues} is not 1..64`);
    const dev = ctx.openDevice(address, opts.vfToken === undefined ? {} : { vfToken: opts.vfToken });
    let nvme: Nvme | undefined;
    try {
      nvme = new Nvme(dev, ioQueues, opts);
      await nvme.#bringUp(ioQueues);
      return nvme;
    } catch (err) {
      if (nvme !== undefined) nvme.#release();
      else dev.release();
      throw err;
    }
  }

  private constructor(dev: Device, ioQueues: number, opts: NvmeOpenOptions) {
    this.#dev = dev;
    this.#poll = opts.completions === 'poll';
    this.#bar = dev.mapBar(0, { noMmap: opts.noMmap });
    dev.config.setBusMaster(true);
    // Step 2, before CC.EN (see the top of the file).
    this.#msix = dev.irqs.enable('msix', 1 + ioQueues);
    const cap = this.#bar.read64(REG_CAP);
    this.#timeoutMs = Number((cap >> 24n) & 0xffn) * 500;
    if (((cap >> 37n) & 1n) === 0n) throw new NvmeControllerError(`${dev.address}: the controller does not offer the NVM command set`);
    if (((cap >> 48n) & 0xfn) !== 0n) throw new NvmeControllerError(`${dev.address}: the controller's smallest memory page is above 4 KiB`);
  }

  get address(): string {
    return this.#dev.address;
  }

  /** The VFIO device under the driver (for what the driver does not wrap, e.g. `setVfToken` on a PF). */
  get device(): Device {
    return this.#dev;
  }

  /** The VFIO mode the device is driven in. */
  get mode(): string {
    return this.#dev.mode;
  }

  get controller(): ControllerInfo {
    return this.#controller;
  }

  get namespace(): NamespaceInfo {
    return this.#namespace;
  }

  /** The I/O queue ids (1..n). */
  get ioQueues(): number[] {
    return this.#queues.slice(1).map((q) => q.id);
  }

  /**
   * A buffer for I/O data, mapped for the device once (allocate it once and
   * reuse it: a map per I/O costs more than the I/O).
   */
  allocBuffer(size: number): DmaBuffer {
    return this.#dev.container.allocDma(size);
  }

  /** Reads `blocks` logical blocks from `lba` into `buf` at `offset` (a multiple of 4), through I/O queue `queue`. */
  read(lba: bigint | number, blocks: number, buf: DmaBuffer, offset = 0, queue = 1): Promise<void> {
    return this.#rw(IO.read, 'Read', BigInt(lba), blocks, buf, offset, queue);
  }

  /** Writes `blocks` logical blocks at `lba` from `buf` at `offset` (a multiple of 4), through I/O queue `queue`. */
  write(lba: bigint | number, blocks: number, buf: DmaBuffer, offset = 0, queue = 1): Promise<void> {
    return this.#rw(IO.write, 'Write', BigInt(lba), blocks, buf, offset, queue);
  }

  /**
   * The Secondary Controller List of an SR-IOV primary controller (Identify
   * CNS 15h): one entry per VF the controller can serve, whether or not the
   * VF exists yet. Rejects with an NvmeStatusError on a controller without
   * SR-IOV (Invalid Field in Command).
   */
  async secondaryControllers(): Promise<SecondaryController[]> {
    using page = this.#dev.container.allocDma(PAGE);
    await this.#submit(this.#admin, 'Identify (Secondary Controller List)', {
      opcode: ADMIN.identify,
      prp1: page.iova,
      cdw10: CNS.secondaryControllerList,
    });
    const dv = new DataView(page.bytes.buffer, page.bytes.byteOffset, PAGE);
    const list: SecondaryController[] = [];
    // Byte 0: number of entries; 32-byte entries from byte 32.
    for (let i = 0, n = dv.getUint8(0); i < n; i++) {
      const at = 32 + 32 * i;
      list.push({
        id: dv.getUint16(at, true),
        online: (dv.getUint8(at + 4) & 1) === 1,
        vfNumber: dv.getUint16(at + 8, true),
        queues: dv.getUint16(at + 10, true),
        vectors: dv.getUint16(at + 12, true),
      });
    }
    return list;
  }

  /**
   * Sends one Virtualization Management command (see
   * {@link VirtualizationAction}) and resolves with the number of resources
   * the controller reports allocated (completion DW0). Rejects with an
   * NvmeStatusError when the controller refuses (e.g. not enough flexible
   * resources, the secondary controller online).
   */
  async virtualizationManagement(v: VirtualizationAction): Promise<number> {
    const ACT = { 'primary-allocate': 0x1, 'secondary-offline': 0x7, 'secondary-assign': 0x8, 'secondary-online': 0x9 } as const;
    const controller = v.action === 'primary-allocate' ? this.#controller.id : v.controller;
    const resource = 'resource' in v && v.resource === 'vectors' ? 1 : 0;
    const count = 'count' in v ? v.count : 0;
    if (!Number.isInteger(count) || count < 0 || count > 0xffff) throw new RangeError(`count ${count} is not 0..65535`);
    return this.#submit(this.#admin, `Virtualization Management (${v.action})`, {
      opcode: ADMIN.virtualizationManagement,
      cdw10: ACT[v.action] | (resource << 8) | (controller << 16),
      cdw11: count,
    });
  }

  /** Orderly shutdown (step 8), then releases the device and every buffer. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (this.#admin !== undefined && (this.#bar.read32(REG_CSTS) & CSTS_RDY) !== 0) {
        for (const q of this.#queues.slice(1).reverse()) {
          await this.#submit(this.#admin, 'Delete I/O Submission Queue', { opcode: ADMIN.deleteSq, cdw10: q.id });
          await this.#submit(this.#admin, 'Delete I/O Completion Queue', { opcode: ADMIN.deleteCq, cdw10: q.id });
        }
        this.#bar.write32(REG_CC, (this.#bar.read32(REG_CC) & ~(3 << 14)) | CC_SHN_NORMAL);
        await this.#waitStatus(CSTS_SHST_MASK, CSTS_SHST_COMPLETE, 'report shutdown complete (CSTS.SHST)');
      }
    } finally {
      this.#release();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- bring-up ---------------------------------------------------------------

  async #bringUp(ioQueues: number): Promise<void> {
    // Step 3: a controller left enabled (by firmware, a previous run) is reset first.
    if ((this.#bar.read32(REG_CC) & CC_EN) !== 0) this.#bar.write32(REG_CC, 0);
    await this.#waitStatus(CSTS_RDY, 0, 'become disabled (CSTS.RDY = 0)');

    // Step 4: the admin queues, then CC.EN.
    this.#admin = this.#newQueue(0);
    this.#bar.write32(REG_AQA, ((QUEUE_DEPTH - 1) << 16) | (QUEUE_DEPTH - 1));
    this.#bar.write64(REG_ASQ, this.#admin.sq.iova);
    this.#bar.write64(REG_ACQ, this.#admin.cq.iova);
    this.#bar.write32(REG_CC, CC_EN | CC_IOSQES_64 | CC_IOCQES_16); // MPS 0 (4 KiB), NVM command set, round robin
    await this.#waitStatus(CSTS_RDY, CSTS_RDY, 'become ready (CSTS.RDY = 1)');

    // Step 5.
    this.#controller = await this.#identifyController();
    this.#namespace = await this.#identifyNamespace(1);
    const want = ioQueues - 1;
    const granted = await this.#submit(this.#admin, 'Set Features (Number of Queues)', {
      opcode: ADMIN.setFeatures,
      cdw10: 0x07,
      cdw11: (want << 16) | want,
    });
    const pairs = Math.min((granted & 0xffff) + 1, (granted >>> 16) + 1);
    if (pairs < ioQueues)
      throw new NvmeControllerError(`${this.address}: the controller grants ${pairs} I/O queue pairs, ${ioQueues} asked`);

    // Step 6: CQ first (on vector i, interrupts enabled), then its SQ.
    for (let id = 1; id <= ioQueues; id++) {
      const q = this.#newQueue(id);
      await this.#submit(this.#admin, 'Create I/O Completion Queue', {
        opcode: ADMIN.createCq,
        prp1: q.cq.iova,
        cdw10: ((QUEUE_DEPTH - 1) << 16) | id,
        cdw11: (id << 16) | 0b11, // IV = id, IEN, PC (physically contiguous)
      });
      await this.#submit(this.#admin, 'Create I/O Submission Queue', {
        opcode: ADMIN.createSq,
        prp1: q.sq.iova,
        cdw10: ((QUEUE_DEPTH - 1) << 16) | id,
        cdw11: (id << 16) | 0b1, // CQID = id, PC
      });
    }
  }

  async #identifyController(): Promise<ControllerInfo> {
    using page = this.#dev.container.allocDma(PAGE);
    await this.#submit(this.#admin, 'Identify Controller', { opcode: ADMIN.identify, prp1: page.iova, cdw10: CNS.controller });
    const b = page.bytes;
    const dv = new DataView(b.buffer, b.byteOffset, PAGE);
    const text = (at: number, len: number): string =>
      Buffer.from(b.subarray(at, at + len))
        .toString('latin1')
        .trimEnd();
    const mdts = b[77]!;
    // One PRP list page describes 512 pages; MDTS 0 means "no limit".
    const maxPages = Math.min(mdts === 0 ? 512 : 2 ** mdts, 512);
    const vs = this.#bar.read32(REG_VS);
    return {
      vendor: dv.getUint16(0, true),
      serial: text(4, 20),
      model: text(24, 40),
      firmware: text(64, 8),
      version: `${vs >>> 16}.${(vs >> 8) & 0xff}.${vs & 0xff}`,
      maxTransfer: maxPages * PAGE,
      id: dv.getUint16(78, true),
    };
  }

  async #identifyNamespace(id: number): Promise<NamespaceInfo> {
    using page = this.#dev.container.allocDma(PAGE);
    await this.#submit(this.#admin, 'Identify Namespace', { opcode: ADMIN.identify, nsid: id, prp1: page.iova, cdw10: CNS.namespace });
    const dv = new DataView(page.bytes.buffer, page.bytes.byteOffset, PAGE);
    const format = dv.getUint8(26) & 0xf;
    const lbads = (dv.getUint32(128 + 4 * format, true) >> 16) & 0xff;
    return { id, blocks: dv.getBigUint64(0, true), blockSize: 2 ** lbads };
  }

  /** A queue pair's memory: SQ and CQ rings (one page each), PRP list slots, and its MSI-X vector's delivery. */
  #newQueue(id: number): QueuePair {
    const c = this.#dev.container;
    const slot = 512 * 8; // a PRP list of up to 512 entries per command id
    const q = new QueuePair(id, c.allocDma(PAGE), c.allocDma(PAGE), c.allocDma(slot * QUEUE_DEPTH), slot, this.#msix.vector(id));
    q.sq.bytes.fill(0);
    q.cq.bytes.fill(0); // phase 0 everywhere: no entry is new yet
    this.#queues.push(q);
    if (!this.#poll) q.unsubscribe = q.vector.on(() => this.#reap(q));
    return q;
  }

  // --- commands -----------------------------------------------------------------

  /** Submits one command on `q` and resolves with its completion's DW0, or rejects with an NvmeStatusError. */
  #submit(q: QueuePair, command: string, c: Command): Promise<number> {
    if (this.#closed) return Promise.reject(new Error(`NVMe ${command}: the controller is closed`));
    const cid = q.freeIds.pop();
    if (cid === undefined) return Promise.reject(new Error(`NVMe ${command}: queue ${q.id} is full (${QUEUE_DEPTH - 1} in flight)`));
    const promise = new Promise<number>((resolve, reject) => q.inFlight.set(cid, { resolve, reject, command }));
    this.#place(q, cid, c);
    return this.#poll ? this.#pollFor(q, cid, promise) : promise;
  }

  /** Writes the command at the SQ tail, then rings the doorbell (the order the device relies on: see the top). */
  #place(q: QueuePair, cid: number, c: Command): void {
    const at = q.sqTail * 64;
    const s = q.sqe;
    for (let i = 0; i < 64; i += 8) s.setBigUint64(at + i, 0n, true);
    s.setUint32(at, c.opcode | (cid << 16), true);
    s.setUint32(at + 4, c.nsid ?? 0, true);
    s.setBigUint64(at + 24, c.prp1 ?? 0n, true);
    s.setBigUint64(at + 32, c.prp2 ?? 0n, true);
    s.setUint32(at + 40, c.cdw10 ?? 0, true);
    s.setUint32(at + 44, c.cdw11 ?? 0, true);
    s.setUint32(at + 48, c.cdw12 ?? 0, true);
    q.sqTail = (q.sqTail + 1) % QUEUE_DEPTH;
    this.#bar.write32(DOORBELLS + 8 * q.id, q.sqTail);
  }

  /** Takes every new completion of `q` (phase bit flipped), settles its command, and tells the device (CQ head doorbell). */
  #reap(q: QueuePair): void {
    const c = q.cqe;
    let n = 0;
    for (;;) {
      const at = q.cqHead * 16;
      const status = c.getUint16(at + 14, true);
      if ((status & 1) !== q.phase) break;
      const cid = c.getUint16(at + 12, true);
      const dw0 = c.getUint32(at, true);
      q.cqHead = (q.cqHead + 1) % QUEUE_DEPTH;
      if (q.cqHead === 0) q.phase ^= 1;
      n++;
      const p = q.inFlight.get(cid);
      if (p === undefined) continue; // not ours (cannot happen with a sane device)
      q.inFlight.delete(cid);
      q.freeIds.push(cid);
      if (status >> 1 === 0) p.resolve(dw0);
      else p.reject(new NvmeStatusError(`${p.command} (queue ${q.id})`, status >> 1));
    }
    if (n > 0) this.#bar.write32(DOORBELLS + 8 * q.id + 4, q.cqHead);
  }

  /** Polled completion: spins on the CQ, giving the event loop a turn now and then (timers, other queues). */
  async #pollFor(q: QueuePair, cid: number, promise: Promise<number>): Promise<number> {
    const deadline = performance.now() + Math.max(this.#timeoutMs, 1000);
    while (q.inFlight.has(cid)) {
      for (let spin = 0; spin < 64 && q.inFlight.has(cid); spin++) this.#reap(q);
      if (!q.inFlight.has(cid)) break;
      if (performance.now() > deadline) {
        const p = q.inFlight.get(cid)!;
        q.inFlight.delete(cid); // its id is not reused: the device may still complete it
        p.reject(new NvmeControllerError(`${this.address}: ${p.command} (queue ${q.id}) not completed within ${this.#timeoutMs} ms`));
        break;
      }
      await yieldToLoop();
    }
    return promise;
  }

  #rw(opcode: number, name: string, lba: bigint, blocks: number, buf: DmaBuffer, offset: number, queue: number): Promise<void> {
    const q = this.#queues[queue];
    if (queue < 1 || q === undefined) return Promise.reject(new RangeError(`no I/O queue ${queue} (1..${this.#queues.length - 1})`));
    const bytes = blocks * this.#namespace.blockSize;
    if (!Number.isInteger(blocks) || blocks < 1 || blocks > 65536 || bytes > this.#controller.maxTransfer) {
      return Promise.reject(
        new RangeError(`${blocks} blocks is not 1..${this.#controller.maxTransfer / this.#namespace.blockSize} (MDTS)`),
      );
    }
    if (!Number.isInteger(offset) || offset < 0 || offset % 4 !== 0 || offset + bytes > buf.size) {
      return Promise.reject(new RangeError(`[${offset}, ${offset + bytes}) is not a dword-aligned range of the ${buf.size}-byte buffer`));
    }
    // The id #submit will take (it pops the same end): the PRP list goes in that id's slot.
    const cid = q.freeIds.at(-1);
    if (cid === undefined) return Promise.reject(new Error(`NVMe ${name}: queue ${q.id} is full`));
    const { prp1, prp2 } = this.#prps(q, cid, buf, offset, bytes);
    return this.#submit(q, name, {
      opcode,
      nsid: this.#namespace.id,
      prp1,
      prp2,
      cdw10: Number(lba & 0xffffffffn),
      cdw11: Number(lba >> 32n),
      cdw12: blocks - 1,
    }).then(() => undefined);
  }

  /**
   * The data pointer: PRP1 is the first byte's bus address (any dword
   * offset); the rest is described page by page, so the buffer need not be
   * contiguous for the device (no-IOMMU mode: each page has its own physical
   * address, `buf.iovaAt`). Two pages: PRP2 is the second page. More: PRP2
   * points at a list of page addresses in this command's PRP slot.
   */
  #prps(q: QueuePair, cid: number, buf: DmaBuffer, offset: number, bytes: number): { prp1: bigint; prp2: bigint } {
    const prp1 = buf.iovaAt(offset);
    const first = Math.min(bytes, PAGE - (offset % PAGE));
    const rest = Math.ceil((bytes - first) / PAGE);
    if (rest === 0) return { prp1, prp2: 0n };
    if (rest === 1) return { prp1, prp2: buf.iovaAt(offset + first) };
    const base = cid * q.prpSlot;
    for (let i = 0; i < rest; i++) q.prpView.setBigUint64(base + 8 * i, buf.iovaAt(offset + first + i * PAGE), true);
    return { prp1, prp2: q.prp.iovaAt(base) };
  }

  /** Polls CSTS until `(CSTS & mask) === value`, for at most CAP.TO; CSTS.CFS fails at once. */
  async #waitStatus(mask: number, value: number, what: string): Promise<void> {
    const deadline = performance.now() + this.#timeoutMs;
    for (;;) {
      const csts = this.#bar.read32(REG_CSTS);
      if (csts === 0xffffffff)
        throw new NvmeControllerError(`${this.address}: CSTS reads all ones: the device is gone or not decoding memory`);
      if ((csts & CSTS_CFS) !== 0)
        throw new NvmeControllerError(`${this.address}: controller fatal status (CSTS.CFS) while waiting to ${what}`);
      if ((csts & mask) === value) return;
      if (performance.now() > deadline) {
        throw new NvmeControllerError(`${this.address}: the controller did not ${what} within CAP.TO (${this.#timeoutMs} ms)`);
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Rejects what is in flight, stops interrupt delivery, releases the device (MSI-X, BAR, fd) and frees the queues' memory. */
  #release(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const q of this.#queues) {
      q.unsubscribe?.();
      for (const p of q.inFlight.values()) p.reject(new Error(`NVMe ${p.command}: the controller was closed`));
      q.inFlight.clear();
    }
    // The device first (MSI-X off, BAR unmapped): then nothing can DMA into the rings we free.
    this.#dev.release();
    for (const q of this.#queues) for (const b of [q.sq, q.cq, q.prp]) b.free();
  }
}
