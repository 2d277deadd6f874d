// The rankings page: polls the JSON endpoints every few seconds and draws
// them. Every name from the data goes into the page as text (textContent),
// never as markup.
'use strict';

const REFRESH_MS = 5000;
const COLORS = ['#4f46e5', '#0891b2', '#16a34a', '#ca8a04', '#dc2626', '#9333ea',
  '#0d9488', '#ea580c', '#2563eb', '#db2777', '#65a30d', '#7c3aed', '#0284c7',
  '#b45309', '#be123c', '#4338ca', '#047857', '#a21caf', '#1d4ed8', '#c2410c'];
const OTHERS_COLOR = '#cbd5e1';

const exact = new Intl.NumberFormat('en-US');
const usd = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' });
const state = { day: null, pinned: false, series: null, chart: null, timer: null };

function $(id) { return document.getElementById(id); }

function human(n) {
  const units = [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'K']];
  for (const [scale, unit] of units) {
    if (n >= scale) return (n / scale).toFixed(2).replace(/\.?0+$/, '') + unit;
  }
  return String(n);
}

function percent(x) { return (x * 100).toFixed(1) + '%'; }

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: 'application/json' } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || ('HTTP ' + response.status));
  return body;
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function addDays(day, n) {
  const d = new Date(day + 'T00:00:00Z');
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

function drawChart(series) {
  const datasets = series.models.map((m, i) => ({
    label: m.model,
    data: m.tokens,
    backgroundColor: COLORS[i % COLORS.length],
    stack: 'tokens',
  }));
  if (series.others.some((v) => v > 0)) {
    datasets.push({ label: 'Others', data: series.others, backgroundColor: OTHERS_COLOR, stack: 'tokens' });
  }
  if (state.chart) {
    state.chart.data.labels = series.days;
    state.chart.data.datasets = datasets;
    state.chart.update('none');
    return;
  }
  state.chart = new Chart($('chart'), {
    type: 'bar',
    data: { labels: series.days, datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: 'index', intersect: false },
      scales: {
        x: { stacked: true, grid: { display: false } },
        y: { stacked: true, ticks: { callback: (v) => human(v) } },
      },
      plugins: {
        legend: { position: 'bottom', labels: { boxWidth: 12 } },
        tooltip: { callbacks: { label: (c) => c.dataset.label + ': ' + exact.format(c.raw) + ' tokens' } },
      },
      onClick: (_event, elements) => {
        if (elements.length > 0) {
          selectDay(state.chart.data.labels[elements[0].index], true);
        }
      },
    },
  });
}

function drawLeaderboard(board) {
  $('day-label').textContent = board.day;
  $('day-total').textContent = exact.format(board.total_tokens) + ' tokens, ' +
    exact.format(board.total_requests) + ' requests';
  const body = document.createElement('tbody');
  for (const r of board.rows) {
    const tr = document.createElement('tr');
    cell(tr, String(r.rank));
    cell(tr, r.model, 'model');
    cell(tr, r.provider, 'provider');
    cell(tr, exact.format(r.tokens), 'num tokens').title = human(r.tokens);
    cell(tr, exact.format(r.requests), 'num requests');
    cell(tr, percent(r.share), 'num share');
    if (r.change === null) {
      cell(tr, r.previous_tokens === null ? 'new' : '–', 'num change');
    } else {
      const sign = r.change >= 0 ? '+' : '';
      cell(tr, sign + percent(r.change), 'num change ' + (r.change >= 0 ? 'up' : 'down'));
    }
    const spend = r.cost_usd === null ? '–' : usd.format(Number(r.cost_usd));
    cell(tr, spend, 'num spend').title = r.cost_usd === null ? 'no price for this model' : r.cost_usd;
    body.appendChild(tr);
  }
  $('leaderboard').replaceChild(body, $('leaderboard').tBodies[0]);
}

function drawApps(apps) {
  $('apps-day-label').textContent = apps.day;
  const body = document.createElement('tbody');
  for (const a of apps.rows) {
    const tr = document.createElement('tr');
    cell(tr, String(a.rank));
    if (a.app === '') {
      cell(tr, '(no app)', 'app dim');
    } else {
      cell(tr, a.app, 'app');
    }
    cell(tr, exact.format(a.tokens), 'num tokens');
    cell(tr, exact.format(a.requests), 'num requests');
    cell(tr, percent(a.share), 'num share');
    cell(tr, String(a.models), 'num');
    cell(tr, a.top_model, 'model');
    body.appendChild(tr);
  }
  $('apps').replaceChild(body, $('apps').tBodies[0]);
}

function drawMilestones(feed) {
  const list = document.createElement('ul');
  list.id = 'milestones';
  for (const m of feed.milestones) {
    const li = document.createElement('li');
    li.className = 'milestone ' + m.type;
    const time = document.createElement('time');
    time.dateTime = m.detected_at;
    time.textContent = m.detected_at;
    li.appendChild(time);
    li.appendChild(document.createTextNode(m.headline));
    list.appendChild(li);
  }
  if (feed.milestones.length === 0) {
    const li = document.createElement('li');
    li.className = 'dim';
    li.textContent = 'No milestones yet.';
    list.appendChild(li);
  }
  $('milestones').replaceWith(list);
}

async function refreshDay() {
  const day = encodeURIComponent(state.day);
  const [board, apps] = await Promise.all([
    getJson('api/leaderboard?day=' + day),
    getJson('api/apps?day=' + day),
  ]);
  drawLeaderboard(board);
  drawApps(apps);
}

function selectDay(day, pinned) {
  state.day = day;
  state.pinned = pinned;
  refreshDay().catch(showError);
}

function showError(e) {
  $('status').textContent = 'Could not load: ' + e.message + ' (retrying)';
  $('status').className = 'error';
}

async function refresh() {
  const range = Number($('range').value);
  const top = Number($('top').value);
  // The range ends at the newest day the server has, as it grows.
  const path = 'api/series?top=' + top + '&days=' + range;
  const series = await getJson(path);
  state.series = series;
  drawChart(series);
  if (!state.pinned || state.day === null) state.day = series.to;
  const [, feed] = await Promise.all([refreshDay(), getJson('api/milestones')]);
  drawMilestones(feed);
  $('status').textContent = 'Updated ' + new Date().toLocaleTimeString() + ', every ' + REFRESH_MS / 1000 + ' s';
  $('status').className = 'dim';
  document.body.dataset.state = 'ready';
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}

function loop() {
  refresh().catch(showError).finally(() => {
    state.timer = setTimeout(loop, REFRESH_MS);
  });
}

function restart() {
  clearTimeout(state.timer);
  loop();
}

// `?days=N&top=N` in the page's URL choose the range and the models shown.
function fromUrl() {
  const params = new URLSearchParams(location.search);
  for (const [name, unit] of [['days', ' days'], ['top', '']]) {
    const value = params.get(name);
    if (value === null || !/^[1-9][0-9]{0,2}$/.test(value)) continue;
    const select = $(name === 'days' ? 'range' : 'top');
    if (![...select.options].some((o) => o.value === value)) {
      const option = document.createElement('option');
      option.value = value;
      option.textContent = (name === 'top' ? 'top ' : '') + value + unit;
      select.appendChild(option);
    }
    select.value = value;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  fromUrl();
  $('range').addEventListener('change', restart);
  $('top').addEventListener('change', restart);
  $('prev-day').addEventListener('click', () => { if (state.day) selectDay(addDays(state.day, -1), true); });
  $('next-day').addEventListener('click', () => { if (state.day) selectDay(addDays(state.day, 1), true); });
  loop();
});
