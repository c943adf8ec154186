// Sharing containers, devices and DMA memory with other processes (a
// primary serving secondaries over a Unix socket, DPDK-style) and with
// worker threads (tickets of duplicated fds). See README.md in this folder.
export { ShareServer, type ShareServerOptions } from './server.js';
export { connectPrimary, Secondary, type ConnectOptions, type ServedContainer, type ServedBuffer } from './secondary.js';
export { lendToThread, adoptFromThread, ThreadLease, ThreadBorrow, type ThreadLeaseOptions, type ThreadTicket } from './thread.js';
export { PROTOCOL, PROTOCOL_VERSION } from './protocol.js';
