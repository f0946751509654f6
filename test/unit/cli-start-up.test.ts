/**
 * What the `ferry` command loads before it parses its arguments: the modules the compiled
 * dist/cli/main.js imports statically, and what they import in turn. Other modules are loaded by
 * the commands that need them, with `import()`. zod (the API's schemas, about 60 ms to load), Fastify,
 * the server and the disk image formats would otherwise slow every command's start, `ferry image
 * convert` among them (0.09 s with them left out, 0.22 s with them). This walks that static import
 * graph of the build (`npm test` builds first) and fails when a static import pulls one of them in.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const dist = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist');

/** The modules (paths relative to dist) and packages reached by static imports from `entry`. */
function staticImports(entry: string): { modules: string[]; packages: string[] } {
  const modules = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string) => {
    if (modules.has(file)) return;
    modules.add(file);
    // `import ... from "x"`, `import "x"` and `export ... from "x"` statements; `import("x")` is not one.
    for (const [, specifier] of readFileSync(file, 'utf8').matchAll(/^(?:import|export)\s+(?:[^'";]*?\s+from\s+)?["']([^"']+)["'];?$/gms)) {
      if (specifier!.startsWith('.')) visit(path.resolve(path.dirname(file), specifier!));
      else packages.add(specifier!);
    }
  };
  visit(entry);
  return { modules: [...modules].map((file) => path.relative(dist, file)), packages: [...packages] };
}

test('the CLI loads commander and its own command modules at start-up, not zod, Fastify, the server or the disk formats', () => {
  const entry = path.join(dist, 'cli', 'main.js');
  assert.ok(existsSync(entry), 'dist/cli/main.js exists (run `npm run build`)');
  const { modules, packages } = staticImports(entry);
  assert.ok(modules.includes(path.join('cli', 'plans.js')) && modules.includes(path.join('cli', 'images.js')), 'the walk follows the command modules');
  assert.deepEqual(packages.filter((name) => !name.startsWith('node:')), ['commander']);
  assert.deepEqual(modules.filter((module) => /^(disks|server|protocol|demo)\//.test(module)), []);
});
