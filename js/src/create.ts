/**
 * The views that create work (issue 13): the job form with "Run as job…", the
 * pipeline composer, and the Slurm queue view. One entry point, so that the
 * extension's plugin only calls this.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { LabIcon } from '@jupyterlab/ui-components';

import { registerJobForm } from './form/plugin';
import { registerSlurmQueue } from './queue/view';
import { CMD_COMPOSER, registerComposer } from './composer/plugin';
import { JobsPanel } from './sidebar/panel';

export { CMD_NEW_JOB } from './form/plugin';

export function registerCreateWork(app: JupyterFrontEnd, jobs: JobsPanel, icon: LabIcon): void {
  const { form } = registerJobForm(app, icon, job => {
    // The new job shows in the jobs panel (its events bring it; the reload makes sure).
    app.shell.activateById(jobs.id);
    void jobs.reload();
    void job;
  });
  (window as any).cosmicHorizonsForm = form;
  void registerSlurmQueue(app, icon);
  registerComposer(app);
  jobs.node.querySelector('.ch-header')?.insertBefore(pipelineButton(app), jobs.node.querySelector('.ch-refresh'));
}

/** "Pipeline" in the jobs panel's header: opens the composer. */
function pipelineButton(app: JupyterFrontEnd): HTMLElement {
  const button = document.createElement('button');
  button.className = 'ch-head-button ch-open-composer jp-Button';
  button.title = 'Open the pipeline composer';
  button.textContent = '⧉ Pipeline';
  button.addEventListener('click', () => void app.commands.execute(CMD_COMPOSER));
  return button;
}
