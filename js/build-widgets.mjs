// Bundle each anywidget view (src/widgets/*.ts, not common) into one ES
// module under cosmic_horizons_lab/static/, with no import left to fetch: what
// a view uses from src/model and src/api (page.ts, paths.ts; never the
// JupyterLab packages) is inlined into it.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';

const out = '../cosmic_horizons_lab/static';
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ['progress', 'queue', 'heatmap', 'timeline', 'staging', 'sky', 'usage'].map(n => `src/widgets/${n}.ts`),
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  outdir: out,
  logLevel: 'warning'
});
copyFileSync('src/widgets/widgets.css', `${out}/widgets.css`);
