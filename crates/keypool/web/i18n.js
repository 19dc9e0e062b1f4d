// The dashboard's words in English and Simplified Chinese. A missing
// Chinese string falls back to English; `{name}` is replaced by t()'s vars.

export const STRINGS = {
  en: {
    'nav.overview': 'Overview', 'nav.keys': 'Keys', 'nav.requests': 'Requests', 'nav.tokens': 'Tokens',
    'nav.upstreams': 'Upstreams',
    'signout': 'Sign out', 'cancel': 'Cancel', 'ok': 'OK', 'save': 'Save', 'close': 'Close',
    'theme.toggle': 'Theme: auto, light or dark', 'theme.auto': 'auto', 'theme.light': 'light', 'theme.dark': 'dark',
    'signin.title': 'Sign in',
    'signin.help': 'Enter the admin token (the admin_token setting, or the one keypool printed at its first start).',
    'signin.token': 'Admin token', 'signin.submit': 'Sign in',
    'signin.wrong': 'That admin token was not accepted. Check it and try again.',
    'signin.expired': 'The admin token is no longer accepted: sign in again.',
    'signin.off': 'The admin API is not on for this server (no admin token is set).',
    'signin.unreachable': 'The server did not answer: {why}',
    'signin.limited': 'Too many wrong admin tokens from this address: wait a minute and try again.',
    'role.viewer': 'Read-only', 'role.viewer.help': 'This admin token can see everything but change nothing.',
    'live.ok': 'Live · updated {time}', 'live.error': 'Could not update: {why}',
    'none': '—', 'never': 'never', 'unlimited': 'no limit', 'all': 'All',
    'confirm.title': 'Are you sure?',
    // keys
    'keys.title': 'Keys', 'keys.add': 'Add key', 'keys.import': 'Bulk import', 'keys.filter': 'Filter by label or key',
    'keys.status_filter': 'Status', 'keys.selected': '{n} selected', 'keys.disable_selected': 'Disable selected',
    'keys.enable_selected': 'Enable selected', 'keys.delete_selected': 'Delete selected',
    'keys.empty': 'No keys yet: add one or paste several with Bulk import.',
    'keys.none_match': 'No key matches the filter.',
    'keys.col.label': 'Label', 'keys.col.key': 'Key', 'keys.col.status': 'Status', 'keys.col.remaining': 'Remaining',
    'keys.col.reset': 'Resets in', 'keys.col.inflight': 'In flight', 'keys.col.counts': 'Requests / ok / failed',
    'keys.col.spend': 'Spend / budget', 'keys.col.last_error': 'Last error', 'keys.col.last_used': 'Last used',
    'keys.col.actions': 'Actions', 'keys.col.upstream': 'Upstream',
    'keys.upstream_filter': 'Upstream', 'keys.all_upstreams': 'All upstreams',
    'keys.upstream_gone': '{name} (not configured)', 'keys.upstream_nowhere': 'serves nowhere',
    'keys.upstream_missing': 'The upstream {name} is not configured: this key serves nowhere until that upstream is configured again.',
    'keys.req': 'req', 'keys.tok': 'tok',
    'keys.edit': 'Edit', 'keys.enable': 'Enable', 'keys.disable': 'Disable', 'keys.delete': 'Delete', 'keys.reset': 'Reset',
    'keys.field.upstream': 'Upstream', 'keys.field.upstream_default': 'The default ({name})',
    'keys.field.key': 'API key', 'keys.field.label': 'Label', 'keys.field.rpm': 'Requests per minute (RPM)',
    'keys.field.tpm': 'Tokens per minute (TPM)', 'keys.field.rpd': 'Requests per day',
    'keys.field.max_inflight': 'Most in flight', 'keys.field.weight': 'Weight', 'keys.field.budget_usd': 'Budget (USD)',
    'keys.field.expires': 'Expires (YYYY-MM-DD)', 'keys.field.text': 'Keys, one a line (or separated by commas or spaces)',
    'keys.field.blank': 'blank: none',
    'keys.edit_title': 'Edit key {name}', 'keys.add_title': 'Add a key', 'keys.import_title': 'Import keys',
    'keys.added': 'Key added.', 'keys.imported': '{added} added, {dup} already in the pool, {invalid} not keys.',
    'keys.confirm_delete': 'Delete {n} key(s)? Their history stays in the request log; the keys cannot be recovered.',
    'keys.confirm_disable': 'Disable {n} key(s)? They stop taking requests until enabled.',
    'keys.confirm_reset': 'Reset key {name}? Its learned limits and cooling are cleared.',
    'status.active': 'active', 'status.cooling': 'cooling', 'status.exhausted': 'exhausted', 'status.invalid': 'invalid',
    'status.disabled': 'disabled', 'status.expired': 'expired', 'status.spent': 'spent',
    // overview
    'ov.title': 'Overview', 'ov.rps': 'Requests per second', 'ov.latency': 'Latency p50 / p99', 'ov.ttfb': 'Time to first byte',
    'ov.tpm': 'Tokens per minute', 'ov.queue': 'Queue depth / wait', 'ov.inflight': 'In flight',
    'ov.keys': 'Keys usable / total', 'ov.capacity': 'Capacity used now', 'ov.cap.requests': 'Requests this window',
    'ov.cap.tokens': 'Tokens this window', 'ov.cap.unknown': 'No key has a known limit yet.',
    'ov.errors': 'Errors by kind (last {min} min)', 'ov.recent': 'Last {min} minutes: {n} requests, {ok} succeeded, {failed} failed.',
    'ov.spend': 'Spend per day', 'ov.range.hour': 'Last hour', 'ov.range.day': 'Last day', 'ov.range.week': 'Last week',
    'ov.chart.requests': 'Requests', 'ov.chart.failures': 'Failures', 'ov.chart.latency': 'Latency (ms)',
    'ov.chart.p50': 'p50', 'ov.chart.p99': 'p99', 'ov.chart.tokens': 'Tokens', 'ov.chart.empty': 'No requests in this range.',
    'ov.unavailable': 'This server has no overview endpoint yet.',
    'err.caller': 'caller', 'err.rate_limited': 'rate limited', 'err.key': 'key', 'err.timeout': 'timeout',
    'err.upstream': 'upstream', 'err.gateway': 'gateway', 'err.cancelled': 'cancelled',
    // requests
    'rq.title': 'Requests', 'rq.filter.status': 'Status', 'rq.filter.model': 'Model', 'rq.filter.key': 'Key id',
    'rq.filter.token': 'Token id', 'rq.filter.error': 'Error', 'rq.filter.request_id': 'Request id',
    'rq.apply': 'Apply', 'rq.clear': 'Clear', 'rq.newer': 'Newest', 'rq.older': 'Older',
    'rq.col.time': 'Time', 'rq.col.model': 'Model', 'rq.col.status': 'Status', 'rq.col.key': 'Key', 'rq.col.token': 'Token',
    'rq.col.attempts': 'Attempts', 'rq.col.duration': 'Duration', 'rq.col.tokens': 'Tokens', 'rq.col.cost': 'Cost',
    'rq.col.error': 'Error', 'rq.empty': 'No request matches.', 'rq.detail': 'Request {id}', 'rq.attempts': 'Attempts',
    'rq.att.key': 'Key', 'rq.att.status': 'Status', 'rq.att.reason': 'Reason', 'rq.att.duration': 'Duration',
    'rq.field.request_id': 'Request id', 'rq.field.started': 'Arrived', 'rq.field.path': 'Path',
    'rq.field.stream': 'Stream', 'rq.field.queue_wait': 'Queue wait', 'rq.field.ttfb': 'First byte',
    'rq.field.usage': 'Prompt / completion tokens', 'rq.field.estimated': '(estimated)', 'rq.field.upstream_id': 'Upstream id',
    'rq.field.client': 'Client', 'rq.field.user': 'End user', 'rq.cancelled': 'cancelled by the caller',
    'yes': 'yes', 'no': 'no', 'ok_word': 'ok',
    // tokens
    'tk.title': 'Gateway tokens', 'tk.create': 'Create token', 'tk.name': 'Name (who or what uses it)',
    'tk.col.name': 'Name', 'tk.col.prefix': 'Token', 'tk.col.status': 'Status', 'tk.col.requests': 'Requests / ok / failed',
    'tk.col.day': 'Last 24 h', 'tk.col.tokens': 'Tokens in / out', 'tk.col.spend': 'Spend', 'tk.col.last_used': 'Last used',
    'tk.col.created': 'Created', 'tk.revoke': 'Revoke', 'tk.revoked': 'revoked', 'tk.active': 'active',
    'tk.empty': 'No gateway tokens: the gateway is open to anyone who can reach it.',
    'tk.secret_title': 'Token created', 'tk.secret_help': 'Copy it now: it is shown this once and never again.',
    'tk.copy': 'Copy', 'tk.copied': 'Copied', 'tk.confirm_revoke': 'Revoke token {name}? Callers using it get 401 at once.',
    'tk.col.models': 'Models', 'tk.col.limits': 'Limits', 'tk.col.budget': 'Budget left', 'tk.col.expires': 'Expires',
    'tk.field.models': 'Models (globs, separated by commas)', 'tk.field.any_model': 'blank: every model',
    'tk.field.period': 'Budget period', 'tk.period.total': 'total', 'tk.period.daily': 'daily', 'tk.period.monthly': 'monthly',
    'tk.field.expires': 'Expires (30d, YYYY-MM-DD)', 'tk.field.networks': 'Networks (CIDRs, separated by commas)',
    'tk.field.anywhere': 'blank: anywhere', 'tk.field.priority': 'Priority (higher is served first)',
    'tk.edit_title': 'Edit token {name}', 'tk.regenerate': 'New secret',
    'tk.confirm_regenerate': 'Give token {name} a new secret? Callers using the old one get 401 at once; settings and usage stay.',
    'tk.rpd': 'per day', 'tk.inflight': 'in flight', 'tk.budget_left': '{left} of {of} ({period})',
    'tk.disabled': 'disabled', 'tk.expired': 'expired', 'tk.enable': 'Enable', 'tk.disable': 'Disable',
    'tk.any': 'every model', 'tk.never': 'never',
    // upstreams
    'up.title': 'Upstreams', 'up.default': 'default',
    'up.default_title': 'The default upstream: requests without a model, and keys added without an upstream, go here.',
    'up.kind.openai': 'OpenAI', 'up.kind.openai_compatible': 'OpenAI-compatible',
    'up.field.kind': 'Kind', 'up.field.url': 'Base URL', 'up.field.models': 'Models', 'up.field.routing': 'Routing',
    'up.field.proxy': 'Proxy', 'up.field.keys': 'Keys', 'up.field.hour': 'Last hour', 'up.field.last_error': 'Last error',
    'up.routing': 'priority {priority} · weight {weight}',
    'up.routing_title': 'A higher priority is tried first; upstreams of equal priority share requests by weight.',
    'up.proxied': 'through a proxy', 'up.direct': 'direct',
    'up.models_all': 'every model', 'up.models_more': '+{n} more',
    'up.keys_state': '{n} {state}', 'up.keys_none': 'no keys: it cannot serve',
    'up.hour': '{requests} requests · {failed} failed',
    'up.test': 'Test', 'up.testing': 'Testing…', 'up.yes': 'answering', 'up.no': 'failing',
    'up.no_title': 'Failing for every key: its breaker is open and requests are held while it is probed.',
    'up.result_ok': 'OK: {status} in {ms} ms with key {key}', 'up.result_fail': 'Failed: {message}',
    'up.empty': 'No upstream is configured.', 'up.unavailable': 'This server has no upstream health endpoint yet.',
  },
  zh: {
    'nav.overview': '概览', 'nav.keys': '密钥', 'nav.requests': '请求', 'nav.tokens': '令牌', 'nav.upstreams': '上游',
    'signout': '退出', 'cancel': '取消', 'ok': '确定', 'save': '保存', 'close': '关闭',
    'theme.toggle': '主题：自动、浅色或深色', 'theme.auto': '自动', 'theme.light': '浅色', 'theme.dark': '深色',
    'signin.title': '登录', 'signin.help': '输入管理令牌（admin_token 设置，或 keypool 首次启动时打印的令牌）。',
    'signin.token': '管理令牌', 'signin.submit': '登录', 'signin.wrong': '管理令牌不正确，请检查后重试。',
    'signin.expired': '管理令牌已失效，请重新登录。', 'signin.off': '此服务器未开启管理 API（未设置管理令牌）。',
    'signin.unreachable': '服务器没有响应：{why}',
    'signin.limited': '此地址输错管理令牌的次数过多，请一分钟后再试。',
    'role.viewer': '只读', 'role.viewer.help': '此管理令牌可以查看全部内容，但不能做任何修改。',
    'live.ok': '实时 · 更新于 {time}', 'live.error': '无法更新：{why}',
    'none': '—', 'never': '从未', 'unlimited': '无限制', 'all': '全部', 'confirm.title': '确定吗？',
    'keys.title': '密钥', 'keys.add': '添加密钥', 'keys.import': '批量导入', 'keys.filter': '按标签或密钥筛选',
    'keys.status_filter': '状态', 'keys.selected': '已选 {n} 个', 'keys.disable_selected': '停用所选',
    'keys.enable_selected': '启用所选', 'keys.delete_selected': '删除所选',
    'keys.empty': '还没有密钥：添加一个，或用批量导入粘贴多个。', 'keys.none_match': '没有符合筛选条件的密钥。',
    'keys.col.label': '标签', 'keys.col.key': '密钥', 'keys.col.status': '状态', 'keys.col.remaining': '剩余',
    'keys.col.reset': '重置倒计时', 'keys.col.inflight': '进行中', 'keys.col.counts': '请求 / 成功 / 失败',
    'keys.col.spend': '花费 / 预算', 'keys.col.last_error': '最近错误', 'keys.col.last_used': '最近使用',
    'keys.col.actions': '操作', 'keys.col.upstream': '上游', 'keys.req': '次', 'keys.tok': 'tok',
    'keys.upstream_filter': '上游', 'keys.all_upstreams': '全部上游', 'keys.upstream_gone': '{name}（未配置）',
    'keys.upstream_nowhere': '不处理任何请求',
    'keys.upstream_missing': '上游 {name} 未配置：在重新配置该上游之前，此密钥不处理任何请求。',
    'keys.edit': '编辑', 'keys.enable': '启用', 'keys.disable': '停用', 'keys.delete': '删除', 'keys.reset': '重置',
    'keys.field.upstream': '上游', 'keys.field.upstream_default': '默认上游（{name}）',
    'keys.field.key': 'API 密钥', 'keys.field.label': '标签', 'keys.field.rpm': '每分钟请求数 (RPM)',
    'keys.field.tpm': '每分钟 token 数 (TPM)', 'keys.field.rpd': '每日请求数', 'keys.field.max_inflight': '最大并发',
    'keys.field.weight': '权重', 'keys.field.budget_usd': '预算（美元）', 'keys.field.expires': '过期日期 (YYYY-MM-DD)',
    'keys.field.text': '密钥，每行一个（或用逗号、空格分隔）', 'keys.field.blank': '留空：不限',
    'keys.edit_title': '编辑密钥 {name}', 'keys.add_title': '添加密钥', 'keys.import_title': '导入密钥',
    'keys.added': '已添加密钥。', 'keys.imported': '添加 {added} 个，{dup} 个已存在，{invalid} 个不是密钥。',
    'keys.confirm_delete': '删除 {n} 个密钥？请求日志中的记录会保留；密钥无法恢复。',
    'keys.confirm_disable': '停用 {n} 个密钥？在重新启用前它们不再接收请求。',
    'keys.confirm_reset': '重置密钥 {name}？将清除学习到的限额和冷却状态。',
    'status.active': '可用', 'status.cooling': '冷却中', 'status.exhausted': '额度用尽', 'status.invalid': '无效',
    'status.disabled': '已停用', 'status.expired': '已过期', 'status.spent': '预算用尽',
    'ov.title': '概览', 'ov.rps': '每秒请求数', 'ov.latency': '延迟 p50 / p99', 'ov.ttfb': '首字节时间',
    'ov.tpm': '每分钟 token 数', 'ov.queue': '队列长度 / 等待', 'ov.inflight': '进行中', 'ov.keys': '可用 / 全部密钥',
    'ov.capacity': '当前已用容量', 'ov.cap.requests': '本窗口请求', 'ov.cap.tokens': '本窗口 token',
    'ov.cap.unknown': '还没有密钥的限额已知。', 'ov.errors': '按类型的错误（最近 {min} 分钟）',
    'ov.recent': '最近 {min} 分钟：{n} 个请求，{ok} 个成功，{failed} 个失败。', 'ov.spend': '每日花费',
    'ov.range.hour': '最近一小时', 'ov.range.day': '最近一天', 'ov.range.week': '最近一周',
    'ov.chart.requests': '请求', 'ov.chart.failures': '失败', 'ov.chart.latency': '延迟（毫秒）', 'ov.chart.p50': 'p50',
    'ov.chart.p99': 'p99', 'ov.chart.tokens': 'Token', 'ov.chart.empty': '此时间段没有请求。',
    'ov.unavailable': '此服务器还没有概览接口。',
    'err.caller': '调用方', 'err.rate_limited': '限流', 'err.key': '密钥', 'err.timeout': '超时', 'err.upstream': '上游',
    'err.gateway': '网关', 'err.cancelled': '已取消',
    'rq.title': '请求', 'rq.filter.status': '状态码', 'rq.filter.model': '模型', 'rq.filter.key': '密钥 id',
    'rq.filter.token': '令牌 id', 'rq.filter.error': '错误', 'rq.filter.request_id': '请求 id', 'rq.apply': '应用',
    'rq.clear': '清除', 'rq.newer': '最新', 'rq.older': '更早',
    'rq.col.time': '时间', 'rq.col.model': '模型', 'rq.col.status': '状态码', 'rq.col.key': '密钥', 'rq.col.token': '令牌',
    'rq.col.attempts': '尝试', 'rq.col.duration': '耗时', 'rq.col.tokens': 'Token', 'rq.col.cost': '费用',
    'rq.col.error': '错误', 'rq.empty': '没有匹配的请求。', 'rq.detail': '请求 {id}', 'rq.attempts': '尝试记录',
    'rq.att.key': '密钥', 'rq.att.status': '状态码', 'rq.att.reason': '原因', 'rq.att.duration': '耗时',
    'rq.field.request_id': '请求 id', 'rq.field.started': '到达时间', 'rq.field.path': '路径', 'rq.field.stream': '流式',
    'rq.field.queue_wait': '排队等待', 'rq.field.ttfb': '首字节', 'rq.field.usage': '输入 / 输出 token',
    'rq.field.estimated': '（估算）', 'rq.field.upstream_id': '上游 id', 'rq.field.client': '客户端',
    'rq.field.user': '终端用户', 'rq.cancelled': '调用方已取消', 'yes': '是', 'no': '否', 'ok_word': '成功',
    'tk.title': '网关令牌', 'tk.create': '创建令牌', 'tk.name': '名称（谁或什么在使用）', 'tk.col.name': '名称',
    'tk.col.prefix': '令牌', 'tk.col.status': '状态', 'tk.col.requests': '请求 / 成功 / 失败', 'tk.col.day': '最近 24 小时',
    'tk.col.tokens': '输入 / 输出 token', 'tk.col.spend': '花费', 'tk.col.last_used': '最近使用', 'tk.col.created': '创建时间',
    'tk.revoke': '吊销', 'tk.revoked': '已吊销', 'tk.active': '有效',
    'tk.empty': '没有网关令牌：任何能访问网关的人都可以使用它。', 'tk.secret_title': '令牌已创建',
    'tk.secret_help': '请立即复制：它只显示这一次。', 'tk.copy': '复制', 'tk.copied': '已复制',
    'tk.confirm_revoke': '吊销令牌 {name}？使用它的调用方会立即收到 401。',
    'tk.col.models': '模型', 'tk.col.limits': '限额', 'tk.col.budget': '剩余预算', 'tk.col.expires': '过期时间',
    'tk.field.models': '模型（通配符，用逗号分隔）', 'tk.field.any_model': '留空：所有模型',
    'tk.field.period': '预算周期', 'tk.period.total': '总额', 'tk.period.daily': '每日', 'tk.period.monthly': '每月',
    'tk.field.expires': '过期（30d 或 YYYY-MM-DD）', 'tk.field.networks': '允许的网络（CIDR，用逗号分隔）',
    'tk.field.anywhere': '留空：不限来源', 'tk.field.priority': '优先级（越高越先服务）',
    'tk.edit_title': '编辑令牌 {name}', 'tk.regenerate': '重新生成',
    'tk.confirm_regenerate': '为令牌 {name} 生成新的密钥？使用旧密钥的调用方会立即收到 401；设置和用量保留。',
    'tk.rpd': '每日', 'tk.inflight': '并发', 'tk.budget_left': '剩余 {left} / {of}（{period}）',
    'tk.disabled': '已停用', 'tk.expired': '已过期', 'tk.enable': '启用', 'tk.disable': '停用',
    'tk.any': '所有模型', 'tk.never': '永不',
    'up.title': '上游', 'up.default': '默认',
    'up.default_title': '默认上游：未指定模型的请求，以及添加时未指定上游的密钥，都归它。',
    'up.kind.openai': 'OpenAI', 'up.kind.openai_compatible': 'OpenAI 兼容',
    'up.field.kind': '类型', 'up.field.url': '基础 URL', 'up.field.models': '模型', 'up.field.routing': '路由',
    'up.field.proxy': '代理', 'up.field.keys': '密钥', 'up.field.hour': '最近一小时', 'up.field.last_error': '最近错误',
    'up.routing': '优先级 {priority} · 权重 {weight}',
    'up.routing_title': '优先级高的先尝试；优先级相同的上游按权重分配请求。',
    'up.proxied': '经代理', 'up.direct': '直连', 'up.models_all': '全部模型', 'up.models_more': '另有 {n} 个',
    'up.keys_state': '{state} {n}', 'up.keys_none': '没有密钥：无法处理请求',
    'up.hour': '{requests} 个请求 · {failed} 个失败',
    'up.test': '测试', 'up.testing': '测试中…', 'up.yes': '正常响应', 'up.no': '故障',
    'up.no_title': '所有密钥都失败：熔断已打开，探测期间请求暂缓。',
    'up.result_ok': '成功：{ms} 毫秒内返回 {status}，使用密钥 {key}', 'up.result_fail': '失败：{message}',
    'up.empty': '没有配置上游。', 'up.unavailable': '此服务器还没有上游健康接口。',
  },
};

let lang = 'en';

/** The language in use: the stored choice, else the browser's. */
export function initialLang() {
  const stored = localStorage.getItem('kp.lang');
  if (stored && STRINGS[stored]) return stored;
  return (navigator.language || 'en').toLowerCase().startsWith('zh') ? 'zh' : 'en';
}

export function setLang(l) {
  lang = STRINGS[l] ? l : 'en';
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
}

export function getLang() {
  return lang;
}

/** The BCP 47 locale for Intl formatters. */
export function locale() {
  return lang === 'zh' ? 'zh-CN' : 'en-GB';
}

/** `key`'s text in the current language, with `{var}`s replaced. */
export function t(key, vars) {
  let s = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.split(`{${k}}`).join(String(v));
  return s;
}

/** Fills every `data-i18n` (text) and `data-i18n-title` element under `root`. */
export function translate(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
}
