/**
 * The view of Usage (`lab.usage()`): an account's GPU-hours, jobs and success rate per period and
 * each agent's runtime over time (model/usage.ts draws them), with a period switch that asks the
 * kernel to fetch again.
 */
import { renderUsage } from '../model/usage';
import { RenderProps, h, stamp } from './common';

function render({ model, el }: RenderProps): () => void {
  const root = h('div', 'chw chw-usage');
  const head = h('div', 'chw-head');
  head.append(h('span', 'chw-name', 'Usage'));
  const select = h('select', 'chw-usage-period');
  for (const p of ['day', 'week', 'month']) {
    const option = h('option', '', p);
    option.value = p;
    select.append(option);
  }
  select.addEventListener('change', () => model.send({ action: 'period', period: select.value }));
  head.append(select);
  const error = h('div', 'chw-error');
  const body = h('div', 'chw-usage-body');
  root.append(head, error, body);
  el.append(root);

  const update = () => {
    select.value = model.get('period') ?? 'week';
    error.textContent = model.get('error') ?? '';
    renderUsage(body, model.get('account'), model.get('agents'), model.get('leaderboard'));
    stamp(root);
  };
  update();
  const names = ['change:account', 'change:agents', 'change:leaderboard', 'change:error', 'change:period'];
  for (const name of names) {
    model.on(name, update);
  }
  return () => {
    for (const name of names) {
      model.off(name, update);
    }
  };
}

export default { render };
