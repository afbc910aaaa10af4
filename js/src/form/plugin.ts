/**
 * Where the job form lives in JupyterLab: a left-sidebar panel ("New job"),
 * the command that opens it, and "Run as job…" on `.py` and `.ipynb` files in
 * the file browser, which opens it filled in (agent Script or Notebook with
 * `params.path`).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { LabIcon } from '@jupyterlab/ui-components';
import { Panel, Widget } from '@lumino/widgets';

import { ISubmission, JobForm } from './form';

export const FORM_PANEL_ID = 'cosmic-horizons-form';
export const CMD_NEW_JOB = 'cosmic-horizons:new-job';
export const CMD_RUN_AS_JOB = 'cosmic-horizons:run-as-job';

/** The agent that runs a file, by its extension; undefined for other files. */
export function agentForPath(path: string): ISubmission | undefined {
  if (/\.ipynb$/i.test(path)) {
    return { agent: 'Notebook', params: { path } };
  }
  if (/\.py$/i.test(path)) {
    return { agent: 'Script', params: { path } };
  }
  return undefined;
}

/**
 * The path (relative to the server root) of the file the file browser's
 * context menu was opened on. Read through the browser widget's own API
 * (`selectedItems()`), typed loosely so that the extension needs no
 * @jupyterlab/filebrowser build dependency.
 */
export function selectedPath(app: JupyterFrontEnd): string | undefined {
  for (const widget of app.shell.widgets('left')) {
    const browser = widget as any;
    if (widget.id === 'filebrowser' && typeof browser.selectedItems === 'function') {
      for (const item of browser.selectedItems()) {
        return String(item.path);
      }
    }
  }
  return undefined;
}

export function registerJobForm(
  app: JupyterFrontEnd,
  icon: LabIcon,
  onSubmitted: (job: any) => void
): { panel: Panel; form: JobForm } {
  const form = new JobForm({ onSubmitted });
  const panel = new Panel();
  panel.id = FORM_PANEL_ID;
  panel.addClass('ch-form-panel');
  panel.title.icon = icon;
  panel.title.caption = 'Cosmic Horizons: new job';
  const header = new Widget();
  header.node.className = 'ch-header';
  header.node.innerHTML = '<span class="ch-title">New job</span>';
  panel.addWidget(header);
  panel.addWidget(form);
  app.shell.add(panel, 'left', { rank: 851 });
  // Loaded when first shown: agents and datasets are then current.
  panel.node.addEventListener('focusin', () => void form.load(), { once: true });

  const open = async (body?: Partial<ISubmission>): Promise<void> => {
    app.shell.activateById(panel.id);
    if (body) {
      await form.fill(body);
    } else {
      await form.load();
    }
  };

  app.commands.addCommand(CMD_NEW_JOB, {
    label: 'New Cosmic Horizons job…',
    caption: 'Open the job form',
    execute: args => open(args?.agent ? (args as any) : undefined)
  });
  app.commands.addCommand(CMD_RUN_AS_JOB, {
    label: 'Run as job…',
    caption: 'Open the Cosmic Horizons job form for this file',
    isVisible: () => {
      const path = selectedPath(app);
      return !!path && !!agentForPath(path);
    },
    execute: args => {
      const path = (args?.path as string | undefined) ?? selectedPath(app);
      const body = path ? agentForPath(path) : undefined;
      return open(body);
    }
  });
  for (const type of ['python', 'notebook']) {
    app.contextMenu.addItem({
      command: CMD_RUN_AS_JOB,
      selector: `.jp-DirListing-item[data-file-type="${type}"]`,
      rank: 3
    });
  }
  return { panel, form };
}
