// keypool's dashboard: hash-routed pages over the admin REST API. The admin
// token lives in this tab's sessionStorage only, and goes out as a Bearer
// header on same-origin fetches; nothing here ever holds a full upstream key
// (the API never gives one).

import { t, setLang, initialLang, translate, getLang, locale } from './i18n.js';
import { lineChart, barChart, compact } from './charts.js';

const POLL_MS = 2000;
const TOKEN_KEY = 'kp.token';

// ---------- small DOM helpers ----------

/** An element: `attrs` are attributes, except `text`, `class`, `on*` (listeners) and properties in `props`. */
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'disabled') e[k] = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const $ = (sel, root = document) => root.querySelector(sel);

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** `v` as text safe inside HTML and a quoted attribute. */
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ESCAPES[c]);

// ---------- formatting ----------

const fmtCache = new Map();
function formatter(opts) {
  let byOpts = fmtCache.get(opts);
  if (!byOpts) { byOpts = new Map(); fmtCache.set(opts, byOpts); }
  const k = getLang() + '|' + (app.tz || '');
  let f = byOpts.get(k);
  if (!f) {
    try {
      f = new Intl.DateTimeFormat(locale(), { ...opts, timeZone: app.tz || undefined, hourCycle: 'h23' });
    } catch {
      f = new Intl.DateTimeFormat(locale(), { ...opts, hourCycle: 'h23' });
    }
    byOpts.set(k, f);
  }
  return f;
}

/** A Unix time (ms; seconds when small enough to be seconds) in the configured zone. */
const DAY_MONTH = { month: '2-digit', day: '2-digit' };
const HOUR_MINUTE = { hour: '2-digit', minute: '2-digit' };
const TIME_SHORT = { hour: '2-digit', minute: '2-digit', second: '2-digit' };
const TIME_LONG = { month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' };
function fmtTime(at, short) {
  if (at === null || at === undefined) return t('never');
  const ms = at < 1e11 ? at * 1000 : at;
  return formatter(short ? TIME_SHORT : TIME_LONG).format(new Date(ms));
}

function fmtUsd(micros) {
  if (micros === null || micros === undefined) return t('none');
  const usd = micros / 1e6;
  return '$' + (usd !== 0 && Math.abs(usd) < 1 ? usd.toFixed(4) : usd.toFixed(2));
}

function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return t('none');
  if (ms >= 10000) return (ms / 1000).toFixed(1) + ' s';
  return (ms < 10 ? ms.toFixed(1) : Math.round(ms)) + ' ms';
}

const fmtUs = (us) => (us === null || us === undefined ? t('none') : fmtMs(us / 1000));

let numFormat = null;
function fmtNum(n) {
  if (n === null || n === undefined) return t('none');
  // Built once per language: an Intl constructor costs more than a row.
  if (!numFormat || numFormat.resolvedOptions().locale !== locale()) numFormat = new Intl.NumberFormat(locale());
  return numFormat.format(n);
}

/** A countdown's text: `1m 05s`, `42s`. */
function fmtLeft(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function call(method, path, body, token = app.token) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch('/admin/api' + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store', credentials: 'omit',
  });
  const text = resp.status === 204 ? '' : await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    throw new ApiError(resp.status, data?.error?.message || `${resp.status} ${resp.statusText}`, data?.error?.code);
  }
  return data;
}

/** An API call from a signed-in page: a 401 signs out with a message. */
async function api(method, path, body) {
  try {
    return await call(method, path, body);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signOut(t('signin.expired'));
    throw e;
  }
}

// ---------- app state, sign-in, routing, polling ----------

const app = {
  token: sessionStorage.getItem(TOKEN_KEY),
  tz: undefined,
  skew: 0, // server clock less ours, ms
  page: null,
  route: null,
  busy: false,
  meta: Promise.resolve(false), // the overview's first read (zone, clock)
};

/** Reads the overview once for the zone and the server's clock; false when the endpoint is absent. */
async function readMeta(token) {
  try {
    const ov = await call('GET', '/overview', undefined, token);
    noteOverview(ov);
    return true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      await call('GET', '/keys', undefined, token); // the token check of a server without /overview
      return false;
    }
    throw e;
  }
}

function noteOverview(ov) {
  if (!ov) return;
  if (ov.time_zone && ov.time_zone !== app.tz) { app.tz = ov.time_zone; fmtCache.clear(); }
  if (typeof ov.now === 'number') app.skew = ov.now - Date.now();
}

function showSignIn(message) {
  $('#signin').hidden = false;
  $('#page').hidden = true;
  $('#nav').hidden = true;
  $('#signout').hidden = true;
  const err = $('#signin-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('#token').value = '';
  $('#token').focus();
  setStatus('');
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  showRole(null);
  app.token = null;
  if (app.page?.unmount) app.page.unmount();
  app.page = null;
  $('#page').replaceChildren();
  showSignIn(message);
}

function signInFailed(e, wrong) {
  if (e instanceof ApiError && e.status === 401) return showSignIn(wrong);
  if (e instanceof ApiError && e.status === 429) return showSignIn(t('signin.limited'));
  if (e instanceof ApiError && e.status === 404) return showSignIn(t('signin.off'));
  return showSignIn(t('signin.unreachable', { why: e.message }));
}

/**
 * Signs in with `token`. A typed token is checked before any page shows; a
 * token from this tab's session is trusted while its check runs beside the
 * page's first load (a 401 from either signs out), so the first render
 * waits for one round trip, not two.
 */
async function signIn(token, stored) {
  app.meta = readMeta(token);
  if (stored) {
    app.meta.catch((e) => { signOut(); signInFailed(e, t('signin.expired')); });
  } else {
    try {
      await app.meta;
    } catch (e) {
      return signInFailed(e, t('signin.wrong'));
    }
  }
  app.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  readRole(token);
  $('#signin').hidden = true;
  $('#page').hidden = false;
  $('#nav').hidden = false;
  $('#signout').hidden = false;
  route();
}

/**
 * Asks what the token may do: a viewer's (read-only) token gets a badge and
 * no buttons that would change anything (the server refuses them anyway,
 * 403 `read_only_token`). A server without /session is taken as full access.
 */
async function readRole(token) {
  try {
    const session = await call('GET', '/session', undefined, token);
    if (app.token === token) showRole(session?.role);
  } catch {
    showRole(null);
  }
}

function showRole(role) {
  const viewer = role === 'viewer';
  document.body.classList.toggle('read-only', viewer);
  $('#role').hidden = !viewer;
}

const PAGES = { overview: overviewPage, keys: keysPage, requests: requestsPage, tokens: tokensPage, upstreams: upstreamsPage };

function route() {
  if (!app.token) return;
  const name = (location.hash.replace(/^#\/?/, '').split(/[/?]/)[0]) || 'keys';
  const make = PAGES[name] || keysPage;
  if (app.page?.unmount) app.page.unmount();
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('current', a.dataset.route === name);
  const root = $('#page');
  root.replaceChildren();
  root.dataset.route = name;
  app.route = name;
  app.page = make(root);
  document.title = `${t('nav.' + name)} · keypool`;
  refresh();
}

async function refresh() {
  const page = app.page;
  if (!page || app.busy) return;
  app.busy = true;
  try {
    await page.refresh();
    if (page === app.page) setStatus(t('live.ok', { time: fmtTime(Date.now() + app.skew, true) }));
  } catch (e) {
    if (page === app.page && app.token) setStatus(t('live.error', { why: e.message }), true);
  } finally {
    app.busy = false;
  }
}

function setStatus(text, bad) {
  const s = $('#status');
  s.textContent = text;
  s.classList.toggle('bad', !!bad);
}

setInterval(() => {
  if (document.visibilityState === 'visible' && !$('#dialog').open) refresh();
}, POLL_MS);

// Countdowns tick every second between polls.
setInterval(tickCountdowns, 1000);
function tickCountdowns() {
  const now = Date.now();
  for (const e of document.querySelectorAll('[data-deadline]')) {
    e.textContent = fmtLeft(Number(e.dataset.deadline) - now);
  }
}

// ---------- dialogs and toasts ----------

/**
 * A modal form. `fields`: [{name, label, type, value, placeholder, required, rows, options}]
 * (`options`: [[value, text], …] makes a select);
 * `submit(values)` may throw to keep the dialog open with the error shown.
 */
function dialog({ title, message, fields = [], ok, danger, submit, cancel = true }) {
  const d = $('#dialog');
  $('#dialog-title').textContent = title;
  const body = $('#dialog-body');
  body.replaceChildren();
  if (message) body.append(message instanceof Node ? message : h('p', { text: message }));
  for (const f of fields) {
    const id = 'field-' + f.name;
    const input = f.options
      ? h('select', { id, name: f.name, 'data-testid': id }, ...f.options.map(([value, text]) => h('option', { value, text })))
      : f.rows
      ? h('textarea', { id, name: f.name, rows: f.rows, 'data-testid': id, placeholder: f.placeholder, required: f.required, spellcheck: 'false' })
      : h('input', { id, name: f.name, type: f.type || 'text', 'data-testid': id, placeholder: f.placeholder, required: f.required, autocomplete: 'off', spellcheck: 'false', step: f.step });
    if (f.value !== undefined && f.value !== null) input.value = String(f.value);
    body.append(h('label', { for: id, text: f.label }), input);
  }
  const err = $('#dialog-error');
  err.hidden = true;
  const okBtn = $('#dialog-ok');
  okBtn.textContent = ok || t('ok');
  okBtn.classList.toggle('danger', !!danger);
  const cancelBtn = $('#dialog-cancel');
  cancelBtn.textContent = t('cancel');
  cancelBtn.hidden = !cancel;
  return new Promise((resolve) => {
    const form = $('#dialog-form');
    const done = (v) => {
      form.onsubmit = null;
      cancelBtn.onclick = null;
      d.onclose = null;
      if (d.open) d.close();
      body.replaceChildren(); // a token shown once leaves the page with its dialog
      resolve(v);
    };
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      const values = {};
      for (const f of fields) values[f.name] = $('#field-' + f.name).value;
      okBtn.disabled = true;
      try {
        const out = submit ? await submit(values) : true;
        done(out === undefined ? true : out);
      } catch (e) {
        err.textContent = e.message;
        err.hidden = false;
      } finally {
        okBtn.disabled = false;
      }
    };
    cancelBtn.onclick = () => done(null);
    // A close event queued by the previous dialog's close() arrives after
    // this one opened: only a close that left the dialog shut counts.
    d.onclose = () => { if (!d.open) done(null); };
    d.showModal();
    const first = body.querySelector('input, textarea, select');
    (first || okBtn).focus();
  });
}

const confirmAction = (message, ok) => dialog({ title: t('confirm.title'), message, ok, danger: true });

let toastTimer;
function toast(text, bad) {
  let el = $('#toast');
  if (!el) {
    el = h('div', { id: 'toast', class: 'toast', role: 'status', 'data-testid': 'toast', onclick: () => { el.hidden = true; } });
    document.body.append(el);
  }
  el.textContent = text;
  el.classList.toggle('bad', !!bad);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
}

/** Runs `work`, reporting a failure in a toast; refreshes after. */
async function act(work) {
  try {
    await work();
  } catch (e) {
    toast(e.message, true);
  }
  refresh();
}

// ---------- Keys ----------

const STATUSES = ['active', 'cooling', 'exhausted', 'invalid', 'disabled', 'expired', 'spent'];
const UPSTREAM_FILTER_KEY = 'kp.keys.upstream';
/** How often the Keys page rereads the upstreams' names for its filter, ms. */
const UPSTREAM_NAMES_MS = 30000;

function keyName(k) {
  return k.label ? `${k.label} (${k.key})` : `#${k.id} ${k.key}`;
}

/** When `k`'s window frees (local ms), or null. Reads the contract's names and the older `reset_in_secs`. */
function resetDeadline(k, fetchedAt) {
  const at = [k.reset_requests_at, k.reset_tokens_at, k.reset_requests_at_ms, k.reset_tokens_at_ms].filter((v) => typeof v === 'number');
  if (at.length) return Math.min(...at) - app.skew;
  if (typeof k.reset_in_secs === 'number') return fetchedAt + k.reset_in_secs * 1000;
  return null;
}

function keysPage(root) {
  const view = {
    keys: [], fetchedAt: 0, selected: new Set(), sort: { by: 'id', dir: 1 }, filter: '', status: '',
    // The upstream filter (remembered), and the configured upstreams' names (null until read, or on an older server).
    upstream: localStorage.getItem(UPSTREAM_FILTER_KEY) || '', upstreams: null, upstreamsAt: 0, upstreamOptions: '',
  };
  const columns = [
    ['label', 'keys.col.label', (k) => (k.label || '').toLowerCase()],
    ['key', 'keys.col.key', null],
    ['upstream', 'keys.col.upstream', (k) => k.upstream ?? ''],
    ['status', 'keys.col.status', (k) => k.status],
    ['remaining', 'keys.col.remaining', (k) => k.remaining_requests ?? Infinity],
    ['reset', 'keys.col.reset', null],
    ['inflight', 'keys.col.inflight', (k) => k.in_flight ?? k.inflight ?? 0],
    ['requests', 'keys.col.counts', (k) => k.requests],
    ['spend', 'keys.col.spend', (k) => k.spent_micros ?? k.cost_micros ?? 0],
    ['last_error', 'keys.col.last_error', (k) => k.last_error || ''],
    ['last_used', 'keys.col.last_used', (k) => k.last_used_at ?? 0],
  ];
  const selectAll = h('input', { type: 'checkbox', 'data-testid': 'keys-select-all', 'aria-label': 'select all', onchange: (e) => {
    for (const k of visible()) e.target.checked ? view.selected.add(k.id) : view.selected.delete(k.id);
    render();
  } });
  const headRow = h('tr', {}, h('th', { class: 'sel' }, selectAll));
  for (const [id, label, sortKey] of columns) {
    const th = h('th', { 'data-col': id, text: t(label) });
    if (sortKey) {
      th.classList.add('sortable');
      th.setAttribute('data-testid', 'sort-' + id);
      th.addEventListener('click', () => {
        view.sort = view.sort.by === id ? { by: id, dir: -view.sort.dir } : { by: id, dir: 1 };
        render();
      });
    }
    headRow.append(th);
  }
  headRow.append(h('th', { text: t('keys.col.actions') }));
  const tbody = h('tbody', { 'data-testid': 'keys-body' });
  const empty = h('p', { class: 'muted empty', 'data-testid': 'keys-empty', hidden: true });
  const bulk = h('div', { class: 'bulk', hidden: true, 'data-testid': 'keys-bulk' },
    h('span', { class: 'count' }),
    h('button', { type: 'button', 'data-testid': 'bulk-enable', text: t('keys.enable_selected'), onclick: () => bulkAct('enable') }),
    h('button', { type: 'button', 'data-testid': 'bulk-disable', text: t('keys.disable_selected'), onclick: () => bulkAct('disable') }),
    h('button', { type: 'button', class: 'danger', 'data-testid': 'bulk-delete', text: t('keys.delete_selected'), onclick: () => bulkAct('delete') }),
  );
  const statusSelect = h('select', { 'data-testid': 'keys-status-filter', 'aria-label': t('keys.status_filter'), onchange: (e) => { view.status = e.target.value; render(); } },
    h('option', { value: '', text: `${t('keys.status_filter')}: ${t('all')}` }),
    STATUSES.map((s) => h('option', { value: s, text: t('status.' + s) })));
  const upstreamSelect = h('select', { 'data-testid': 'keys-upstream-filter', 'aria-label': t('keys.upstream_filter'), hidden: true, onchange: (e) => {
    view.upstream = e.target.value;
    if (view.upstream) localStorage.setItem(UPSTREAM_FILTER_KEY, view.upstream); else localStorage.removeItem(UPSTREAM_FILTER_KEY);
    render();
  } });
  root.append(
    h('div', { class: 'head' },
      h('h1', { text: t('keys.title') }),
      h('span', { class: 'muted', 'data-testid': 'keys-count' }),
      h('div', { class: 'spacer' }),
      h('button', { type: 'button', class: 'primary', 'data-testid': 'key-add', text: t('keys.add'), onclick: addKey }),
      h('button', { type: 'button', 'data-testid': 'key-import', text: t('keys.import'), onclick: importKeys })),
    h('div', { class: 'toolbar' },
      h('input', { type: 'search', 'data-testid': 'keys-filter', placeholder: t('keys.filter'), 'aria-label': t('keys.filter'),
        oninput: (e) => { view.filter = e.target.value.trim().toLowerCase(); render(); } }),
      upstreamSelect, statusSelect, bulk),
    h('div', { class: 'table-wrap' }, h('table', { class: 'keys', 'data-testid': 'keys-table' }, h('thead', {}, headRow), tbody)),
    empty,
  );

  function visible() {
    const f = view.filter;
    let list = view.keys.filter((k) => (!view.status || k.status === view.status)
      && (!view.upstream || k.upstream === view.upstream)
      && (!f || (k.label || '').toLowerCase().includes(f) || k.key.toLowerCase().includes(f) || String(k.id) === f));
    const col = columns.find((c) => c[0] === view.sort.by);
    const get = col?.[2] || ((k) => k.id);
    list = list.slice().sort((a, b) => {
      const x = get(a), y = get(b);
      return (x < y ? -1 : x > y ? 1 : a.id - b.id) * view.sort.dir;
    });
    return list;
  }

  // Rows are built as escaped HTML and parsed in one go (a thousand rows
  // through the DOM API took most of the first render); their buttons are
  // handled by one listener on the table body.
  const labels = Object.fromEntries(columns.map(([col, label]) => [col, esc(t(label))]));
  const td = (col, inner) => `<td data-label="${labels[col]}" data-col="${col}"><div>${inner}</div></td>`;
  const button = (action, text, cls = '') => `<button type="button" class="small ${cls}" data-testid="key-${action}" data-action="${action}">${esc(text)}</button>`;

  function row(k) {
    const id = k.id;
    const inflight = k.in_flight ?? k.inflight ?? 0;
    const spent = k.spent_micros ?? k.cost_micros ?? 0;
    const budget = k.budget_micros ?? k.budget ?? null;
    const rpm = k.effective_rpm ?? k.rpm ?? null;
    const tpm = k.effective_tpm ?? k.tpm ?? null;
    const now = Date.now();
    const deadline = resetDeadline(k, view.fetchedAt);
    const coolingUntil = k.cooling_until_ms ?? k.cooling_until ?? null;
    let remaining = '';
    if (k.remaining_requests !== null && k.remaining_requests !== undefined) {
      remaining += `<div>${fmtNum(k.remaining_requests)}${rpm ? ' / ' + fmtNum(rpm) : ''} ${esc(t('keys.req'))}</div>`;
    }
    if (k.remaining_tokens !== null && k.remaining_tokens !== undefined) {
      remaining += `<div>${compact(k.remaining_tokens)}${tpm ? ' / ' + compact(tpm) : ''} ${esc(t('keys.tok'))}</div>`;
    }
    const selected = view.selected.has(id);
    const enabled = k.enabled && k.status !== 'disabled';
    const cooling = coolingUntil && k.status === 'cooling'
      ? ` <span class="muted small"><span data-deadline="${coolingUntil - app.skew}">${fmtLeft(coolingUntil - app.skew - now)}</span></span>` : '';
    const status = `<span class="badge status-${esc(k.status)}" data-testid="key-status">${esc(t('status.' + k.status))}</span>${cooling}`
      + (k.reason ? `<div class="muted small reason" data-testid="key-reason">${esc(k.reason)}</div>` : '');
    const spend = `<div data-testid="key-spend">${fmtUsd(spent)}${budget !== null ? ' / ' + fmtUsd(budget) : ''}</div>`
      + (budget !== null ? `<progress max="${Math.max(budget, 1)}" value="${Math.min(spent, budget)}"${spent >= budget ? ' class="over"' : ''}></progress>` : '');
    // A key whose upstream is not configured any more serves nowhere: said on the cell, not only in a tooltip (phones have none).
    const upstream = k.upstream === undefined || k.upstream === null
      ? `<span data-testid="key-upstream" class="muted">${esc(t('none'))}</span>`
      : k.upstream_configured === false
        ? `<span data-testid="key-upstream" data-configured="false" class="upstream-missing" title="${esc(t('keys.upstream_missing', { name: k.upstream }))}">${esc(k.upstream)}</span>`
          + `<div class="small warn-text">${esc(t('keys.upstream_nowhere'))}</div>`
        : `<span data-testid="key-upstream">${esc(k.upstream)}</span>`;
    return `<tr data-testid="key-row" data-key-id="${id}" data-status="${esc(k.status)}" data-upstream="${esc(k.upstream ?? '')}"${selected ? ' class="selected"' : ''}>`
      + `<td class="sel"><input type="checkbox" data-testid="key-select" aria-label="${esc(keyName(k))}"${selected ? ' checked' : ''}></td>`
      + td('label', `<span data-testid="key-label">${esc(k.label || `#${id}`)}</span>`)
      + td('key', `<code data-testid="key-masked">${esc(k.key)}</code>`)
      + td('upstream', upstream)
      + td('status', status)
      + td('remaining', `<div data-testid="key-remaining">${remaining || esc(t('unlimited'))}</div>`)
      + td('reset', deadline === null ? `<span data-testid="key-reset" class="muted">${esc(t('none'))}</span>`
        : `<span data-testid="key-reset" data-deadline="${deadline}">${fmtLeft(deadline - now)}</span>`)
      + td('inflight', `<span data-testid="key-inflight">${fmtNum(inflight)}</span>`)
      + td('requests', `<span data-testid="key-requests">${fmtNum(k.requests)} / ${fmtNum(k.successes)} / ${fmtNum(k.failures)}</span>`)
      + td('spend', spend)
      + td('last_error', k.last_error
        ? `<span class="err-text" title="${k.last_error_at_ms ? esc(fmtTime(k.last_error_at_ms)) : ''}">${esc(k.last_error)}</span>`
        : `<span class="muted">${esc(t('none'))}</span>`)
      + td('last_used', `<span class="nowrap">${esc(fmtTime(k.last_used_at_ms ?? k.last_used_at))}</span>`)
      + '<td class="actions">' + button('edit', t('keys.edit'))
      + (enabled ? button('disable', t('keys.disable')) : button('enable', t('keys.enable')))
      + (['cooling', 'exhausted', 'invalid'].includes(k.status) ? button('reset-state', t('keys.reset')) : '')
      + button('delete', t('keys.delete'), 'danger') + '</td></tr>';
  }

  tbody.addEventListener('change', (e) => {
    const box = e.target.closest('[data-testid=key-select]');
    const id = Number(box?.closest('tr')?.dataset.keyId);
    if (!box || !id) return;
    if (box.checked) view.selected.add(id); else view.selected.delete(id);
    render();
  });
  tbody.addEventListener('click', async (e) => {
    const b = e.target.closest('button[data-action]');
    const k = b && view.keys.find((x) => x.id === Number(b.closest('tr').dataset.keyId));
    if (!k) return;
    switch (b.dataset.action) {
      case 'edit': return editKey(k);
      case 'disable': return bulkAct('disable', [k]);
      case 'enable': return act(() => api('POST', `/keys/${k.id}/enable`));
      case 'delete': return bulkAct('delete', [k]);
      case 'reset-state':
        if (await confirmAction(t('keys.confirm_reset', { name: keyName(k) }), t('keys.reset'))) act(() => api('POST', `/keys/${k.id}/reset`));
    }
  });

  /**
   * The upstream filter's choices: "All upstreams", the configured ones in
   * the config's order, then any that keys name but that is not configured
   * any more. Hidden while there is nothing to choose between. A remembered
   * choice that names no upstream any more falls back to all.
   */
  function renderUpstreamOptions() {
    const configured = view.upstreams
      || [...new Set(view.keys.filter((k) => k.upstream && k.upstream_configured !== false).map((k) => k.upstream))];
    const known = new Set(configured);
    const gone = [...new Set(view.keys.filter((k) => k.upstream && !known.has(k.upstream)).map((k) => k.upstream))].sort();
    if (view.upstream && view.upstreams && view.fetchedAt && !known.has(view.upstream) && !gone.includes(view.upstream)) {
      view.upstream = '';
      localStorage.removeItem(UPSTREAM_FILTER_KEY);
    }
    const signature = JSON.stringify([configured, gone, view.upstream]);
    if (signature === view.upstreamOptions) return;
    view.upstreamOptions = signature;
    const choices = [...configured.map((n) => [n, n]), ...gone.map((n) => [n, t('keys.upstream_gone', { name: n })])];
    // A remembered choice shows before the names arrive.
    if (view.upstream && !choices.some(([n]) => n === view.upstream)) choices.push([view.upstream, view.upstream]);
    upstreamSelect.replaceChildren(h('option', { value: '', text: t('keys.all_upstreams') }),
      ...choices.map(([value, text]) => h('option', { value, text })));
    upstreamSelect.value = view.upstream;
    upstreamSelect.hidden = choices.length < 2 && !view.upstream;
  }

  function render() {
    renderUpstreamOptions();
    const list = visible();
    const known = new Set(view.keys.map((k) => k.id));
    for (const id of [...view.selected]) if (!known.has(id)) view.selected.delete(id);
    tbody.innerHTML = list.map(row).join('');
    $('[data-testid=keys-count]', root).textContent = `${list.length} / ${view.keys.length}`;
    empty.hidden = list.length > 0;
    empty.textContent = view.keys.length ? t('keys.none_match') : t('keys.empty');
    bulk.hidden = view.selected.size === 0;
    $('.count', bulk).textContent = t('keys.selected', { n: view.selected.size });
    selectAll.checked = list.length > 0 && list.every((k) => view.selected.has(k.id));
    for (const th of headRow.querySelectorAll('th[data-col]')) {
      th.classList.toggle('asc', view.sort.by === th.dataset.col && view.sort.dir > 0);
      th.classList.toggle('desc', view.sort.by === th.dataset.col && view.sort.dir < 0);
    }
  }

  async function bulkAct(what, keys) {
    const chosen = keys || view.keys.filter((k) => view.selected.has(k.id));
    if (!chosen.length) return;
    if (what !== 'enable') {
      const msg = t(what === 'delete' ? 'keys.confirm_delete' : 'keys.confirm_disable', { n: chosen.length })
        + (chosen.length <= 5 ? ' ' + chosen.map(keyName).join(', ') : '');
      if (!(await confirmAction(msg, t(what === 'delete' ? 'keys.delete' : 'keys.disable')))) return;
    }
    await act(async () => {
      for (const k of chosen) {
        if (what === 'delete') await api('DELETE', `/keys/${k.id}`);
        else await api('POST', `/keys/${k.id}/${what}`);
        if (what === 'delete') view.selected.delete(k.id);
      }
    });
  }

  const limitFields = (k) => [
    { name: 'label', label: t('keys.field.label'), value: k?.label ?? '' },
    { name: 'rpm', label: t('keys.field.rpm'), type: 'number', value: k?.rpm ?? '', placeholder: t('keys.field.blank') },
    { name: 'tpm', label: t('keys.field.tpm'), type: 'number', value: k?.tpm ?? '', placeholder: t('keys.field.blank') },
  ];
  /**
   * The upstream a key belongs to, when there is a choice: the configured
   * upstreams (and a gone one the key still names). A new key may keep the
   * default (sent as nothing).
   */
  const upstreamField = (k) => {
    const names = view.upstreams || [];
    if (names.length < 2 && !(k && k.upstream && !names.includes(k.upstream))) return [];
    const options = names.map((n) => [n, n]);
    if (k && k.upstream && !names.includes(k.upstream)) options.push([k.upstream, k.upstream]);
    if (!k) options.unshift(['', t('keys.field.upstream_default', { name: names[0] ?? '' })]);
    return [{ name: 'upstream', label: t('keys.field.upstream'), options, value: k ? k.upstream : '' }];
  };
  const numberOrNull = (v, name) => {
    if (v.trim() === '') return null;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`${name}: ${v}`);
    return n;
  };

  /** The settings that changed from `k` (all given ones for a new key). */
  function settings(values, k) {
    const out = {};
    for (const [name, raw] of Object.entries(values)) {
      if (name === 'key' || name === 'text') continue;
      const was = k ? (name === 'budget_usd' ? (k.budget_micros ?? null) === null ? '' : String(k.budget_micros / 1e6)
        : name === 'expires' ? (k.expires_at ? new Date(k.expires_at * 1000).toISOString().slice(0, 10) : '') : String(k[name] ?? '')) : '';
      if (raw.trim() === was) continue;
      out[name] = name === 'label' || name === 'expires' || name === 'upstream' ? (raw.trim() || null) : numberOrNull(raw, name);
    }
    return out;
  }

  async function addKey() {
    const ok = await dialog({
      title: t('keys.add_title'), ok: t('keys.add'),
      fields: [{ name: 'key', label: t('keys.field.key'), type: 'password', required: true }, ...upstreamField(), ...limitFields()],
      submit: (v) => api('POST', '/keys', { key: v.key.trim(), ...settings(v) }),
    });
    if (ok) { toast(t('keys.added')); refresh(); }
  }

  async function importKeys() {
    const res = await dialog({
      title: t('keys.import_title'), ok: t('keys.import'),
      fields: [{ name: 'text', label: t('keys.field.text'), rows: 8, required: true }, ...upstreamField(), ...limitFields()],
      submit: (v) => api('POST', '/keys/import', { text: v.text, ...settings(v) }),
    });
    if (res) {
      const bad = res.invalid.map((p) => `${p.line}: ${p.piece} (${p.reason})`).join('; ');
      toast(t('keys.imported', { added: res.added.length, dup: res.duplicates.length, invalid: res.invalid.length }) + (bad ? ' ' + bad : ''), res.invalid.length > 0);
      refresh();
    }
  }

  async function editKey(k) {
    const ok = await dialog({
      title: t('keys.edit_title', { name: keyName(k) }), ok: t('save'),
      fields: [...upstreamField(k), ...limitFields(k),
        { name: 'rpd', label: t('keys.field.rpd'), type: 'number', value: k.rpd ?? '', placeholder: t('keys.field.blank') },
        { name: 'max_inflight', label: t('keys.field.max_inflight'), type: 'number', value: k.max_inflight ?? '', placeholder: t('keys.field.blank') },
        { name: 'weight', label: t('keys.field.weight'), type: 'number', value: k.weight ?? '', placeholder: t('keys.field.blank') },
        { name: 'budget_usd', label: t('keys.field.budget_usd'), type: 'number', step: 'any', value: k.budget_micros != null ? k.budget_micros / 1e6 : '', placeholder: t('keys.field.blank') },
        { name: 'expires', label: t('keys.field.expires'), value: k.expires_at ? new Date(k.expires_at * 1000).toISOString().slice(0, 10) : '', placeholder: 'YYYY-MM-DD' }],
      submit: async (v) => {
        const change = settings(v, k);
        if (Object.keys(change).length) await api('PATCH', `/keys/${k.id}`, change);
      },
    });
    if (ok) refresh();
  }

  return {
    async refresh() {
      const now = Date.now();
      const names = now - view.upstreamsAt >= UPSTREAM_NAMES_MS;
      const [keys, upstreams] = await Promise.all([api('GET', '/keys'), names ? api('GET', '/upstreams').catch(() => null) : null]);
      if (names) {
        view.upstreamsAt = now;
        if (upstreams?.data) view.upstreams = upstreams.data.map((u) => u.name);
      }
      await app.meta.catch(() => {});
      view.keys = Array.isArray(keys) ? keys : keys?.data || [];
      view.fetchedAt = Date.now();
      render();
    },
  };
}

// ---------- Overview ----------

const ERROR_KINDS = ['caller', 'rate_limited', 'key', 'timeout', 'upstream', 'gateway', 'cancelled'];
const RANGES = { hour: { span: 'minute', secs: 3600, step: 60 }, day: { span: 'hour', secs: 86400, step: 3600 }, week: { span: 'hour', secs: 7 * 86400, step: 3600 } };

function overviewPage(root) {
  let range = localStorage.getItem('kp.range') || 'hour';
  if (!RANGES[range]) range = 'hour';
  const card = (id, label) => h('div', { class: 'card', 'data-testid': 'ov-' + id },
    h('div', { class: 'card-label', text: t(label) }), h('div', { class: 'card-value', text: t('none') }), h('div', { class: 'card-sub muted' }));
  const cards = h('div', { class: 'cards' },
    card('rps', 'ov.rps'), card('latency', 'ov.latency'), card('ttfb', 'ov.ttfb'), card('tpm', 'ov.tpm'),
    card('queue', 'ov.queue'), card('inflight', 'ov.inflight'), card('keys', 'ov.keys'));
  const capacity = h('div', { class: 'panel', 'data-testid': 'ov-capacity' });
  const errors = h('div', { class: 'panel', 'data-testid': 'ov-errors' });
  const charts = h('div', { class: 'charts', 'data-testid': 'ov-charts' });
  const spend = h('div', { class: 'panel', 'data-testid': 'ov-spend' });
  const note = h('p', { class: 'muted', 'data-testid': 'ov-recent' });
  const rangeButtons = h('div', { class: 'segmented', role: 'group' }, Object.keys(RANGES).map((r) =>
    h('button', { type: 'button', 'data-range': r, 'data-testid': 'range-' + r, text: t('ov.range.' + r), class: r === range ? 'on' : '',
      onclick: () => { range = r; localStorage.setItem('kp.range', r); for (const b of rangeButtons.children) b.classList.toggle('on', b.dataset.range === r); refresh(); } })));
  root.append(h('div', { class: 'head' }, h('h1', { text: t('ov.title') })), cards, note,
    h('div', { class: 'two' }, capacity, errors),
    h('div', { class: 'head' }, h('h2', { text: t('ov.range.' + range) }), h('div', { class: 'spacer' }), rangeButtons), charts, spend);

  const setCard = (id, value, sub) => {
    const c = $(`[data-testid=ov-${id}]`, cards);
    $('.card-value', c).textContent = value;
    $('.card-sub', c).textContent = sub || '';
  };

  function renderOverview(ov) {
    const r = ov.recent || {};
    const min = Math.round((r.seconds || 360) / 60);
    setCard('rps', r.requests_per_second === undefined ? t('none') : compact(r.requests_per_second));
    setCard('latency', `${fmtMs(r.latency_p50_ms)} / ${fmtMs(r.latency_p99_ms)}`);
    setCard('ttfb', fmtMs(r.ttfb_avg_ms));
    setCard('tpm', compact(r.tokens_per_minute ?? null));
    setCard('queue', `${fmtNum(ov.queue_depth)} / ${fmtMs(r.queue_wait_avg_ms)}`);
    setCard('inflight', fmtNum(ov.in_flight));
    const states = Object.entries(ov.keys?.states || {}).filter(([, n]) => n > 0).map(([s, n]) => `${t('status.' + s)} ${n}`).join(' · ');
    setCard('keys', `${fmtNum(ov.keys?.usable)} / ${fmtNum(ov.keys?.total)}`, states);
    note.textContent = t('ov.recent', { min, n: fmtNum(r.requests ?? 0), ok: fmtNum(r.successes ?? 0), failed: fmtNum(r.failures ?? 0) });

    capacity.replaceChildren(h('h2', { text: t('ov.capacity') }));
    const cap = ov.capacity;
    if (!cap) capacity.append(h('p', { class: 'muted', text: t('ov.cap.unknown') }));
    else {
      for (const [label, limit, left] of [['ov.cap.requests', cap.requests_limit, cap.requests_remaining], ['ov.cap.tokens', cap.tokens_limit, cap.tokens_remaining]]) {
        if (!limit) continue;
        const used = Math.max(0, limit - left);
        capacity.append(h('div', { class: 'meter-row' },
          h('span', { text: t(label) }),
          h('progress', { max: limit, value: used, 'data-testid': 'capacity-' + (label.endsWith('requests') ? 'requests' : 'tokens') }),
          h('span', { class: 'nowrap', text: `${compact(used)} / ${compact(limit)} (${Math.round((100 * used) / limit)}%)` })));
      }
    }

    errors.replaceChildren(h('h2', { text: t('ov.errors', { min }) }));
    const errs = r.errors || {};
    const most = Math.max(1, ...ERROR_KINDS.map((k) => errs[k] || 0));
    for (const kind of ERROR_KINDS) {
      errors.append(h('div', { class: 'meter-row', 'data-testid': 'error-' + kind },
        h('span', { text: t('err.' + kind) }), h('progress', { max: most, value: errs[kind] || 0, class: 'bad' }),
        h('span', { class: 'num', text: fmtNum(errs[kind] || 0) })));
    }

    const days = ov.spend_per_day || [];
    spend.replaceChildren(h('h2', { text: t('ov.spend') }),
      barChart({ title: t('ov.spend'), format: (v) => '$' + parseFloat((v / 1e6).toPrecision(3)), items: days.map((d) => ({ label: d.day.slice(5), value: d.cost_micros, title: `${d.day}: ${fmtUsd(d.cost_micros)}` })) }));
  }

  function renderSeries(series) {
    const { secs, step } = RANGES[range];
    const to = series.to ?? Math.floor((Date.now() + app.skew) / 1000);
    const start = Math.floor((to - secs) / step) * step;
    const n = Math.ceil((to - start) / step);
    const xs = Array.from({ length: n }, (_, i) => start + i * step);
    const zero = () => new Array(n).fill(0);
    const empty = () => new Array(n).fill(null);
    const req = zero(), fail = zero(), tok = zero(), p50 = empty(), p99 = empty();
    for (const b of series.data || []) {
      const i = Math.floor((b.bucket - start) / step);
      if (i < 0 || i >= n) continue;
      const f = b.figures || b;
      req[i] += f.requests; fail[i] += f.failures; tok[i] += f.prompt_tokens + f.completion_tokens;
      if (f.requests) { p50[i] = f.p50_ms; p99[i] = f.p99_ms; }
    }
    const label = (x) => (range === 'week'
      ? formatter(DAY_MONTH) : formatter(HOUR_MINUTE)).format(new Date(x * 1000));
    const empt = t('ov.chart.empty');
    const box = (title, legend, svg) => h('div', { class: 'panel chart-box' }, h('h3', {}, title, ' ', legend), svg);
    const key = (cls, text) => h('span', { class: 'legend ' + cls, text });
    charts.replaceChildren(
      box(t('ov.chart.requests'), [key('s1', t('ov.chart.requests')), key('s2', t('ov.chart.failures'))],
        lineChart({ xs, label, title: t('ov.chart.requests'), empty: empt, lines: [{ cls: 's1', values: req }, { cls: 's2', values: fail }] })),
      box(t('ov.chart.latency'), [key('s1', t('ov.chart.p50')), key('s3', t('ov.chart.p99'))],
        lineChart({ xs, label, title: t('ov.chart.latency'), empty: empt, lines: [{ cls: 's1', values: p50 }, { cls: 's3', values: p99 }] })),
      box(t('ov.chart.tokens'), [],
        lineChart({ xs, label, title: t('ov.chart.tokens'), empty: empt, lines: [{ cls: 's4', values: tok }] })));
    $('.head h2', root).textContent = t('ov.range.' + range);
  }

  return {
    async refresh() {
      const { span, secs } = RANGES[range];
      const now = Math.floor((Date.now() + app.skew) / 1000);
      const [ov, series] = await Promise.all([
        api('GET', '/overview').catch((e) => { if (e.status === 404) return null; throw e; }),
        api('GET', `/stats/series?span=${span}&from=${now - secs}`),
      ]);
      if (ov) { noteOverview(ov); renderOverview(ov); } else note.textContent = t('ov.unavailable');
      renderSeries(series);
    },
  };
}

// ---------- Requests ----------

function requestsPage(root) {
  const FILTERS = [['status', 'rq.filter.status', 'number'], ['model', 'rq.filter.model'], ['key_id', 'rq.filter.key', 'number'],
    ['token_id', 'rq.filter.token', 'number'], ['error_type', 'rq.filter.error'], ['request_id', 'rq.filter.request_id']];
  const view = { filters: {}, cursors: [], cursor: null, next: null, keyLabels: new Map(), openId: null };
  const form = h('form', { class: 'filters', 'data-testid': 'requests-filters', onsubmit: (e) => {
    e.preventDefault();
    view.filters = {};
    for (const [name] of FILTERS) { const v = form.elements[name].value.trim(); if (v) view.filters[name] = v; }
    view.cursors = []; view.cursor = null; refresh();
  } });
  for (const [name, label, type] of FILTERS) {
    form.append(h('label', {}, h('span', { text: t(label) }), h('input', { name, type: type || 'text', 'data-testid': 'filter-' + name, autocomplete: 'off' })));
  }
  form.append(h('div', { class: 'filter-buttons' },
    h('button', { type: 'submit', class: 'primary', 'data-testid': 'requests-apply', text: t('rq.apply') }),
    h('button', { type: 'button', 'data-testid': 'requests-clear', text: t('rq.clear'), onclick: () => { form.reset(); form.requestSubmit(); } })));
  const tbody = h('tbody', { 'data-testid': 'requests-body' });
  const empty = h('p', { class: 'muted', hidden: true, text: t('rq.empty') });
  const newer = h('button', { type: 'button', 'data-testid': 'requests-newest', text: t('rq.newer'), onclick: () => { view.cursors = []; view.cursor = null; refresh(); } });
  const older = h('button', { type: 'button', 'data-testid': 'requests-older', text: t('rq.older'), onclick: () => {
    if (!view.next) return; view.cursors.push(view.cursor); view.cursor = view.next; refresh();
  } });
  const detail = h('section', { class: 'panel detail', 'data-testid': 'request-detail', hidden: true });
  const cols = ['time', 'model', 'status', 'key', 'token', 'attempts', 'duration', 'tokens', 'cost', 'error'];
  root.append(h('div', { class: 'head' }, h('h1', { text: t('rq.title') })), form, detail,
    h('div', { class: 'table-wrap' }, h('table', { class: 'requests', 'data-testid': 'requests-table' },
      h('thead', {}, h('tr', {}, cols.map((c) => h('th', { text: t('rq.col.' + c) })))), tbody)),
    empty, h('div', { class: 'pager' }, newer, older));

  const keyText = (id) => (id === null || id === undefined ? t('none') : view.keyLabels.get(id) ? `#${id} ${view.keyLabels.get(id)}` : `#${id}`);

  async function open(id) {
    view.openId = id;
    const r = await api('GET', `/requests/${id}`);
    const dl = h('dl', { class: 'fields' });
    const put = (label, value) => dl.append(h('dt', { text: t(label) }), h('dd', {}, value));
    put('rq.field.request_id', h('code', { text: r.request_id }));
    put('rq.field.started', fmtTime(r.started_at_ms));
    put('rq.field.path', `${r.method} ${r.path}`);
    put('rq.col.model', r.model ?? t('none'));
    put('rq.col.status', `${r.status}${r.error_type ? ' · ' + r.error_type : ''}${r.cancelled ? ' · ' + t('rq.cancelled') : ''}`);
    put('rq.field.stream', r.stream ? t('yes') : t('no'));
    put('rq.field.queue_wait', fmtUs(r.queue_wait_us));
    put('rq.field.ttfb', fmtUs(r.ttfb_us));
    put('rq.col.duration', fmtUs(r.duration_us));
    put('rq.field.usage', `${fmtNum(r.prompt_tokens)} / ${fmtNum(r.completion_tokens)}${r.usage_estimated ? ' ' + t('rq.field.estimated') : ''}`);
    put('rq.col.cost', fmtUsd(r.cost_micros));
    put('rq.col.token', r.token_id === null || r.token_id === undefined ? t('none') : `#${r.token_id}`);
    put('rq.field.client', [r.client_addr, r.user_agent].filter(Boolean).join(' · ') || t('none'));
    if (r.end_user) put('rq.field.user', r.end_user);
    if (r.upstream_request_id) put('rq.field.upstream_id', h('code', { text: r.upstream_request_id }));
    const attempts = (r.attempt_log || []).map((a, i) => h('tr', { 'data-testid': 'attempt-row' },
      h('td', { text: String(i + 1) }), h('td', { text: keyText(a.key_id) }), h('td', { text: a.status || t('none') }),
      h('td', {}, h('span', { class: a.reason === 'ok' ? 'badge status-active' : 'badge status-invalid', text: a.reason === 'ok' ? t('ok_word') : a.reason })),
      h('td', { text: fmtUs(a.duration_us) })));
    detail.replaceChildren(
      h('div', { class: 'head' }, h('h2', { text: t('rq.detail', { id: r.id }) }), h('div', { class: 'spacer' }),
        h('button', { type: 'button', 'data-testid': 'request-detail-close', text: t('close'), onclick: () => { detail.hidden = true; view.openId = null; } })),
      dl, h('h3', { text: t('rq.attempts') }),
      h('div', { class: 'table-wrap' }, h('table', { 'data-testid': 'attempts-table' },
        h('thead', {}, h('tr', {}, h('th', { text: '#' }), ['key', 'status', 'reason', 'duration'].map((c) => h('th', { text: t('rq.att.' + c) })))),
        h('tbody', {}, attempts))));
    detail.hidden = false;
    detail.scrollIntoView({ block: 'nearest' });
  }

  return {
    async refresh() {
      // Live only on the newest page: older pages stay where the reader is.
      if (view.cursor && tbody.childElementCount) return;
      const q = new URLSearchParams({ ...view.filters, limit: '50' });
      if (view.cursor) q.set('cursor', view.cursor);
      const [page, keys] = await Promise.all([api('GET', '/requests?' + q), view.keyLabels.size ? null : api('GET', '/keys').catch(() => [])]);
      if (keys) for (const k of keys) view.keyLabels.set(k.id, k.label || k.key);
      view.next = page.next_cursor;
      older.disabled = !view.next;
      newer.disabled = !view.cursor;
      tbody.replaceChildren(...page.data.map((r) => h('tr', { 'data-testid': 'request-row', 'data-request-id': r.id, class: 'clickable', tabindex: 0,
        onclick: () => open(r.id).catch((e) => toast(e.message, true)), onkeydown: (e) => { if (e.key === 'Enter') open(r.id).catch((err) => toast(err.message, true)); } },
      h('td', { class: 'nowrap', text: fmtTime(r.started_at_ms) }),
      h('td', { text: r.model ?? t('none') }),
      h('td', {}, h('span', { class: r.status >= 200 && r.status < 300 ? 'badge status-active' : 'badge status-invalid', text: r.status || t('none') })),
      h('td', { text: keyText(r.key_id) }),
      h('td', { text: r.token_id === null || r.token_id === undefined ? t('none') : `#${r.token_id}` }),
      h('td', { text: r.attempts }),
      h('td', { class: 'nowrap', text: fmtUs(r.duration_us) }),
      h('td', { class: 'nowrap', text: `${fmtNum(r.prompt_tokens)} / ${fmtNum(r.completion_tokens)}` }),
      h('td', { text: fmtUsd(r.cost_micros) }),
      h('td', { text: r.error_type || (r.cancelled ? t('rq.cancelled') : '') }))));
      empty.hidden = page.data.length > 0;
    },
  };
}

// ---------- Tokens ----------

function tokensPage(root) {
  const tbody = h('tbody', { 'data-testid': 'tokens-body' });
  const empty = h('p', { class: 'muted', hidden: true, text: t('tk.empty') });
  const cols = ['name', 'prefix', 'status', 'models', 'limits', 'budget', 'requests', 'day', 'tokens', 'spend', 'last_used', 'expires'];
  root.append(h('div', { class: 'head' }, h('h1', { text: t('tk.title') }), h('div', { class: 'spacer' }),
    h('button', { type: 'button', class: 'primary', 'data-testid': 'token-create', text: t('tk.create'), onclick: create })),
  h('div', { class: 'table-wrap' }, h('table', { 'data-testid': 'tokens-table' },
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { text: t('tk.col.' + c) })), h('th', {}))), tbody)), empty);

  const day = (at) => (at ? new Date(at * 1000).toISOString().slice(0, 10) : '');
  const blank = t('keys.field.blank');
  /** A token's settings as form fields (its current values when editing). */
  const fields = (tk) => [
    { name: 'models', label: t('tk.field.models'), value: tk?.models ? tk.models.join(', ') : '', placeholder: t('tk.field.any_model') },
    { name: 'rpm', label: t('keys.field.rpm'), type: 'number', value: tk?.rpm ?? '', placeholder: blank },
    { name: 'tpm', label: t('keys.field.tpm'), type: 'number', value: tk?.tpm ?? '', placeholder: blank },
    { name: 'rpd', label: t('keys.field.rpd'), type: 'number', value: tk?.rpd ?? '', placeholder: blank },
    { name: 'max_inflight', label: t('keys.field.max_inflight'), type: 'number', value: tk?.max_inflight ?? '', placeholder: blank },
    { name: 'budget_usd', label: t('keys.field.budget_usd'), type: 'number', step: 'any', value: tk?.budget_micros != null ? tk.budget_micros / 1e6 : '', placeholder: blank },
    { name: 'budget_period', label: t('tk.field.period'), options: ['total', 'daily', 'monthly'].map((p) => [p, t('tk.period.' + p)]), value: tk?.budget_period ?? 'total' },
    { name: 'expires', label: t('tk.field.expires'), value: day(tk?.expires_at), placeholder: '30d / YYYY-MM-DD' },
    { name: 'networks', label: t('tk.field.networks'), value: tk?.networks ? tk.networks.join(', ') : '', placeholder: t('tk.field.anywhere') },
    { name: 'priority', label: t('tk.field.priority'), type: 'number', value: tk?.priority ?? 0 },
  ];
  const list = (v) => { const items = v.split(/[\s,]+/).filter(Boolean); return items.length ? items : null; };
  const num = (v, name) => {
    if (v.trim() === '') return null;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`${name}: ${v}`);
    return n;
  };
  /** The settings that changed from `tk` (all given ones for a new token), as the API takes them. */
  function settings(values, tk) {
    const was = fields(tk);
    const out = {};
    for (const f of was) {
      const raw = values[f.name];
      if (raw === undefined || (tk && raw.trim() === String(f.value ?? ''))) continue;
      if (!tk && raw.trim() === '') continue;
      if (f.name === 'models' || f.name === 'networks') out[f.name] = list(raw);
      else if (f.name === 'budget_period') out[f.name] = raw;
      else if (f.name === 'expires') out[f.name] = raw.trim() || null;
      else if (f.name === 'priority') out[f.name] = num(raw, f.name) ?? 0;
      else out[f.name] = num(raw, f.name);
    }
    return out;
  }

  async function showSecret(made) {
    const secret = h('code', { class: 'secret', 'data-testid': 'token-secret', text: made.token });
    const copy = h('button', { type: 'button', 'data-testid': 'token-copy', text: t('tk.copy'), onclick: async () => {
      try { await navigator.clipboard.writeText(made.token); copy.textContent = t('tk.copied'); } catch { getSelection().selectAllChildren(secret); }
    } });
    await dialog({ title: t('tk.secret_title'), cancel: false, ok: t('close'), message: h('div', {}, h('p', { text: t('tk.secret_help') }), h('div', { class: 'secret-row' }, secret, copy)) });
  }

  async function create() {
    const made = await dialog({ title: t('tk.create'), ok: t('tk.create'), fields: [{ name: 'name', label: t('tk.name'), required: true }, ...fields()],
      submit: (v) => api('POST', '/tokens', { name: v.name, ...settings(v) }) });
    if (!made) return;
    refresh();
    await showSecret(made);
  }

  async function edit(tk) {
    const ok = await dialog({ title: t('tk.edit_title', { name: tk.name }), ok: t('save'), fields: fields(tk),
      submit: async (v) => {
        const change = settings(v, tk);
        if (Object.keys(change).length) await api('PATCH', `/tokens/${tk.id}`, change);
      } });
    if (ok) refresh();
  }

  async function regenerate(tk) {
    if (!(await confirmAction(t('tk.confirm_regenerate', { name: tk.name }), t('tk.regenerate')))) return;
    try {
      const made = await api('POST', `/tokens/${tk.id}/regenerate`);
      refresh();
      await showSecret(made);
    } catch (e) { toast(e.message, true); }
  }

  const limits = (tk) => [['RPM', tk.rpm], ['TPM', tk.tpm], [t('tk.rpd'), tk.rpd], [t('tk.inflight'), tk.max_inflight]]
    .filter(([, v]) => v != null).map(([n, v]) => `${n} ${compact(v)}`).join(' · ') || t('none');
  const budget = (tk) => (tk.budget_micros == null ? t('none')
    : t('tk.budget_left', { left: fmtUsd(Math.max(0, tk.budget_micros - (tk.budget_spent_micros || 0))), of: fmtUsd(tk.budget_micros), period: t('tk.period.' + tk.budget_period) }));
  const badge = { active: 'status-active', disabled: 'status-disabled', expired: 'status-expired', revoked: 'status-disabled' };

  return {
    async refresh() {
      const now = Math.floor((Date.now() + app.skew) / 1000);
      const [tokens, stats] = await Promise.all([api('GET', '/tokens'), api('GET', `/stats?by=token&span=hour&from=${now - 86400}`).catch(() => ({ data: [] }))]);
      const last = new Map((stats.data || []).map((s) => [s.subject, s.figures || s]));
      tbody.replaceChildren(...tokens.map((tk) => {
        const d = last.get(String(tk.id));
        const live = tk.status !== 'revoked';
        return h('tr', { 'data-testid': 'token-row', 'data-token-id': tk.id },
          h('td', { text: tk.name }), h('td', {}, h('code', { text: tk.prefix + '…' })),
          h('td', {}, h('span', { class: `badge ${badge[tk.status] || 'status-disabled'}`, 'data-testid': 'token-status', text: t('tk.' + tk.status) })),
          h('td', { 'data-testid': 'token-models', text: tk.models ? tk.models.join(', ') : t('tk.any') }),
          h('td', { class: 'nowrap', 'data-testid': 'token-limits', text: limits(tk) }),
          h('td', { class: 'nowrap', 'data-testid': 'token-budget', text: budget(tk) }),
          h('td', { text: `${fmtNum(tk.requests)} / ${fmtNum(tk.successes)} / ${fmtNum(tk.failures)}` }),
          h('td', { text: d ? fmtNum(d.requests) : '0' }),
          h('td', { class: 'nowrap', text: `${compact(tk.prompt_tokens)} / ${compact(tk.completion_tokens)}` }),
          h('td', { text: fmtUsd(tk.spent_micros) }), h('td', { class: 'nowrap', text: fmtTime(tk.last_used_at) }),
          h('td', { class: 'nowrap', text: tk.expires_at ? fmtTime(tk.expires_at) : t('tk.never') }),
          h('td', { class: 'nowrap' }, live ? [
            h('button', { type: 'button', class: 'small', 'data-testid': 'token-edit', text: t('keys.edit'), onclick: () => edit(tk) }),
            h('button', { type: 'button', class: 'small', 'data-testid': 'token-toggle', text: t(tk.enabled ? 'tk.disable' : 'tk.enable'),
              onclick: () => act(() => api('PATCH', `/tokens/${tk.id}`, { enabled: !tk.enabled })) }),
            h('button', { type: 'button', class: 'small', 'data-testid': 'token-regenerate', text: t('tk.regenerate'), onclick: () => regenerate(tk) }),
            h('button', { type: 'button', class: 'small danger', 'data-testid': 'token-revoke', text: t('tk.revoke'), onclick: async () => {
              if (await confirmAction(t('tk.confirm_revoke', { name: tk.name }), t('tk.revoke'))) act(() => api('POST', `/tokens/${tk.id}/revoke`));
            } })] : null));
      }));
      empty.hidden = tokens.length > 0;
    },
  };
}

// ---------- Upstreams ----------

/** An upstream's kind in words (`openai`, `openai_compatible`; another as it came). */
const kindText = (kind) => (kind === 'openai' || kind === 'openai_compatible' ? t('up.kind.' + kind) : kind);

/** An upstream's keys by state, the empty states left out: `3 active · 1 cooling`. */
function keyCensus(counts) {
  return STATUSES.filter((s) => counts?.[s] > 0)
    .map((s) => t('up.keys_state', { n: fmtNum(counts[s]), state: t('status.' + s) })).join(' · ');
}

/** The models an upstream serves, compact: the first few names and globs, then `+N more`. */
function modelChips(models) {
  const list = models || [];
  if (list.length === 1 && list[0] === '*') return h('span', { class: 'muted', title: '*', text: t('up.models_all') });
  const SHOWN = 8;
  return h('span', { class: 'chips', title: list.join(', ') },
    list.slice(0, SHOWN).map((m) => h('code', { class: 'chip', text: m })),
    list.length > SHOWN ? h('span', { class: 'muted small', text: t('up.models_more', { n: list.length - SHOWN }) }) : null);
}

/**
 * One card per upstream, in the API's (the config's) order. A card is kept
 * across polls and only its contents change, so a Test button keeps its
 * focus and its result while the page refreshes.
 */
function upstreamsPage(root) {
  const list = h('div', { class: 'upstreams', 'data-testid': 'upstreams-list' });
  const count = h('span', { class: 'muted', 'data-testid': 'upstreams-count' });
  const note = h('p', { class: 'muted', hidden: true, 'data-testid': 'upstreams-note' });
  const cards = new Map(); // name -> its card's parts
  const results = new Map(); // name -> { testing } or { text, ok }
  root.append(h('div', { class: 'head' }, h('h1', { text: t('up.title') }), count), note, list);

  function card(name) {
    let c = cards.get(name);
    if (c) return c;
    c = {
      badges: h('span', { class: 'up-badges' }),
      button: h('button', { type: 'button', class: 'small', 'data-testid': 'upstream-test', text: t('up.test'), onclick: () => test(name) }),
      result: h('div', { class: 'up-result', 'data-testid': 'upstream-test-result', role: 'status' }),
      fields: h('dl', { class: 'fields up-fields' }),
    };
    c.el = h('section', { class: 'panel up-card', 'data-testid': 'upstream-card', 'data-upstream': name },
      h('div', { class: 'up-head' }, h('h2', { 'data-testid': 'upstream-name', text: name }), c.badges,
        h('div', { class: 'spacer' }), c.button),
      c.fields, c.result);
    cards.set(name, c);
    return c;
  }

  function fill(c, u) {
    c.el.dataset.answering = String(!!u.answering);
    const answering = h('span', { class: `badge ${u.answering ? 'status-active' : 'status-invalid'}`, 'data-testid': 'upstream-answering',
      title: u.answering ? null : t('up.no_title'), text: t(u.answering ? 'up.yes' : 'up.no') });
    if (u.default) c.badges.replaceChildren(h('span', { class: 'badge status-default', 'data-testid': 'upstream-default', title: t('up.default_title'), text: t('up.default') }), answering);
    else c.badges.replaceChildren(answering);
    const errs = u.errors_last_hour || {};
    const failed = ERROR_KINDS.filter((k) => k !== 'cancelled').reduce((n, k) => n + (errs[k] || 0), 0);
    const byKind = ERROR_KINDS.filter((k) => errs[k]).map((k) => `${t('err.' + k)} ${fmtNum(errs[k])}`).join(' · ');
    const keys = u.keys || {};
    const census = keyCensus(keys);
    const dl = c.fields;
    dl.replaceChildren();
    const put = (label, testid, ...value) => dl.append(h('dt', { text: t(label) }), h('dd', { 'data-testid': testid }, ...value));
    put('up.field.kind', 'upstream-kind', kindText(u.kind), u.provider ? ` · ${u.provider}` : '');
    put('up.field.url', 'upstream-url', h('code', { text: u.base_url }));
    put('up.field.models', 'upstream-models', modelChips(u.models));
    put('up.field.routing', 'upstream-routing', h('span', { title: t('up.routing_title'), text: t('up.routing', { priority: u.priority, weight: u.weight }) }));
    put('up.field.proxy', 'upstream-proxy', t(u.proxied ? 'up.proxied' : 'up.direct'));
    put('up.field.keys', 'upstream-keys', h('span', { class: keys.active ? '' : 'warn-text', text: census || t('up.keys_none') }));
    put('up.field.hour', 'upstream-hour', t('up.hour', { requests: fmtNum(u.requests_last_hour ?? 0), failed: fmtNum(failed) }),
      byKind ? h('div', { class: 'muted small', text: byKind }) : null);
    put('up.field.last_error', 'upstream-last-error', u.last_error
      ? [h('span', { class: 'err-text', text: u.last_error }), u.last_error_at_ms ? h('span', { class: 'muted small', text: ` · ${fmtTime(u.last_error_at_ms)}` }) : null]
      : h('span', { class: 'muted', text: t('none') }));
  }

  function showResult(c, name) {
    const r = results.get(name);
    c.button.disabled = !!r?.testing;
    c.result.textContent = r ? (r.testing ? t('up.testing') : r.text) : '';
    c.result.className = 'up-result' + (r && !r.testing ? (r.ok ? ' ok-text' : ' err-text') : ' muted');
  }

  async function test(name) {
    results.set(name, { testing: true });
    if (cards.has(name)) showResult(cards.get(name), name);
    let text, ok;
    try {
      const r = await api('POST', `/upstreams/${encodeURIComponent(name)}/test`);
      ok = r.ok;
      text = r.ok ? t('up.result_ok', { status: r.status, ms: Math.round(r.duration_ms), key: r.key_id ?? t('none') }) : t('up.result_fail', { message: r.message });
    } catch (e) {
      ok = false;
      text = t('up.result_fail', { message: e.message });
    }
    results.set(name, { text, ok });
    if (cards.has(name)) showResult(cards.get(name), name);
  }

  return {
    async refresh() {
      let data;
      try {
        data = (await api('GET', '/upstreams')).data || [];
      } catch (e) {
        if (e.status !== 404) throw e;
        note.hidden = false; note.textContent = t('up.unavailable');
        list.replaceChildren(); cards.clear(); count.textContent = '';
        return;
      }
      note.hidden = data.length > 0;
      note.textContent = t('up.empty');
      count.textContent = fmtNum(data.length);
      const names = new Set(data.map((u) => u.name));
      for (const name of [...cards.keys()]) if (!names.has(name)) cards.delete(name);
      const els = data.map((u) => {
        const c = card(u.name);
        fill(c, u);
        showResult(c, u.name);
        return c.el;
      });
      // Moving a card out and back in would blur its focused button.
      if (els.length !== list.children.length || els.some((e, i) => list.children[i] !== e)) list.replaceChildren(...els);
    },
  };
}

// ---------- theme, language, start ----------

const THEMES = ['auto', 'light', 'dark'];
function applyTheme(theme) {
  if (theme === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  const b = $('#theme');
  b.textContent = theme === 'light' ? '☀' : theme === 'dark' ? '☾' : '◐';
  b.title = `${t('theme.toggle')} (${t('theme.' + theme)})`;
  b.dataset.theme = theme;
}

function applyLang(l) {
  setLang(l);
  fmtCache.clear();
  $('#lang').value = getLang();
  translate(document);
  applyTheme(localStorage.getItem('kp.theme') || 'auto');
}

function start() {
  applyLang(initialLang());
  $('#lang').addEventListener('change', (e) => {
    localStorage.setItem('kp.lang', e.target.value);
    applyLang(e.target.value);
    if (app.token) route(); else if (!$('#signin-error').hidden) $('#signin-error').hidden = true;
  });
  $('#theme').addEventListener('click', () => {
    const now = localStorage.getItem('kp.theme') || 'auto';
    const next = THEMES[(THEMES.indexOf(now) + 1) % THEMES.length];
    localStorage.setItem('kp.theme', next);
    applyTheme(next);
  });
  $('#signout').addEventListener('click', () => signOut());
  $('#signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('#token').value.trim();
    if (token) signIn(token);
  });
  window.addEventListener('hashchange', route);
  if (app.token) signIn(app.token, true); else showSignIn();
}

start();
