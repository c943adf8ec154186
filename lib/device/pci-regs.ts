// Register offsets and bits of PCI configuration space, as the PCI Local Bus
// and PCI Express Base specifications define them. These describe the
// hardware, not a kernel interface, so they are written out here; the uapi
// layouts (ioctl structs) come only from ../uapi.

/** Standard header (type 0), offsets in bytes. */
export const CFG_VENDOR_ID = 0x00;
export const CFG_DEVICE_ID = 0x02;
export const CFG_COMMAND = 0x04;
export const CFG_STATUS = 0x06;
export const CFG_REVISION = 0x08;
/** 24-bit class code: base class, subclass, programming interface. */
export const CFG_CLASS_PROG = 0x09;
export const CFG_HEADER_TYPE = 0x0e;
/** BAR n lives at CFG_BAR0 + 4n (n = 0..5). */
export const CFG_BAR0 = 0x10;
export const CFG_SUBSYSTEM_VENDOR_ID = 0x2c;
export const CFG_SUBSYSTEM_ID = 0x2e;
export const CFG_CAPABILITY_LIST = 0x34;
export const CFG_INTERRUPT_PIN = 0x3d;

/** Command register bits. */
export const COMMAND_IO_SPACE = 1 << 0;
export const COMMAND_MEMORY_SPACE = 1 << 1;
export const COMMAND_BUS_MASTER = 1 << 2;
export const COMMAND_INTX_DISABLE = 1 << 10;

/** Status register: the capability list at CFG_CAPABILITY_LIST is valid. */
export const STATUS_CAP_LIST = 1 << 4;

/** BAR register low bits. */
export const BAR_IO_SPACE = 1 << 0;
export const BAR_MEM_TYPE_MASK = 0b110;
export const BAR_MEM_TYPE_64 = 0b100;
export const BAR_MEM_PREFETCH = 1 << 3;

/** The standard capability list starts after the 64-byte header. */
export const STD_CAP_FLOOR = 0x40;
/** Extended capabilities (PCI Express) start here, after the 256-byte space. */
export const EXT_CAP_START = 0x100;
export const CONVENTIONAL_CONFIG_SIZE = 0x100;

/** Standard capability ids. */
export const CAP_ID = {
  pm: 0x01,
  agp: 0x02,
  vpd: 0x03,
  slotId: 0x04,
  msi: 0x05,
  hotSwap: 0x06,
  pcix: 0x07,
  hyperTransport: 0x08,
  vendor: 0x09,
  debug: 0x0a,
  compactPciControl: 0x0b,
  hotPlug: 0x0c,
  bridgeSubsystemVendor: 0x0d,
  agp8x: 0x0e,
  secureDevice: 0x0f,
  pcie: 0x10,
  msix: 0x11,
  sata: 0x12,
  advancedFeatures: 0x13,
  enhancedAllocation: 0x14,
  flatteningPortalBridge: 0x15,
} as const;

/** Extended capability ids (the ones a driver commonly looks for). */
export const EXT_CAP_ID = {
  aer: 0x0001,
  vc: 0x0002,
  serialNumber: 0x0003,
  powerBudget: 0x0004,
  vendor: 0x000b,
  acs: 0x000d,
  ari: 0x000e,
  ats: 0x000f,
  sriov: 0x0010,
  multicast: 0x0012,
  pri: 0x0013,
  resizableBar: 0x0015,
  dpa: 0x0016,
  tph: 0x0017,
  ltr: 0x0018,
  secondaryPcie: 0x0019,
  pasid: 0x001b,
  dpc: 0x001d,
  l1ss: 0x001e,
  ptm: 0x001f,
  dvsec: 0x0023,
  dataLink: 0x0025,
  physicalLayer16: 0x0026,
  laneMargining: 0x0027,
  doe: 0x002e,
} as const;

/** MSI-X capability: register offsets from the capability and field masks. */
export const MSIX_CONTROL = 0x02;
export const MSIX_CONTROL_TABLE_SIZE = 0x07ff;
export const MSIX_CONTROL_ENABLE = 1 << 15;
export const MSIX_TABLE = 0x04;
export const MSIX_PBA = 0x08;
/** Low 3 bits of the table/PBA register: the BAR (BIR); the rest: the offset. */
export const MSIX_BIR_MASK = 0x7;
/** Each MSI-X table entry is 16 bytes (address lo/hi, data, vector control). */
export const MSIX_ENTRY_SIZE = 16;

/** Upper bound on capability hops: the spec's 48 for the 192 bytes of standard space. */
export const STD_CAP_TTL = 48;
/** (4096 - 256) / 8: the most 8-byte-aligned extended headers that fit. */
export const EXT_CAP_TTL = 480;
