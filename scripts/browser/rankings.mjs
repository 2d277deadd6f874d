// Load the rankings page in headless Chromium and print what it shows, as
// JSON on stdout (tests/serve.rs compares it with `tokentally query`).
// Usage: rankings.mjs URL SCREENSHOT_PNG
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: rankings.mjs URL SCREENSHOT_PNG');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // As root in a container, without the network: no sandbox, and none of
  // Chromium's own background connections.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  const consoleErrors = [];
  const dialogs = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  const started = Date.now();
  await page.goto(url);
  await page.waitForSelector('body[data-state="ready"]', { timeout: 60000 });
  const loadMs = Date.now() - started;
  // A second refresh, to show that polling keeps the page whole.
  await page.waitForFunction(() => Number(document.body.dataset.refreshes) >= 2, null, { timeout: 60000 });
  const shown = await page.evaluate(() => {
    const chart = Chart.getChart('chart');
    const rows = (id) => [...document.querySelectorAll('#' + id + ' tbody tr')]
      .map((tr) => [...tr.cells].map((td) => td.textContent));
    return {
      days: chart.data.labels,
      datasets: chart.data.datasets.map((d) => ({ label: d.label, data: d.data })),
      // Bars drawn per dataset: one per day.
      bars: chart.data.datasets.map((_, i) => chart.getDatasetMeta(i).data.length),
      day: document.getElementById('day-label').textContent,
      leaderboard: rows('leaderboard'),
      apps: rows('apps'),
      milestones: [...document.querySelectorAll('#milestones li')].map((li) => li.textContent),
      scripts: document.scripts.length,
    };
  });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ...shown, consoleErrors, dialogs, loadMs }));
} finally {
  await browser.close();
}
