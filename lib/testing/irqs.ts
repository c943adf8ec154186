// A device's interrupts as vfio-pci manages them (vfio_pci_intrs.c):
// VFIO_DEVICE_SET_IRQS per index and action, eventfd triggers, INTx
// automasking, MSI/MSI-X vector blocks, the ERR and REQ notifiers, and what
// happens when the device raises one.
import {
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
} from '../uapi/vfio.js';
import { fail } from './errors.js';
import type { EventFdFile } from './eventfd.js';

export interface IrqHost {
  /** eventfd_ctx_fdget(): EBADF for a closed fd, EINVAL for one that is not an eventfd. Holds a reference. */
  eventfd(fd: number): EventFdFile;
  readonly isPcie: boolean;
  readonly dynamicMsix: boolean;
  /** Whether the device may signal MSI now (bus master enabled). */
  readonly busMaster: boolean;
  /** Whether INTx signalling is disabled in the command register. */
  readonly intxDisabled: boolean;
  /** Whether MSI-X vector `v` is masked in the device's MSI-X table (or the function is masked). */
  msixMasked(v: number): boolean;
  log(line: string): void;
}

type Slot = 'err' | 'req';

export class IrqState {
  /** VFIO_PCI_*_IRQ_INDEX of what is enabled, or null (vdev->irq_type NONE). */
  type: number | null = null;
  private intxTrigger: EventFdFile | null = null;
  private intxUnmaskFd: { fd: EventFdFile; off: () => void } | null = null;
  intxMasked = false;
  /** The INTx line (level), and an edge that arrived while masked. */
  private intxLevel = false;
  private intxPending = false;
  private readonly vectors = new Map<number, EventFdFile>();
  private readonly allocated = new Set<number>();
  private err: EventFdFile | null = null;
  private req: EventFdFile | null = null;

  constructor(private readonly host: IrqHost) {}

  /** Vectors with a trigger (MSI/MSI-X). */
  get triggers(): ReadonlyMap<number, EventFdFile> {
    return this.vectors;
  }

  /** vfio_pci_set_irqs_ioctl(): dispatch on index and action (flags already validated). */
  set(flags: number, index: number, start: number, count: number, data: Uint8Array | null): void {
    const action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
    const d = { flags, start, count, data };
    switch (index) {
      case VFIO_PCI_INTX_IRQ_INDEX:
        if (action === VFIO_IRQ_SET_ACTION_MASK) return this.intxMask(d);
        if (action === VFIO_IRQ_SET_ACTION_UNMASK) return this.intxUnmaskAction(d);
        if (action === VFIO_IRQ_SET_ACTION_TRIGGER) return this.intxTrigger_(d);
        break;
      case VFIO_PCI_MSI_IRQ_INDEX:
      case VFIO_PCI_MSIX_IRQ_INDEX:
        // MASK/UNMASK of MSI vectors is not implemented by vfio-pci ("XXX Need masking support exported").
        if (action === VFIO_IRQ_SET_ACTION_TRIGGER) return this.msiTrigger(index, d);
        break;
      case VFIO_PCI_ERR_IRQ_INDEX:
        if (action === VFIO_IRQ_SET_ACTION_TRIGGER && this.host.isPcie) return this.single('err', d);
        break;
      case VFIO_PCI_REQ_IRQ_INDEX:
        if (action === VFIO_IRQ_SET_ACTION_TRIGGER) return this.single('req', d);
        break;
    }
    fail('ENOTTY', `no handler for index ${index} action 0x${action.toString(16)}`);
  }

  private fds(data: Uint8Array | null, count: number): number[] {
    const dv = new DataView(data!.buffer, data!.byteOffset, data!.byteLength);
    return Array.from({ length: count }, (_, i) => dv.getInt32(4 * i, true));
  }

  private intxMask(d: Req): void {
    if (this.type !== VFIO_PCI_INTX_IRQ_INDEX || d.start !== 0 || d.count !== 1)
      fail('EINVAL', 'INTx mask needs INTx enabled, start 0, count 1');
    if (d.flags & VFIO_IRQ_SET_DATA_NONE) this.intxMasked = true;
    else if (d.flags & VFIO_IRQ_SET_DATA_BOOL) {
      if (d.data![0]) this.intxMasked = true;
    } else if (d.flags & VFIO_IRQ_SET_DATA_EVENTFD) fail('ENOTTY', 'INTx mask by eventfd is not implemented by vfio-pci');
  }

  private intxUnmaskAction(d: Req): void {
    if (this.type !== VFIO_PCI_INTX_IRQ_INDEX || d.start !== 0 || d.count !== 1)
      fail('EINVAL', 'INTx unmask needs INTx enabled, start 0, count 1');
    if (d.flags & VFIO_IRQ_SET_DATA_NONE) this.intxUnmask();
    else if (d.flags & VFIO_IRQ_SET_DATA_BOOL) {
      if (d.data![0]) this.intxUnmask();
    } else if (d.flags & VFIO_IRQ_SET_DATA_EVENTFD) {
      const fd = this.fds(d.data, 1)[0]!;
      this.dropUnmaskFd();
      if (fd >= 0) {
        // vfio_virqfd_enable(): a write to this eventfd unmasks INTx.
        const efd = this.host.eventfd(fd);
        const off = efd.onChange(() => {
          if (efd.take()) this.intxUnmask();
        });
        this.intxUnmaskFd = { fd: efd, off };
      }
    }
  }

  private dropUnmaskFd(): void {
    if (this.intxUnmaskFd === null) return;
    this.intxUnmaskFd.off();
    this.intxUnmaskFd.fd.put();
    this.intxUnmaskFd = null;
  }

  /** __vfio_pci_intx_unmask(): an interrupt still pending is delivered at once (and masks again). */
  intxUnmask(): void {
    if (this.type !== VFIO_PCI_INTX_IRQ_INDEX || !this.intxMasked) return;
    this.intxMasked = false;
    if (this.intxLevel || this.intxPending) {
      this.intxPending = false;
      this.deliverIntx();
    }
  }

  private deliverIntx(): boolean {
    if (this.host.intxDisabled) {
      this.intxPending = true;
      this.host.log('INTx held: INTx Disable is set in the command register');
      return false;
    }
    this.intxMasked = true; // VFIO_IRQ_INFO_AUTOMASKED
    if (this.intxTrigger === null) return false;
    this.intxTrigger.signal();
    return true;
  }

  private intxTrigger_(d: Req): void {
    const isIntx = this.type === VFIO_PCI_INTX_IRQ_INDEX;
    if (isIntx && d.count === 0 && d.flags & VFIO_IRQ_SET_DATA_NONE) return this.intxDisable();
    if (!(isIntx || this.type === null) || d.start !== 0 || d.count !== 1) {
      fail('EINVAL', 'INTx trigger needs INTx or nothing enabled, start 0, count 1');
    }
    if (d.flags & VFIO_IRQ_SET_DATA_EVENTFD) {
      const fd = this.fds(d.data, 1)[0]!;
      const trigger = fd >= 0 ? this.host.eventfd(fd) : null;
      this.intxTrigger?.put();
      this.intxTrigger = trigger;
      if (!isIntx) {
        this.type = VFIO_PCI_INTX_IRQ_INDEX;
        this.intxMasked = false;
        if (this.intxLevel) this.deliverIntx();
      }
      return;
    }
    if (!isIntx) fail('EINVAL', 'INTx loopback trigger with INTx not enabled');
    if (d.flags & VFIO_IRQ_SET_DATA_NONE || (d.flags & VFIO_IRQ_SET_DATA_BOOL && d.data![0])) this.intxTrigger?.signal();
  }

  private intxDisable(): void {
    this.dropUnmaskFd();
    this.intxTrigger?.put();
    this.intxTrigger = null;
    this.intxMasked = false;
    this.intxPending = false;
    this.type = null;
  }

  private msiTrigger(index: number, d: Req): void {
    const msix = index === VFIO_PCI_MSIX_IRQ_INDEX;
    const isThis = this.type === index;
    if (isThis && d.count === 0 && d.flags & VFIO_IRQ_SET_DATA_NONE) return this.msiDisable();
    if (!(isThis || this.type === null)) fail('EINVAL', `another interrupt type (index ${this.type}) is enabled`);
    if (d.flags & VFIO_IRQ_SET_DATA_EVENTFD) {
      const fds = this.fds(d.data, d.count);
      if (isThis) return this.setBlock(d.start, fds, msix);
      // vfio_msi_enable(): pci_alloc_irq_vectors(pdev, 1, nvec) needs nvec >= 1.
      const nvec = d.start + d.count;
      if (nvec === 0) fail('ERANGE', 'enabling MSI with no vectors');
      this.type = index;
      for (let v = 0; v < nvec; v++) this.allocated.add(v);
      try {
        this.setBlock(d.start, fds, msix);
      } catch (e) {
        this.msiDisable();
        throw e;
      }
      return;
    }
    if (!isThis) fail('EINVAL', 'MSI loopback trigger with that interrupt type not enabled');
    for (let v = d.start; v < d.start + d.count; v++) {
      const ctx = this.vectors.get(v);
      if (ctx === undefined) continue;
      if (d.flags & VFIO_IRQ_SET_DATA_NONE || (d.flags & VFIO_IRQ_SET_DATA_BOOL && d.data![v - d.start])) ctx.signal();
    }
  }

  private setBlock(start: number, fds: number[], msix: boolean): void {
    let j = start;
    try {
      for (const fd of fds) {
        this.setVector(j, fd, msix);
        j++;
      }
    } catch (e) {
      for (let v = start; v < j; v++) this.setVector(v, -1, msix);
      throw e;
    }
  }

  /** vfio_msi_set_vector_signal(): replace vector `v`'s trigger; -1 removes it. */
  private setVector(v: number, fd: number, msix: boolean): void {
    const old = this.vectors.get(v);
    if (old !== undefined) {
      this.vectors.delete(v);
      old.put();
    }
    if (fd < 0) return;
    if (!this.allocated.has(v)) {
      // vfio_msi_alloc_irq(): only MSI-X with dynamic allocation can add a vector once enabled.
      if (!msix || !this.host.dynamicMsix) fail('EINVAL', `vector ${v} was not allocated when ${msix ? 'MSI-X' : 'MSI'} was enabled`);
      this.allocated.add(v);
    }
    this.vectors.set(v, this.host.eventfd(fd));
  }

  private msiDisable(): void {
    for (const t of this.vectors.values()) t.put();
    this.vectors.clear();
    this.allocated.clear();
    this.type = null;
  }

  /** vfio_pci_set_ctx_trigger_single() for ERR and REQ. */
  private single(slot: Slot, d: Req): void {
    if (d.start !== 0 || d.count > 1) fail('EINVAL', `${slot.toUpperCase()} takes start 0 and count 0 or 1`);
    const cur = this[slot];
    if (d.flags & VFIO_IRQ_SET_DATA_NONE) {
      if (cur !== null) {
        if (d.count) cur.signal();
        else {
          cur.put();
          this[slot] = null;
        }
        return;
      }
    } else if (d.flags & VFIO_IRQ_SET_DATA_BOOL) {
      if (!d.count) fail('EINVAL', 'DATA_BOOL with count 0');
      if (d.data![0] && cur !== null) cur.signal();
      return;
    } else if (d.flags & VFIO_IRQ_SET_DATA_EVENTFD) {
      if (!d.count) fail('EINVAL', 'DATA_EVENTFD with count 0');
      const fd = this.fds(d.data, 1)[0]!;
      if (fd === -1) {
        cur?.put();
        this[slot] = null;
      } else if (fd >= 0) {
        const t = this.host.eventfd(fd);
        cur?.put();
        this[slot] = t;
      }
      return;
    }
    fail('EINVAL', `${slot.toUpperCase()}: DATA_NONE with no trigger set`);
  }

  /** What vfio_pci_core_disable() and close_device() undo: everything. */
  disableAll(): void {
    if (this.type === VFIO_PCI_INTX_IRQ_INDEX) this.intxDisable();
    else if (this.type !== null) this.msiDisable();
    this.err?.put();
    this.err = null;
    this.req?.put();
    this.req = null;
    this.intxLevel = false;
    this.intxPending = false;
  }

  /** The device asserts (level) or pulses INTx. */
  raiseIntx(level: boolean): boolean {
    if (level) this.intxLevel = true;
    if (this.type !== VFIO_PCI_INTX_IRQ_INDEX) {
      this.host.log('INTx raised while INTx is not enabled through VFIO');
      return false;
    }
    if (this.intxMasked) {
      if (!level) this.intxPending = true;
      this.host.log('INTx raised while masked: pending until unmasked');
      return false;
    }
    return this.deliverIntx();
  }

  lowerIntx(): void {
    this.intxLevel = false;
  }

  raiseMsi(index: number, vector: number): boolean {
    const name = index === VFIO_PCI_MSIX_IRQ_INDEX ? 'MSI-X' : 'MSI';
    if (this.type !== index) return this.dropped(`${name} vector ${vector} raised while ${name} is not enabled`);
    if (!this.host.busMaster) return this.dropped(`${name} raised with bus mastering off: an MSI is a memory write the device cannot make`);
    if (index === VFIO_PCI_MSIX_IRQ_INDEX && this.host.msixMasked(vector))
      return this.dropped(`MSI-X vector ${vector} is masked in the MSI-X table`);
    const t = this.vectors.get(vector);
    if (t === undefined) return this.dropped(`${name} vector ${vector} has no eventfd`);
    t.signal();
    return true;
  }

  raiseSlot(slot: Slot): boolean {
    const t = this[slot];
    if (t === null) return this.dropped(`${slot.toUpperCase()} raised with no eventfd set`);
    t.signal();
    return true;
  }

  private dropped(why: string): false {
    this.host.log(why);
    return false;
  }
}

interface Req {
  readonly flags: number;
  readonly start: number;
  readonly count: number;
  readonly data: Uint8Array | null;
}

export { VFIO_IRQ_SET_ACTION_TRIGGER };
