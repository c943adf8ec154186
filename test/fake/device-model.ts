// A behavioural model of a fake device: what the device does with its
// registers. Register bytes live in BAR memory, which the process may reach
// through an mmap'd view without any system call, so a model cannot see each
// store: it runs at system call boundaries instead (`tick`, before every Sys
// call and before a poll looks at its fds), and after each pwrite/before
// each pread of a BAR, where register semantics are exact.
export type IrqKind = 'intx' | 'msi' | 'msix' | 'err' | 'req';

export interface DeviceContext {
  /** BAR `index`'s memory: the same bytes mmap views and pread/pwrite reach. */
  bar(index: number): Uint8Array;
  /** Whether MSI (or MSI-X) is enabled through VFIO_DEVICE_SET_IRQS. */
  readonly msiEnabled: boolean;
  readonly msixEnabled: boolean;
  /** Whether bus mastering is on in the command register (DMA and MSI need it). */
  readonly busMaster: boolean;
  /** Raises an interrupt. INTx is level-triggered: it stays asserted until lowerIntx(). Returns whether an eventfd was signalled. */
  raise(kind: 'intx' | 'msi' | 'msix', vector?: number): boolean;
  lowerIntx(): void;
  /** DMA from the device's point of view: through the IOMMU, or physical addresses in no-IOMMU mode. */
  dmaRead(iova: bigint, length: number): Uint8Array;
  dmaWrite(iova: bigint, bytes: Uint8Array): void;
  /** Writes to the fake's kernel log. */
  log(line: string): void;
}

export interface DeviceModel {
  /** Puts registers in their power-on state (device creation, function reset, hot reset). */
  reset(ctx: DeviceContext): void;
  /** Lets the device act on what was written since the last tick. */
  tick(ctx: DeviceContext): void;
}
