#!/usr/bin/env node
// Entry point of the `ferry` command: runs the compiled CLI (built by `npm install` via the prepare script).
import('../dist/cli/main.js').then((cli) => cli.main(process.argv)).catch((error) => {
  if (error && error.code === 'ERR_MODULE_NOT_FOUND' && String(error.message).includes('dist/cli/main.js')) {
    console.error('ferry: not built yet; run `npm install` (or `npm run build`) in the repository first');
  } else {
    console.error(error);
  }
  process.exit(70);
});
