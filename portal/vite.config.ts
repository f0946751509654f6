/**
 * Vite build of the portal: `vite build portal` (run by `npm run build`) bundles portal/src into
 * dist/portal, which the server serves at `/` (src/server/portal.ts). Everything is bundled: the portal
 * loads nothing from elsewhere at run time. `npx vite portal` serves it for development, passing /api to
 * a local server (FERRY_SERVER, default http://127.0.0.1:7300).
 */
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  // JSX without a plugin: Vite's own transform, with React's automatic runtime.
  oxc: { jsx: { runtime: 'automatic' } },
  build: {
    outDir: '../dist/portal',
    emptyOutDir: true,
    // The server's content security policy allows no inline code: keep even tiny assets as files.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  server: {
    proxy: { '/api': process.env.FERRY_SERVER ?? 'http://127.0.0.1:7300' },
  },
});
