// Bundle each anywidget view (src/widgets/*.ts, not common) into one ES
// module under cosmic_horizons_lab/static/, with no import left to fetch: what
// a view uses from src/model and src/api (page.ts, paths.ts; never the
// JupyterLab packages) is inlined into it.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';

const out = '../cosmic_horizons_lab/static';
mkdirSync(out, { recursive: true });
const common = { bundle: true, format: 'esm', target: 'es2020', minify: true, outdir: out, logLevel: 'warning' };
await build({
  ...common,
  entryPoints: ['progress', 'queue', 'heatmap', 'timeline', 'staging', 'usage'].map(n => `src/widgets/${n}.ts`)
});
// The sky view inlines Aladin Lite (GPL-3, docs/licensing.md): say so in the file, and ship its
// licence text beside it.
const aladin = JSON.parse(readFileSync('node_modules/aladin-lite/package.json', 'utf8'));
await build({
  ...common,
  entryPoints: ['src/widgets/sky.ts'],
  banner: {
    js: `/*! Includes Aladin Lite ${aladin.version} (CDS, Université de Strasbourg), GPL-3.0: ` +
      `see aladin-lite.COPYING beside this file; source: https://github.com/cds-astro/aladin-lite */`
  }
});
copyFileSync('node_modules/aladin-lite/COPYING', `${out}/aladin-lite.COPYING`);
copyFileSync('src/widgets/widgets.css', `${out}/widgets.css`);
