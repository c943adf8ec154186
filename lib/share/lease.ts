// The lender's side of one borrower (a connected secondary process, or a
// thread given a ticket): which containers it was granted, which devices it
// borrows, which IOVA blocks were reserved for it. Ending the lease gives
// everything back.
//
// Who owns what while a device is lent:
// - The lender owns the setup (assignment, IOMMU type and groups, IOAS,
//   bindings). The borrower uses it through its own fds and never changes it.
// - The borrower drives the device: the lender cannot open it while it is
//   lent (EBUSY), so MMIO, config space and interrupts are the borrower's.
//   Interrupts in particular: the borrower wires its own eventfds with
//   VFIO_DEVICE_SET_IRQS on its fd (one trigger table per device, so there
//   is one owner at a time). When the device comes back, the lender disables
//   every interrupt index, so triggers a dead borrower left behind never
//   fire into stale eventfds and the next user starts clean.
// - IOVA blocks reserved for the borrower are its own to map and unmap in;
//   when the lease ends they are cleared (unmapped, whatever the borrower
//   left there) and given back to the lender's allocator.
//
// Guarantees: end() gives back every device and block even when a step
// fails, and throws the first error; it is idempotent.
import { teardown } from '../base/cleanup.js';
import type { Container, LentDevice } from '../core/container/container.js';
import { ioctl } from '../uapi/ioctl.js';
import { usageError, VfioError } from '../base/errors.js';
import type { Sys } from '../libc/sys.js';
import * as codec from '../uapi/codec.js';
import {
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  vfio_irq_set,
} from '../uapi/vfio.js';

interface Loan {
  readonly container: Container;
  readonly device: LentDevice;
}

/** How much IOVA space one borrower may hold reserved at once (a secondary's; a thread's lender decides itself). */
export interface IovaQuota {
  /** Bytes over all its windows. */
  readonly bytes: bigint;
  /** Windows. */
  readonly windows: number;
}

export class Lease {
  /** Containers granted, with the groups (group modes) the borrower holds fds of. */
  private readonly granted = new Map<Container, Set<number>>();
  private readonly loans = new Map<string, Loan>();
  private readonly blocks = new Set<{ readonly container: Container; readonly iova: bigint; readonly size: bigint }>();
  private ended = false;

  constructor(
    /** Who borrows, for messages ("secondary pid 42", "a worker thread"). */
    readonly borrower: string,
    /** Null: no limit (the lender asks for itself, as for a thread). */
    private readonly quota: IovaQuota | null = null,
  ) {}

  /** True while the borrower holds a device or an IOVA window (what an idle connection must not lose by a timeout). */
  get holdsAnything(): boolean {
    return this.loans.size > 0 || this.blocks.size > 0;
  }

  /** True once the container was granted to this borrower. */
  holds(c: Container): boolean {
    return this.granted.has(c);
  }

  /** The container was granted, with its groups (group modes). */
  granting(c: Container, groups: readonly number[]): void {
    this.granted.set(c, new Set(groups));
  }

  /** True when the borrower already holds an fd of IOMMU group `group` of `c`. */
  holdsGroup(c: Container, group: number): boolean {
    return this.granted.get(c)?.has(group) ?? false;
  }

  /** The borrower got an fd of group `group` of `c`. */
  grantingGroup(c: Container, group: number): void {
    this.granted.get(c)?.add(group);
  }

  /**
   * Lends assigned device `address` of `c` (see Container.lendDevice).
   * @throws VfioError as Container.lendDevice.
   */
  lend(c: Container, address: string): LentDevice {
    const device = c.lendDevice(address, this.borrower);
    this.loans.set(address, { container: c, device });
    return device;
  }

  /** The device in `address` is lent to this borrower. */
  borrows(address: string): boolean {
    return this.loans.has(address);
  }

  /** The borrower released device `address` (a no-op if it does not borrow it). */
  giveBack(address: string): void {
    const loan = this.loans.get(address);
    if (loan === undefined) return;
    this.loans.delete(address);
    returnLoan(loan);
  }

  /**
   * Reserves an IOVA block of `c` for the borrower, within its quota.
   * @throws VfioError EDQUOT over the borrower's quota (bytes or windows);
   *   as Container.reserveIova.
   */
  reserve(c: Container, size: bigint, opts: { dmaLimit?: bigint; align?: bigint }): { iova: bigint; granule: bigint } {
    if (this.quota !== null) {
      let held = 0n;
      for (const b of this.blocks) held += b.size;
      if (this.blocks.size + 1 > this.quota.windows || held + size > this.quota.bytes) {
        throw usageError(
          'EDQUOT',
          `${this.borrower} holds ${this.blocks.size} IOVA windows of ${held} bytes; ` +
            `its quota is ${this.quota.windows} windows, ${this.quota.bytes} bytes`,
        );
      }
    }
    const got = c.reserveIova(size, opts);
    this.blocks.add({ container: c, iova: got.iova, size });
    return got;
  }

  /** Gives every device and IOVA block back. Idempotent; throws the first error. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    const steps: (() => void)[] = [];
    for (const [address, loan] of [...this.loans]) {
      steps.push(() => {
        this.loans.delete(address);
        returnLoan(loan);
      });
    }
    for (const block of [...this.blocks]) {
      steps.push(() => {
        this.blocks.delete(block);
        block.container.releaseIova(block.iova);
      });
    }
    this.granted.clear();
    teardown(steps);
  }
}

/** Back to the lender: interrupts off (what the borrower left wired), then the device is the lender's again. */
function returnLoan(loan: Loan): void {
  const { container, device } = loan;
  // A closed container has closed the device fd: nothing left to disable.
  if (container.closed) return;
  try {
    disableInterrupts(container.kernelEnv.sys, device);
  } finally {
    container.returnDevice(device.address);
  }
}

/**
 * VFIO_DEVICE_SET_IRQS (DATA_NONE | ACTION_TRIGGER, count 0) on INTx, MSI
 * and MSI-X: drops whatever triggers are wired. vfio-pci answers EINVAL for
 * an index that is not the enabled one (or that the device lacks): nothing
 * to disable there.
 */
function disableInterrupts(sys: Sys, device: LentDevice): void {
  for (const index of [VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX]) {
    const arg = codec.alloc(vfio_irq_set, {
      argsz: vfio_irq_set.size,
      flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
      index,
      start: 0,
      count: 0,
    });
    try {
      ioctl(sys, device.fd, 'VFIO_DEVICE_SET_IRQS', arg, { device: device.address, path: device.path });
    } catch (err) {
      if (!(err instanceof VfioError && err.code === 'EINVAL')) throw err;
    }
  }
}
