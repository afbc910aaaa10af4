/**
 * The Cosmic Horizons JupyterLab extension: a left-sidebar panel listing the
 * caller's jobs live, with cancel, log tail, outputs and the GPU heatmap.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { LabIcon } from '@jupyterlab/ui-components';

import { JobsPanel } from './sidebar/panel';
import { SkyPanel } from './sidebar/sky';
import { CMD_NEW_JOB, registerCreateWork } from './create';
import { restorePlugin } from './panels/restore';

export { JobsPanel } from './sidebar/panel';
export { EventStream } from './api/events';
export { requestAPI, ApiError } from './api/rest';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">
  <g class="jp-icon3" fill="#616161">
    <circle cx="12" cy="12" r="2.5"/>
    <path d="M12 3a9 9 0 1 0 9 9h-2a7 7 0 1 1-7-7V3z"/>
    <path d="M12 7a5 5 0 1 0 5 5h-2a3 3 0 1 1-3-3V7z"/>
  </g></svg>`;

export const cosmicIcon = new LabIcon({ name: 'cosmic-horizons:icon', svgstr: ICON_SVG });

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'cosmic-horizons-lab:sidebar',
  description: 'Cosmic Horizons jobs and GPUs in the left sidebar.',
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    const panel = new JobsPanel({
      openPath: path => void app.commands.execute('filebrowser:open-path', { path }),
      onNewJob: () => void app.commands.execute(CMD_NEW_JOB)
    });
    panel.title.icon = cosmicIcon;
    panel.title.caption = 'Cosmic Horizons: your jobs and GPUs';
    app.shell.add(panel, 'left', { rank: 850 });
    void panel.start();
    registerCreateWork(app, panel, cosmicIcon);
    // The Sky: the coverage of the caller's results; a footprint's click opens its job's row.
    const sky = new SkyPanel({
      openJob: id => {
        app.shell.activateById(panel.id);
        const line = panel.node.querySelector(`.ch-job[data-job-id='${CSS.escape(id)}']:not(.ch-expanded) .ch-job-line`);
        (line as HTMLElement | null)?.click();
        panel.node.querySelector(`.ch-job[data-job-id='${CSS.escape(id)}']`)?.scrollIntoView({ block: 'nearest' });
      }
    });
    sky.title.icon = cosmicIcon;
    sky.title.label = 'Sky';
    app.shell.add(sky, 'left', { rank: 851 });
    (window as any).cosmicHorizonsSky = sky;
    // Open on the first launch in this browser, so a new user sees where jobs appear; after
    // that, the layout the user left (JupyterLab restores it) decides.
    void app.restored.then(() => {
      const seen = 'cosmic-horizons:sidebar-shown';
      if (!window.localStorage.getItem(seen)) {
        window.localStorage.setItem(seen, '1');
        app.shell.activateById(panel.id);
      }
    });
    // For the browser tests and benchmarks: the panel's state, read-only use.
    (window as any).cosmicHorizonsPanel = panel;
  }
};

export default [plugin, restorePlugin];
