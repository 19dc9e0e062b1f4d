// Drives keypool's dashboard in Debian's chromium (headless) through
// playwright-core, for tests/dashboard.rs. Fails (exit 1) at the first
// expectation that does not hold.
//
// Key rows use content-visibility, so their text is read with textContent
// (innerText is empty for a row not yet laid out).
//
// Environment:
//   KP_URL          the gateway's base URL (http://127.0.0.1:PORT)
//   KP_ADMIN        the admin token
//   KP_KEYS         the three upstream keys to paste, comma-separated
//   KP_SEEDED       the two keys already in the store, comma-separated: one
//                   on the upstream `deepseek`, one on `retired` (not
//                   configured); pasted keys go to the default, `openai`
//   KP_CHROMIUM     the browser (default /usr/bin/chromium)
//   KP_SCREENSHOTS  where to save screenshots (default: none saved)

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const base = process.env.KP_URL;
const admin = process.env.KP_ADMIN;
const keys = (process.env.KP_KEYS || '').split(',').filter(Boolean);
const seeded = (process.env.KP_SEEDED || '').split(',').filter(Boolean);
const shots = process.env.KP_SCREENSHOTS;
assert.ok(base && admin && keys.length === 3 && seeded.length === 2, 'KP_URL, KP_ADMIN, three KP_KEYS and two KP_SEEDED are needed');
if (shots) mkdirSync(shots, { recursive: true });

const step = (s) => console.log(`- ${s}`);
const browser = await chromium.launch({
  executablePath: process.env.KP_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const problems = [];

try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, locale: 'en-GB', colorScheme: 'light' });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('status of 401')) problems.push(`console: ${m.text()}`); });
  const tid = (id) => page.getByTestId(id);

  /** Fails when any full key is in the page's text or markup. */
  async function noFullKey(where) {
    const text = await page.evaluate(() => document.documentElement.innerText + '\n' + document.documentElement.outerHTML);
    for (const k of [...keys, ...seeded]) assert.ok(!text.includes(k), `a full key is in the page (${where})`);
  }

  step('the sign-in page loads without the token; a wrong token is refused with a message');
  await page.goto(`${base}/admin`);
  await tid('token-input').fill('wrong-token-0123456789abcdef');
  await tid('signin-submit').click();
  await assert.doesNotReject(tid('signin-error').waitFor({ state: 'visible' }));
  assert.match(await tid('signin-error').innerText(), /not accepted/);
  assert.ok(await tid('nav-keys').isHidden(), 'the pages stay hidden after a wrong token');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('kp.token')), null);

  step('signs in with the admin token (kept in sessionStorage, not in the URL)');
  await tid('token-input').fill(admin);
  await tid('signin-submit').click();
  await tid('keys-table').waitFor();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=key-row]').length === 2);
  assert.ok(!page.url().includes(admin), 'the token is not in the URL');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('kp.token')), admin);
  assert.equal(await page.evaluate(() => localStorage.getItem('kp.token')), null);

  step('pastes three keys in bulk import and sees them listed, masked, with the two seeded ones');
  await tid('key-import').click();
  await tid('field-text').fill(`${keys[0]}\n${keys[1]}, ${keys[2]}\n# a comment\n`);
  await tid('field-label').fill('pasted');
  await tid('dialog-ok').click();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=key-row]').length === 5);
  assert.match(await tid('toast').innerText(), /3 added/);
  for (const masked of await tid('key-masked').allTextContents()) assert.match(masked, /…/);
  await noFullKey('keys page after import');

  step('creates a gateway token on the Tokens page; its secret is shown once');
  await tid('nav-tokens').click();
  await tid('token-create').click();
  await tid('field-name').fill('browser-test');
  await tid('field-models').fill('gpt-4o*, o3-mini');
  await tid('field-budget_usd').fill('5');
  await tid('field-budget_period').selectOption('monthly');
  await tid('field-expires').fill('30d');
  await tid('dialog-ok').click();
  await tid('token-secret').waitFor();
  const gatewayToken = (await tid('token-secret').innerText()).trim();
  assert.ok(gatewayToken.length > 20, 'a token secret is shown');
  await tid('dialog-ok').click();
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=token-row]')].some((r) => r.innerText.includes('browser-test')));
  assert.ok(!(await page.content()).includes(gatewayToken), 'the secret leaves the page once its dialog closes');
  const tokenRow = page.locator('[data-testid=token-row]', { hasText: 'browser-test' });
  assert.equal(await tokenRow.getByTestId('token-models').innerText(), 'gpt-4o*, o3-mini');
  assert.match(await tokenRow.getByTestId('token-budget').innerText(), /\$5\.0+ .*monthly/);

  step("edits the token's limits, disables it (the gateway refuses it) and enables it again");
  await tokenRow.getByTestId('token-edit').click();
  assert.equal(await tid('field-models').inputValue(), 'gpt-4o*, o3-mini', 'the dialog shows the settings in force');
  await tid('field-rpm').fill('600');
  await tid('dialog-ok').click();
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=token-row]')]
    .some((r) => r.innerText.includes('browser-test') && r.querySelector('[data-testid=token-limits]').innerText.includes('RPM 600')));
  await tokenRow.getByTestId('token-toggle').click();
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=token-row]')]
    .some((r) => r.innerText.includes('browser-test') && r.querySelector('[data-testid=token-status]').innerText === 'disabled'));
  const refused = await fetch(`${base}/v1/models`, { headers: { Authorization: `Bearer ${gatewayToken}` } });
  assert.equal(refused.status, 401, 'a disabled token is refused');
  await tokenRow.getByTestId('token-toggle').click();
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=token-row]')]
    .some((r) => r.innerText.includes('browser-test') && r.querySelector('[data-testid=token-status]').innerText === 'active'));

  step('traffic through the gateway shows in the counters and the countdown, without a reload');
  await tid('nav-keys').click();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=key-row]').length === 5);
  await page.evaluate(() => { window.__noReload = true; });
  const before = await tid('key-requests').allTextContents();
  assert.deepEqual(before, ['0 / 0 / 0', '0 / 0 / 0', '0 / 0 / 0', '0 / 0 / 0', '0 / 0 / 0']);
  for (let i = 0; i < 6; i++) {
    const r = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${gatewayToken}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `hello ${i}` }] }),
    });
    assert.equal(r.status, 200, `request ${i} through the gateway`);
    await r.arrayBuffer();
  }
  await page.waitForFunction(() => {
    const sum = [...document.querySelectorAll('[data-testid=key-requests]')].reduce((n, e) => n + Number(e.textContent.split(' / ')[0]), 0);
    return sum >= 6;
  }, null, { timeout: 8000 });
  await page.waitForFunction(() => document.querySelector('[data-testid=key-reset][data-deadline]'), null, { timeout: 8000 });
  const tick1 = await page.locator('[data-testid=key-reset][data-deadline]').first().textContent();
  await page.waitForTimeout(2100);
  const tick2 = await page.locator('[data-testid=key-reset][data-deadline]').first().textContent();
  assert.notEqual(tick1, tick2, `the countdown ticks (${tick1} then ${tick2})`);
  assert.equal(await page.evaluate(() => window.__noReload), true, 'the page was not reloaded');
  await noFullKey('keys page after traffic');
  await shoot('keys');

  step('disables a key and sees its status change');
  const first = page.locator('[data-testid=key-row][data-upstream=openai]').first();
  const firstId = await first.getAttribute('data-key-id');
  await first.getByTestId('key-disable').click();
  await tid('dialog-ok').click();
  await page.waitForFunction((id) => document.querySelector(`[data-testid=key-row][data-key-id="${id}"]`)?.dataset.status === 'disabled', firstId);
  assert.equal(await page.locator(`[data-key-id="${firstId}"] [data-testid=key-status]`).textContent(), 'disabled');

  step('filters the keys by status');
  await tid('keys-status-filter').selectOption('disabled');
  assert.equal(await page.locator('[data-testid=key-row]').count(), 1);
  await tid('keys-status-filter').selectOption('');
  assert.equal(await page.locator('[data-testid=key-row]').count(), 5);

  step("shows each key's upstream, warns of one not configured, and filters by upstream (remembered)");
  assert.equal(await page.locator('table.keys th[data-col=upstream]').innerText(), 'Upstream');
  assert.deepEqual(await tid('key-upstream').allTextContents(), ['deepseek', 'retired', 'openai', 'openai', 'openai']);
  const orphan = page.locator('[data-testid=key-upstream][data-configured=false]');
  assert.equal(await orphan.count(), 1);
  assert.match(await orphan.getAttribute('title'), /retired is not configured: this key serves nowhere until that upstream is configured again/);
  assert.equal(await orphan.evaluate((e) => getComputedStyle(e).color), 'rgb(161, 98, 7)', 'the warning colour');
  assert.equal(await page.locator('[data-testid=key-row][data-upstream=openai] [data-configured=false]').count(), 0);
  const filter = tid('keys-upstream-filter');
  assert.ok(await filter.isVisible(), 'the upstream filter shows with more than one upstream');
  assert.deepEqual(await filter.locator('option').evaluateAll((os) => os.map((o) => [o.value, o.textContent])),
    [['', 'All upstreams'], ['openai', 'openai'], ['deepseek', 'deepseek'], ['retired', 'retired (not configured)']]);
  const shown = () => page.locator('[data-testid=key-row]').evaluateAll((rs) => rs.map((r) => r.dataset.upstream));
  await filter.selectOption('deepseek');
  assert.deepEqual(await shown(), ['deepseek']);
  assert.equal(await tid('keys-count').innerText(), '1 / 5');
  await filter.selectOption('retired');
  assert.deepEqual(await shown(), ['retired']);
  await filter.selectOption('openai');
  assert.deepEqual(await shown(), ['openai', 'openai', 'openai']);
  assert.equal(await page.evaluate(() => localStorage.getItem('kp.keys.upstream')), 'openai');
  await tid('keys-status-filter').selectOption('disabled');
  assert.deepEqual(await shown(), ['openai'], 'the two filters combine');
  await tid('keys-status-filter').selectOption('');
  await tid('nav-tokens').click();
  await tid('tokens-table').waitFor();
  await tid('nav-keys').click();
  await page.waitForFunction(() => document.querySelector('[data-testid=keys-upstream-filter]')?.value === 'openai'
    && document.querySelectorAll('[data-testid=key-row]').length === 3);
  assert.deepEqual(await shown(), ['openai', 'openai', 'openai'], 'the choice is remembered');
  await filter.selectOption('');
  assert.equal(await page.locator('[data-testid=key-row]').count(), 5);
  assert.equal(await page.evaluate(() => localStorage.getItem('kp.keys.upstream')), null);

  step("moves a key to another upstream in its edit dialog, and back");
  const moved = page.locator('[data-testid=key-row][data-upstream=openai]').first();
  const movedId = await moved.getAttribute('data-key-id');
  await moved.getByTestId('key-edit').click();
  const choice = tid('field-upstream');
  assert.deepEqual(await choice.locator('option').evaluateAll((os) => os.map((o) => o.value)), ['openai', 'deepseek']);
  assert.equal(await choice.inputValue(), 'openai', 'the key\'s own upstream is chosen');
  await choice.selectOption('deepseek');
  await tid('dialog-ok').click();
  await page.waitForFunction((id) => document.querySelector(`[data-testid=key-row][data-key-id="${id}"]`)?.dataset.upstream === 'deepseek', movedId);
  await page.locator(`[data-testid=key-row][data-key-id="${movedId}"]`).getByTestId('key-edit').click();
  await tid('field-upstream').selectOption('openai');
  await tid('dialog-ok').click();
  await page.waitForFunction((id) => document.querySelector(`[data-testid=key-row][data-key-id="${id}"]`)?.dataset.upstream === 'openai', movedId);
  await tid('key-add').click();
  assert.equal(await tid('field-upstream').inputValue(), '', 'a new key keeps the default unless told');
  assert.match(await tid('field-upstream').locator('option').first().innerText(), /openai/);
  await tid('dialog-cancel').click();

  step('opens a request and sees its attempts');
  await tid('nav-requests').click();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=request-row]').length >= 6);
  await page.locator('[data-testid=request-row]').first().click();
  await tid('request-detail').waitFor();
  await page.locator('[data-testid=attempt-row]').first().waitFor().catch(() => {});
  assert.ok(await page.locator('[data-testid=attempt-row]').count() >= 1, 'the detail lists the attempts');
  assert.match(await page.locator('[data-testid=attempt-row]').first().innerText(), /ok/);
  await noFullKey('requests page');
  await shoot('requests');

  step('the overview shows the traffic');
  await tid('nav-overview').click();
  await tid('ov-charts').locator('svg').first().waitFor();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=ov-charts] path.line').length > 0);
  await noFullKey('overview');
  await shoot('overview');

  step('the tokens page renders');
  await tid('nav-tokens').click();
  await tid('token-row').first().waitFor();
  await shoot('tokens');

  step('the Upstreams page lists both upstreams in config order, with their keys by state, and tests each');
  await tid('nav-upstreams').click();
  await tid('upstream-card').first().waitFor();
  const card = (name) => page.locator(`[data-testid=upstream-card][data-upstream="${name}"]`);
  assert.deepEqual(await tid('upstream-name').allInnerTexts(), ['openai', 'deepseek']);
  assert.equal(await tid('upstreams-count').innerText(), '2');
  assert.equal(await card('openai').getByTestId('upstream-default').innerText(), 'default');
  assert.equal(await card('deepseek').getByTestId('upstream-default').count(), 0, 'only the first is the default');
  assert.equal(await card('openai').getByTestId('upstream-kind').innerText(), 'OpenAI');
  assert.equal(await card('deepseek').getByTestId('upstream-kind').innerText(), 'OpenAI-compatible · deepseek');
  assert.deepEqual(await card('openai').locator('[data-testid=upstream-models] code').allInnerTexts(), ['gpt-4o*', 'o3']);
  assert.equal(await card('deepseek').getByTestId('upstream-routing').innerText(), 'priority 0 · weight 2');
  assert.match(await card('openai').getByTestId('upstream-url').innerText(), /^http:\/\/127\.0\.0\.1:\d+/);
  assert.equal(await card('openai').getByTestId('upstream-proxy').innerText(), 'direct');
  for (const name of ['openai', 'deepseek']) assert.equal(await card(name).getByTestId('upstream-answering').innerText(), 'answering');
  // The imported keys (one disabled) are on the default; the orphan is on neither.
  const census = await card('openai').getByTestId('upstream-keys').innerText();
  assert.match(census, /^(\d+ (active|cooling|exhausted) · )*1 disabled$/, census);
  assert.equal(census.match(/\d+/g).reduce((n, d) => n + Number(d), 0), 3, census);
  assert.equal(await card('deepseek').getByTestId('upstream-keys').innerText(), '1 active');
  await page.waitForFunction(() => Number(document.querySelector('[data-upstream=openai] [data-testid=upstream-hour]')?.innerText.split(' ')[0]) >= 6,
    null, { timeout: 8000 });
  assert.match(await card('openai').getByTestId('upstream-hour').innerText(), / · 0 failed/);
  assert.match(await card('deepseek').getByTestId('upstream-hour').innerText(), /^0 requests · 0 failed/);
  for (const name of ['openai', 'deepseek']) {
    await card(name).getByTestId('upstream-test').click();
    await page.waitForFunction((n) => /^OK: 200 /.test(document.querySelector(`[data-upstream="${n}"] [data-testid=upstream-test-result]`)?.innerText || ''), name);
  }
  // The deepseek test used its own key (the seeded one, id 1).
  assert.match(await card('deepseek').getByTestId('upstream-test-result').innerText(), /with key 1$/);
  const polled = await tid('live-status').innerText();
  await page.waitForFunction((s) => document.getElementById('status').innerText !== s, polled, { timeout: 5000 });
  assert.match(await card('openai').getByTestId('upstream-test-result').innerText(), /^OK: 200 /, 'a result outlives the next poll');
  await noFullKey('upstreams page');
  await shoot('upstreams');

  step('switches to 中文 and back');
  await tid('nav-keys').click();
  await tid('keys-table').waitFor();
  await tid('lang').selectOption('zh');
  await page.waitForFunction(() => document.querySelector('[data-testid=nav-keys]').innerText === '密钥');
  assert.equal(await page.locator('#page h1').innerText(), '密钥');
  await page.waitForFunction((id) => document.querySelector(`[data-key-id="${id}"] [data-testid=key-status]`)?.textContent === '已停用', firstId);
  assert.equal(await page.locator('table.keys th[data-col=upstream]').innerText(), '上游');
  assert.equal(await tid('keys-upstream-filter').locator('option').first().textContent(), '全部上游');
  await shoot('keys-zh');
  await tid('nav-upstreams').click();
  await tid('upstream-card').first().waitFor();
  assert.equal(await page.locator('#page h1').innerText(), '上游');
  assert.equal(await card('openai').getByTestId('upstream-default').innerText(), '默认');
  assert.match(await card('deepseek').getByTestId('upstream-routing').innerText(), /^优先级 0 · 权重 2$/);
  assert.equal(await card('deepseek').getByTestId('upstream-keys').innerText(), '可用 1');
  await shoot('upstreams-zh');
  await tid('nav-keys').click();
  await tid('keys-table').waitFor();
  await tid('lang').selectOption('en');
  await page.waitForFunction(() => document.querySelector('[data-testid=nav-keys]').innerText === 'Keys');
  assert.equal(await page.evaluate(() => localStorage.getItem('kp.lang')), 'en');

  step('a read-only admin token sees the pool and no button that would change it');
  {
    const ctx = await browser.newContext({ viewport: { width: 1360, height: 900 }, locale: 'en-GB', colorScheme: 'light' });
    const v = await ctx.newPage();
    v.on('pageerror', (e) => problems.push(`viewer page error: ${e.message}`));
    await v.goto(`${base}/admin#/keys`);
    await v.getByTestId('token-input').fill(process.env.KP_VIEWER);
    await v.getByTestId('signin-submit').click();
    await v.getByTestId('keys-table').waitFor();
    await v.waitForFunction(() => document.body.classList.contains('read-only'));
    assert.equal(await v.getByTestId('role').innerText(), 'Read-only');
    // The table can show before its rows arrive: count once one is there
    // (or the wait times out and the assertion below says why).
    await v.locator('[data-testid=key-row], tbody tr').first().waitFor().catch(() => {});
    assert.ok(await v.locator('[data-testid=key-row], tbody tr').count() > 0, 'the keys are listed');
    for (const id of ['key-add', 'key-import', 'bulk-delete']) assert.equal(await v.getByTestId(id).isVisible(), false, `${id} hidden`);
    assert.equal(await v.locator('[data-testid=key-delete]:visible').count(), 0, 'no delete button');
    await v.goto(`${base}/admin#/tokens`);
    await v.waitForFunction(() => document.getElementById('page')?.dataset.route === 'tokens');
    assert.equal(await v.getByTestId('token-create').isVisible(), false, 'token-create hidden');
    await ctx.close();
  }

  step('the theme toggle switches to dark');
  await tid('theme').click(); // auto -> light
  await tid('theme').click(); // light -> dark
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(bg, 'rgb(15, 18, 22)', 'the dark background');
  await tid('theme').click(); // back to auto
  await noFullKey('end');

  // Every page in dark (prefers-color-scheme) and on a 390 px phone.
  if (shots) {
    for (const [suffix, opts] of [['dark', { colorScheme: 'dark', viewport: { width: 1360, height: 900 } }],
      ['phone', { colorScheme: 'light', viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true }]]) {
      const ctx = await browser.newContext({ ...opts, locale: 'en-GB' });
      const p = await ctx.newPage();
      await p.goto(`${base}/admin`);
      await p.getByTestId('token-input').fill(admin);
      await p.getByTestId('signin-submit').click();
      for (const name of ['keys', 'overview', 'requests', 'tokens', 'upstreams']) {
        await p.goto(`${base}/admin#/${name}`);
        await p.waitForFunction((n) => document.getElementById('page')?.dataset.route === n && document.getElementById('status').innerText.length > 0, name);
        await p.waitForTimeout(300);
        const width = await p.evaluate(() => document.documentElement.scrollWidth);
        if (suffix === 'phone') assert.ok(width <= 390, `${name} fits 390 px (scroll width ${width})`);
        await p.screenshot({ path: `${shots}/${name}-${suffix}.png`, fullPage: true });
      }
      await ctx.close();
    }
  }

  async function shoot(name) {
    if (shots) await page.screenshot({ path: `${shots}/${name}-light.png`, fullPage: true });
  }
} finally {
  await browser.close();
}
assert.deepEqual(problems, [], 'no script error or failed load in the page');
console.log('dashboard: all steps passed');
