// Build the prebuilt JupyterLab 4 extension into
// cosmic_horizons_lab/labextension/ with @jupyter/builder.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const builder = require.resolve('@jupyter/builder/lib/build-labextension.js');
const core = require.resolve('@jupyterlab/core-meta/core.package.json');
const args = [builder, '--core-package-file', core, '.'];
if (process.argv.includes('--development')) {
  args.push('--development');
}
execFileSync(process.execPath, args, { stdio: 'inherit' });
