#!/usr/bin/env node
// The node entry of the `ferry` command: runs the compiled CLI (built by `npm install` via the prepare script).
// `bin/ferry` (the command npm installs) sets glibc's malloc up for a daemon and runs this in its own
// process; `node bin/ferry.js` runs the same CLI without that tuning.
// File system calls (writes, fsyncs of many chunks at once) run on libuv's thread pool: four threads,
// the default, would serialise them. Set before anything uses the pool.
process.env.UV_THREADPOOL_SIZE ??= '32';
import('../dist/cli/main.js').then((cli) => cli.main(process.argv)).catch((error) => {
  if (error && error.code === 'ERR_MODULE_NOT_FOUND' && String(error.message).includes('dist/cli/main.js')) {
    console.error('ferry: not built yet; run `npm install` (or `npm run build`) in the repository first');
  } else {
    console.error(error);
  }
  process.exit(70);
});
