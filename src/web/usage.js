import { api, bindKeyForm, h, setStatus, showError, storedKey } from './common.js';

const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 640;
const ROW = 28;
const VALUE_WIDTH = 90;

/** The period as GET /v1/usage takes it; the form's "to" day is included, the API's `to` is exclusive. */
function periodParams() {
  const params = new URLSearchParams();
  if ($('from').value) params.set('from', $('from').value);
  if ($('to').value) {
    const next = new Date(`${$('to').value}T00:00:00Z`);
    next.setUTCDate(next.getUTCDate() + 1);
    params.set('to', next.toISOString().slice(0, 10));
  }
  return params;
}

async function load() {
  showError('');
  setStatus('Loading…');
  const period = periodParams();
  const query = (groupBy) => `/v1/usage?${new URLSearchParams([['group_by', groupBy], ...period])}`;
  const [byDay, byModel] = await Promise.all([api(query('day')), api(query('model'))]);
  const failed = [byDay, byModel].find((r) => !r.ok);
  if (failed) {
    $('report').hidden = true;
    setStatus('');
    showError(failed.message);
    return;
  }
  const totals = byDay.body.totals;
  $('total-cost').textContent = `$${totals.cost_usd}`;
  $('total-cost').dataset.costUsd = totals.cost_usd;
  $('total-requests').textContent = totals.requests;
  $('total-images').textContent = totals.images;
  $('usage-query').textContent = `${query('day')} · ${query('model')}`;
  drawChart($('by-day'), byDay.body.data, 'Day');
  drawChart($('by-model'), byModel.body.data, 'Model');
  $('report').hidden = false;
  setStatus(totals.requests === 0 ? 'No spend in this period.' : '');
}

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/**
 * A horizontal bar per group, then the same rows as a table. The amounts are
 * the API's decimal strings, shown and kept (data-cost-usd) as they came;
 * numbers are made of them only to size the bars.
 */
function drawChart(figure, rows, groupLabel) {
  figure.querySelector('svg')?.remove();
  figure.querySelector('table')?.remove();
  const longest = Math.max(4, ...rows.map((r) => r.group.length));
  const labelWidth = Math.min(260, 16 + 7 * longest);
  const barSpace = WIDTH - labelWidth - VALUE_WIDTH;
  const max = Math.max(0, ...rows.map((r) => Number(r.cost_usd)));
  const height = Math.max(1, rows.length) * ROW + 8;

  const chart = svg('svg', { viewBox: `0 0 ${WIDTH} ${height}`, role: 'img', 'aria-label': `Spend by ${groupLabel.toLowerCase()}, in US dollars` });
  chart.append(svg('line', { x1: labelWidth, x2: labelWidth, y1: 0, y2: height, class: 'axis' }));
  rows.forEach((r, i) => {
    const y = 4 + i * ROW;
    const w = max > 0 ? (Number(r.cost_usd) / max) * barSpace : 0;
    const bar = svg('rect', { x: labelWidth, y: y + 4, width: Math.max(w, 1), height: ROW - 8, class: 'bar', 'data-group': r.group, 'data-cost-usd': r.cost_usd });
    bar.append(svg('title', {}, `${r.group}: $${r.cost_usd}`));
    chart.append(
      svg('text', { x: labelWidth - 8, y: y + ROW / 2 + 4, 'text-anchor': 'end', class: 'label' }, r.group),
      bar,
      svg('text', { x: labelWidth + w + 6, y: y + ROW / 2 + 4, class: 'value' }, `$${r.cost_usd}`),
    );
  });
  if (rows.length === 0) chart.append(svg('text', { x: labelWidth + 8, y: ROW / 2 + 6, class: 'label' }, 'No spend in this period'));

  const table = h(
    'table',
    { class: 'data', 'data-group-by': figure.dataset.groupBy },
    h('caption', {}, `Spend by ${groupLabel.toLowerCase()}`),
    h('thead', {}, h('tr', {}, ...[groupLabel, 'Requests', 'Images', 'Cost (USD)', 'Credits'].map((t) => h('th', { scope: 'col' }, t)))),
    h(
      'tbody',
      {},
      ...rows.map((r) =>
        h(
          'tr',
          { 'data-group': r.group, 'data-requests': r.requests, 'data-images': r.images, 'data-cost-usd': r.cost_usd, 'data-credits': r.credits },
          h('th', { scope: 'row' }, r.group),
          h('td', {}, String(r.requests)),
          h('td', {}, String(r.images)),
          h('td', {}, r.cost_usd),
          h('td', {}, r.credits.toLocaleString('en')),
        ),
      ),
    ),
  );
  figure.append(chart, table);
}

$('period-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (storedKey()) load();
  else showError('Type your API key first.');
});
bindKeyForm(load);
