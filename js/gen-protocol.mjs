// Write src/model/protocol.generated.ts from the Python protocol: the job
// states and the API prefix have their one home in cosmic_horizons_lab/protocol,
// and the TypeScript imports them from this generated module only. Runs
// `python3 -m cosmic_horizons_lab.protocol.typescript` (standard library only,
// nothing installed) from the repository root; $PYTHON picks the interpreter.
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..');
const out = join(here, 'src', 'model', 'protocol.generated.ts');
const interpreters = process.env.PYTHON ? [process.env.PYTHON] : ['python3', 'python'];
for (const python of interpreters) {
  const run = spawnSync(python, ['-m', 'cosmic_horizons_lab.protocol.typescript', out], {
    cwd: root,
    stdio: 'inherit'
  });
  if (run.error && run.error.code === 'ENOENT') {
    continue;
  }
  if (run.error) {
    throw run.error;
  }
  process.exit(run.status ?? 1);
}
console.error(`gen-protocol: no Python interpreter found (tried ${interpreters.join(', ')})`);
process.exit(1);
