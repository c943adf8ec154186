// A behavioural model of a fake device: what the device does with its
// registers, and when.
//
// Two ways in, as on real hardware:
// - pread/pwrite of a BAR: vfio-pci turns a transfer into accesses of 8, 4, 2
//   or 1 bytes (vfio_pci_core_do_io_rw: the widest the alignment and the
//   remaining length allow). A model with `read`/`write` gets each of those
//   accesses with its width, so its register semantics are exact there.
// - Loads and stores through an mmap'd view: plain memory the process reaches
//   without a system call, so a model cannot see them one by one. It sees
//   what changed at its next `tick`: before every Sys call, before a poll
//   looks at its fds, at a time it asked for (`wakeAt`), and every
//   millisecond while the device is open (the "bus clock": a driver that
//   stores a command and then waits with timers, making no system call, is
//   served as hardware would serve it).
export type IrqKind = 'intx' | 'msi' | 'msix' | 'err' | 'req';

/** One device access: 1, 2, 4 or 8 bytes. */
export type AccessWidth = 1 | 2 | 4 | 8;

export interface DeviceContext {
  /** BAR `index`'s memory: the same bytes mmap views reach. */
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
  /** The device's clock, in milliseconds (monotonic). */
  now(): number;
  /** Asks for a `tick` at time `at` (of `now()`) or soon after, whatever the process does meanwhile. */
  wakeAt(at: number): void;
  /** Writes to the fake's kernel log. */
  log(line: string): void;
}

export interface DeviceModel {
  /**
   * What a reset does to the device: called at device creation (power on),
   * at a function reset and at a hot reset, after BAR memory was cleared to
   * the BAR's `init` contents. A model whose hardware has no reset handler
   * (QEMU's edu) keeps its state and only shows it again.
   */
  reset(ctx: DeviceContext): void;
  /** Lets the device act: on stores made through mappings since the last tick, and on work that is due. */
  tick(ctx: DeviceContext): void;
  /** One load of `width` bytes at `offset` of BAR `bar` (pread path). Without read/write, BARs are plain memory. */
  read?(ctx: DeviceContext, bar: number, offset: number, width: AccessWidth): bigint;
  /** One store of `width` bytes (pwrite path); `value` holds exactly `width` bytes. */
  write?(ctx: DeviceContext, bar: number, offset: number, width: AccessWidth, value: bigint): void;
}
