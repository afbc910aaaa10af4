/**
 * The composer in JupyterLab: a command that opens an empty composer, and
 * "Open in pipeline composer" on `*.pipeline.json` files, which opens the
 * saved pipeline ready to re-run.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';

import { EventStream } from '../api/events';

import { selectedPath } from '../form/plugin';
import { PipelineComposer } from './composer';

export const CMD_COMPOSER = 'cosmic-horizons:pipeline-composer';
export const CMD_OPEN_PIPELINE = 'cosmic-horizons:open-pipeline';

/** The jobs sidebar's event stream, which the composer follows too (one WebSocket per page). */
function sidebarEvents(app: JupyterFrontEnd): EventStream | undefined {
  for (const widget of app.shell.widgets('left')) {
    const stream = (widget as any).eventStream;
    if (widget.id === 'cosmic-horizons-sidebar' && stream instanceof EventStream) {
      return stream;
    }
  }
  return undefined;
}

export function registerComposer(app: JupyterFrontEnd): void {
  const open = async (path?: string): Promise<PipelineComposer> => {
    const composer = new PipelineComposer(app.serviceManager.contents, undefined, sidebarEvents(app));
    app.shell.add(composer, 'main');
    app.shell.activateById(composer.id);
    if (path) {
      await composer.open(path);
    }
    (window as any).cosmicHorizonsComposer = composer;
    return composer;
  };
  app.commands.addCommand(CMD_COMPOSER, {
    label: 'Cosmic Horizons pipeline composer',
    caption: 'Compose a pipeline of jobs as a DAG',
    execute: () => open()
  });
  app.commands.addCommand(CMD_OPEN_PIPELINE, {
    label: 'Open in pipeline composer',
    isVisible: () => /\.pipeline\.json$/.test(selectedPath(app) ?? ''),
    execute: args => open((args?.path as string | undefined) ?? selectedPath(app))
  });
  app.contextMenu.addItem({
    command: CMD_OPEN_PIPELINE,
    selector: '.jp-DirListing-item[data-file-type="json"]',
    rank: 3
  });
}
