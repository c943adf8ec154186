#!/usr/bin/env node
// The `vfio` executable (package.json "bin"): the real machine's environment
// and the real-kernel context, handed to main(). Kept out of lib/index.ts's
// import graph: importing the library never loads the command line.
import { vfio } from '../index.js';
import { realEnv } from './env.js';
import { main } from './main.js';

process.exitCode = main(
  process.argv.slice(2),
  realEnv(() => vfio),
);
