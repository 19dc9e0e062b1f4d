// The dashboard's first render at scale, in Debian's chromium (headless):
// the Keys page with 1,000 keys and the Overview over 1,000,000 records,
// from navigation start to the page drawn (every key row; the overview's
// figures and charts), with the admin token already in the tab's session.
//
//   cargo run --release -p keypool --example dashboard_db -- target/dash-1m.db
//   cargo build --release -p keypool
//   node bench/dashboard.mjs target/dash-1m.db [RUNS]
//
// Needs playwright-core in crates/keypool/tests/browser/node_modules
// (scripts/test installs it: `npm ci` there). KP_BIN picks the keypool
// binary (default target/release/keypool). With KP_URL and KP_ADMIN set it
// measures that running server instead (DB is then only a name for the
// output). Figures in docs/benchmarks.md.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import net from 'node:net';

const root = fileURLToPath(new URL('..', import.meta.url));
const { chromium } = await import(`${root}crates/keypool/tests/browser/node_modules/playwright-core/index.mjs`);
const db = process.argv[2];
const runs = Number(process.argv[3] || 7);
if (!db) { console.error('usage: node bench/dashboard.mjs DB [RUNS]'); process.exit(2); }

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const admin = process.env.KP_ADMIN || 'bench-admin-token-0123456789abcdef';
const base = process.env.KP_URL || `http://127.0.0.1:${port}`;
const server = process.env.KP_URL ? null : spawn(process.env.KP_BIN || `${root}target/release/keypool`, ['serve'], {
  env: { ...process.env, KEYPOOL_DATABASE_URL: `sqlite://${db}`, KEYPOOL_LISTEN: `127.0.0.1:${port}`,
    KEYPOOL_ADMIN_TOKEN: admin, KEYPOOL_UPSTREAM: 'http://127.0.0.1:9/v1', KEYPOOL_TIME_ZONE: 'Asia/Shanghai' },
  stdio: ['ignore', 'ignore', 'inherit'],
});
for (let i = 0; ; i++) {
  try { if ((await fetch(`${base}/admin`)).ok) break; } catch { /* not up yet */ }
  if (i > 300) throw new Error('keypool did not start');
  await new Promise((r) => setTimeout(r, 100));
}

const browser = await chromium.launch({ executablePath: process.env.KP_CHROMIUM || '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Milliseconds from navigation start until `ready` holds in the page, `runs` times in fresh tabs. */
async function measure(hash, ready) {
  const times = [];
  for (let i = 0; i < runs; i++) {
    const ctx = await browser.newContext({ viewport: { width: 1360, height: 900 } });
    await ctx.addInitScript((token) => sessionStorage.setItem('kp.token', token), admin);
    const page = await ctx.newPage();
    await page.goto(`${base}/admin${hash}`, { waitUntil: 'commit' });
    await page.waitForFunction(ready, null, { polling: 'raf', timeout: 30_000 });
    times.push(await page.evaluate(() => performance.now()));
    await ctx.close();
  }
  return times;
}

try {
  const keys = await measure('#/keys', () => document.querySelectorAll('[data-testid=key-row]').length === 1000);
  const overview = await measure('#/overview', () => {
    const v = document.querySelector('[data-testid=ov-rps] .card-value');
    return v && v.textContent !== '—' && document.querySelectorAll('[data-testid=ov-charts] svg').length === 3
      && document.querySelector('[data-testid=ov-spend] svg');
  });
  const fmt = (xs) => `median ${median(xs).toFixed(0)} ms, slowest ${Math.max(...xs).toFixed(0)} ms (${xs.length} runs)`;
  console.log(`Keys page, 1,000 keys:            ${fmt(keys)}`);
  console.log(`Overview, ${db}: ${fmt(overview)}`);
} finally {
  await browser.close();
  server?.kill();
}
