// Shared by both pages: the English and Chinese strings, the language and
// theme toggles, formatting, and small DOM helpers. Loaded in <head> without
// defer so the theme is set before the first paint (no light flash in dark
// mode); everything that touches the body waits for DOMContentLoaded.
//
// Every value that comes from the server is inserted with textContent (ui.el
// builds elements that way); no code here or in the pages assigns innerHTML.
'use strict';

(function () {
  const STRINGS = {
    en: {
      'skip': 'Skip to content',
      'nav.pages': 'Pages',
      'nav.dashboard': 'Dashboard',
      'nav.admin': 'Admin',
      'lang.label': 'Language',
      'theme.toggle': 'Switch light / dark theme',
      'copy': 'Copy',
      'copied': 'Copied',
      'copy.failed': 'Press Ctrl+C',
      'copy.announce': 'Copied {text}',
      'copy.label': 'Copy {what}',

      'dash.title': 'Traffic',
      'dash.overview': 'Overview',
      'dash.charts': 'Charts',
      'dash.loading': 'Loading…',
      'dash.live': 'Live · updated {time} · refreshes every {n} s',
      'dash.down': 'Server unreachable since {time}; retrying every {n} s. The figures shown are from {last}.',
      'dash.downNever': 'Server unreachable; retrying every {n} s.',
      'dash.httpError': '/stats answered HTTP {status}; retrying every {n} s.',
      'dash.statsOff': 'Stats collection is off (ENABLE_STATS=false); only process figures update.',
      // The dashboard's token form (STATS_TOKEN) and its idle endpoints row.
      'stok.title': 'Stats token',
      'stok.help': 'This server keeps its figures private (STATS_TOKEN). Enter the stats token or the admin token. It is kept only in this browser tab.',
      'stok.token': 'Stats token',
      'stok.submit': 'Show figures',
      'stok.checking': 'Checking…',
      'stok.empty': 'Enter the token.',
      'stok.wrong': 'Wrong token. Enter STATS_TOKEN or the admin token.',
      'stok.expired': 'The token is no longer accepted. Enter it again.',
      'stok.limited': 'Too many failed attempts from this address. Try again in {n} s.',
      'stok.unreachable': 'The server cannot be reached. Check that apiproxy is running, then try again.',
      'stok.forget': 'Forget token',
      'stok.locked': 'A token is needed to see the figures.',
      'ep.idle': '{n} idle endpoints',
      'ep.idleSub': 'no requests in this range',
      // The range selector, card groups, charts, models and recent errors.
      'range.label': 'Range',
      'range.24h': '24 h',
      'range.7d': '7 days',
      'range.30d': '30 days',
      'range.all': 'All time',
      'range.of.24h': 'Last 24 hours',
      'range.of.7d': 'Last 7 days',
      'range.of.30d': 'Last 30 days',
      'range.of.all': 'All time',
      'scope.fleet': 'all instances',
      'scope.instance': 'this instance',
      'perf.title': 'This instance · last 60 s',
      'card.requests': 'Requests',
      'card.cc': '{n} closed by the client',
      'card.cacheSub': 'cache {n}',
      'card.latency': 'Latency',
      'card.latencyAvg': 'avg {v}',
      'card.latencySub': 'p95 {p95} · all endpoints',
      'card.ttfb': 'Time to first byte',
      'card.ttfbSub': 'p95 {p95} · {prefix}, the busiest endpoint',
      'card.ttfbTitle': 'Percentiles of {prefix}, the busiest endpoint: percentiles of several endpoints do not add up. The chart shows all traffic per hour or day.',
      'card.perfErr': 'Error rate',
      'chart.requests': 'Requests by outcome',
      'chart.tokens': 'Tokens',
      'chart.ttfb': 'Time to first byte',
      'chart.cc': 'client closed',
      'chart.prompt': 'prompt',
      'chart.completion': 'completion',
      'chart.cache': 'cache',
      'chart.total': 'total',
      'chart.emptyTTFB': 'No time to first byte in this range',
      'chart.last30': '· Last 30 days (what /stats keeps)',
      'ep.requests': 'Requests',
      'ep.ttfb': 'TTFB p50 / p95',
      'ep.ttfbShort': 'TTFB',
      'md.title': 'Models',
      'md.count': '{n} models',
      'md.model': 'Model',
      'md.requests': 'Requests',
      'md.share': 'Share',
      'md.prompt': 'Prompt',
      'md.completion': 'Completion',
      'md.cache': 'Cache',
      'md.total': 'Total tokens',
      'md.endpoints': 'Endpoints',
      'md.more': '+{n} more',
      'md.none': 'No response named a model in this range.',
      're.title': 'Recent errors',
      're.sub': 'the last 20 responses that were not 2xx; each opens the request log',
      're.time': 'Time',
      're.status': 'Status',
      're.code': 'Code',
      're.none': 'No errors in the request log.',
      'card.rps': 'Requests / s',
      'card.avg': 'Avg response',
      'card.errrate': 'Error rate',
      'card.mem': 'Memory',
      'card.goroutines': 'Goroutines',
      'card.uptime': 'Uptime',
      'card.tokens': 'Tokens',
      'card.errors': '{n} errors',
      'card.error1': '1 error',
      'card.active': '{n} in flight',
      'card.tokensSub': 'in {p} · out {c}',
      'chart.ok': 'ok',
      'chart.empty': 'No requests in this range',
      'chart.aria': '{title}, {range}: {n} points. Arrow keys show each one.',
      'ep.title': 'Endpoints',
      'ep.filter': 'Filter endpoints',
      'ep.count': '{n} endpoints',
      'ep.countFiltered': '{shown} of {n} endpoints',
      'ep.endpoint': 'Endpoint',
      'ep.prefix': 'Prefix',
      'ep.target': 'Target',
      'ep.url': 'Proxy URL',
      'ep.errors': 'Errors',
      'ep.latency': 'Latency avg / p95',
      'ep.latencyShort': 'Latency',
      'ep.tokens': 'Tokens',
      'ep.last': 'Last request',
      'ep.none': 'No endpoints yet. Add a mapping on the Admin page.',
      'ep.models': 'Models',
      'ep.tokensTitle': 'prompt {p}, completion {c}',
      'ep.limited': '{n} rate-limited',
      'ep.limitedTitle': '{n} refused by a rate limit (429 rate_limited), counted in the errors',
      'ks.title': 'Keys',
      'ks.count': '{n} keys',
      'ks.key': 'Key',
      'ks.last': 'Last used',
      'ks.deleted': 'deleted key',
      'card.failovers': 'Failovers',
      'card.failoversSub': 'all time, retried on another target',
      'tg.label': 'Targets',
      'tg.title': 'Targets of {prefix}',
      'tg.url': 'Target',
      'tg.count': 'Requests',
      'tg.errors': 'Errors',
      'tg.failovers': 'Failovers',
      'tg.state': 'State',
      'tg.ok': 'available',
      'tg.cooling': 'cooling until {time}',
      'use.title': 'Use it from your code',
      'use.intro': "Point your SDK's base URL at this server; your API key passes through unchanged. Any prefix from the table works the same way.",
      'use.openai': 'OpenAI SDK (Python)',
      'use.anthropic': 'Anthropic SDK (Python)',
      'use.gemini': 'Gemini (google-genai, Python)',
      'use.curl': 'curl',
      'ago.s': '{n} s ago',
      'ago.m': '{n} min ago',
      'ago.h': '{n} h ago',
      'ago.d': '{n} d ago',
      'dur.d': '{n}d',
      'dur.h': '{n}h',
      'dur.m': '{n}m',
      'dur.s': '{n}s',

      'login.title': 'Admin login',
      'login.help': 'Enter the admin token: ADMIN_TOKEN, or the token the server log prints at start. It is kept only in this browser tab until you log out.',
      'login.token': 'Admin token',
      'login.submit': 'Log in',
      'login.checking': 'Checking…',
      'login.empty': 'Enter the token.',
      'login.wrong': 'Wrong token. Check ADMIN_TOKEN or the token printed in the server log.',
      'login.expired': 'The token is no longer accepted. Log in again.',
      'login.limited': 'Too many failed attempts from this address. Try again in {n} s.',
      'admin.title': 'Mappings',
      'admin.logout': 'Log out',
      'admin.count': '{n} mappings',
      'admin.countFiltered': '{shown} of {n} mappings',
      'admin.unreachable': 'The server cannot be reached. Check that apiproxy is running, then try again.',
      'admin.storeDown': 'The mapping store is unavailable (HTTP 503): {msg} The proxy keeps routing with the last mappings it has; changes cannot be saved until the store is back.',
      'admin.error': 'The server answered HTTP {status}: {msg}',
      'add.title': 'Add a mapping',
      'add.prefix': 'Prefix',
      'add.prefixHint': 'Starts with /, e.g. /openai or /team/llm',
      'add.target': 'Target URL',
      'add.targetHint': 'An http or https URL, optionally with a base path',
      'add.submit': 'Add',
      'add.done': 'Added {prefix}',
      'list.title': 'Current mappings',
      'list.filter': 'Filter mappings',
      'list.prefix': 'Prefix',
      'list.target': 'Target',
      'list.url': 'Proxy URL',
      'list.actions': 'Actions',
      'list.none': 'No mappings. Add one above.',
      'list.noMatch': 'No mapping matches the filter.',
      'row.edit': 'Edit',
      'row.editLabel': 'New target for {prefix}',
      'row.save': 'Save',
      'row.cancel': 'Cancel',
      'row.delete': 'Delete',
      'row.confirm': 'Delete {prefix}?',
      'row.confirmBtn': 'Yes, delete',
      'row.saved': 'Saved {prefix}',
      'row.deleted': 'Deleted {prefix}',
      'row.gone': '{prefix} no longer exists; the list was reloaded.',
      'row.editFull': 'Edit {prefix}',
      'row.more': 'Several targets and options for {prefix}',
      'add.more': 'Several targets and options',
      'add.less': 'One target, no options',
      'add.lessRefused': 'This mapping has more than one target or options set; remove them first to go back to one URL.',
      'ed.targets': 'Targets',
      'ed.targetsHint': 'Tried in this order: the next one when a target fails or answers a status from “Retry on”.',
      'ed.targetN': 'Target {n}',
      'ed.url': 'URL',
      'ed.weight': 'Weight',
      'ed.key': 'Upstream key',
      'ed.keySet': 'A key {hint} is set and kept. Type a new one to replace it.',
      'ed.keyLost': 'This target moved or its URL changed: its stored key will be dropped. Type the key again to keep one.',
      'ed.keyTag': 'key {hint}',
      'ed.keyNote': 'Upstream keys are write-only: once saved, only their last 4 characters are shown. They are used only for callers that showed a proxy key (auth “keys”).',
      'ed.keyEmpty': 'No key: this target gets no credential.',
      'ed.keyNew': 'Sent on save; shown afterwards only by its last 4 characters.',
      'ed.keyReplacing': 'Replaces the key {hint} on save.',
      'ed.keyRemoving': 'The key {hint} will be removed on save.',
      'ed.keyOff': 'A key {hint} is stored, but only auth “keys” may hold one: remove it, or choose proxy keys.',
      'ed.keyNeedsKeys': 'Only with auth “keys”: the caller’s own key passes through otherwise.',
      'ed.keyPlaceholder': 'write-only',
      'ed.keyRemove': 'Remove key',
      'ed.keyKeep': 'Keep key',
      'ed.keyRemoveN': 'Remove the key {hint} of target {n}',
      'ed.keyKeepN': 'Keep the key {hint} of target {n}',
      'ed.style': 'Key sent as',
      'style.default': 'default (Bearer)',
      'style.bearer': 'Authorization: Bearer',
      'style.x_api_key': 'x-api-key (Anthropic)',
      'style.x_goog_api_key': 'x-goog-api-key (Gemini)',
      'style.api_key': 'api-key (Azure)',
      'style.query_key': '?key= (query)',
      'ed.auth': 'Callers',
      'ed.authPassthrough': 'use their own provider key (passthrough)',
      'ed.authKeys': 'must show a proxy key (keys)',
      'ed.authHint': 'keys: the proxy checks the caller’s proxy key, removes it and sends the target’s upstream key instead.',
      'ed.up': 'Move target {n} up',
      'ed.down': 'Move target {n} down',
      'ed.remove': 'Remove',
      'ed.removeN': 'Remove target {n}',
      'ed.moved': 'Target {n} is now target {m}',
      'ed.removed': 'Target {n} removed',
      'ed.addTarget': 'Add target',
      'ed.balance': 'Balance',
      'ed.failover': 'failover',
      'ed.weighted': 'weighted',
      'ed.balanceHint': 'failover: in order. weighted: the first try by weight, then in order.',
      'ed.retryOn': 'Retry on',
      'ed.retryHint': 'Statuses (400–599) that make the next target be tried. Empty: only connection errors and timeouts.',
      'ed.retryBad': 'retry_on must be status codes separated by commas, such as 429, 503',
      'ed.weightBad': 'weight must be a whole number from 1 to 1000',
      'ed.idle': 'Stream idle timeout',
      'ed.idleHint': 'Cut a response when the upstream sends nothing for this long, such as 30s or 2m; 0s: never.',
      'ed.limits': 'Limits for every caller of this mapping',
      'ed.limitsHint': '0 or empty: no limit. They hold across every instance on one Redis; a proxy key’s own limits apply too.',
      'ed.rpm': 'Requests per minute',
      'ed.tpm': 'Tokens per minute',
      'ed.concurrency': 'In flight at once',
      'view.weight': 'weight {n}',
      'view.retry': 'retry on {list}',
      'view.noRetry': 'no retry on status',
      'view.idle': 'idle timeout {d}',
      'view.auth': 'auth {auth}',
      'views.label': 'Admin views',
      'views.mappings': 'Mappings',
      'views.keys': 'Proxy keys',
      'keys.intro': 'A mapping with auth “keys” admits only callers that show one of these keys; the proxy removes it and sends the target’s own upstream key instead. Only a hash of each key is stored.',
      'keys.unsupported': 'This server has no proxy keys API (/api/keys answered 404): it is older than this page.',
      'keys.secretTitle': 'Your new proxy key',
      'keys.secretWarn': 'Copy it now: you will not see it again. The server keeps only a hash of it, and the list shows only its last 4 characters.',
      'keys.secretDone': 'I have copied it',
      'keys.secretFor': 'For “{name}”. Callers show it wherever their SDK puts its API key.',
      'keys.secretWhat': 'the new proxy key',
      'keys.secretCopied': 'The new proxy key was copied',
      'keys.addTitle': 'Create a proxy key',
      'keys.name': 'Name',
      'keys.nameHint': 'Who uses it, 1 to 64 characters',
      'keys.prefixes': 'Mappings',
      'keys.prefixesHint': 'Prefixes separated by commas; empty: every mapping with auth “keys”',
      'keys.expires': 'Expires',
      'keys.expiresHint': 'Your local time; empty: never',
      'keys.expiresBad': 'expires_at must be a date and time',
      'keys.limits': 'Limits',
      'keys.limitsHint': '0: no limit. They hold across every instance on one Redis; the mapping’s own limits apply too.',
      'keys.limitBad': '{field} must be a whole number, 0 or more',
      'keys.rpm': 'Requests / min',
      'keys.tpm': 'Tokens / min',
      'keys.concurrency': 'Concurrent requests',
      'keys.createDisabled': 'Create it disabled',
      'keys.create': 'Create key',
      'keys.listTitle': 'Proxy keys',
      'keys.count': '{n} keys',
      'keys.colName': 'Name',
      'keys.colHint': 'Key',
      'keys.colPrefixes': 'Mappings',
      'keys.colLimits': 'Limits',
      'keys.colUsed': 'Last used',
      'keys.colExpires': 'Expires',
      'keys.colStatus': 'Status',
      'keys.none': 'No proxy keys yet. Create one above.',
      'keys.allMappings': 'every keys mapping',
      'keys.noLimits': 'none',
      'keys.rpmN': '{n} req/min',
      'keys.tpmN': '{n} tokens/min',
      'keys.concN': '{n} at once',
      'keys.never': 'never',
      'keys.status.active': 'active',
      'keys.status.disabled': 'disabled',
      'keys.status.expired': 'expired',
      'keys.disable': 'Disable',
      'keys.enable': 'Enable',
      'keys.disabledDone': 'Disabled {name}',
      'keys.enabledDone': 'Enabled {name}',
      'keys.confirm': 'Delete “{name}”? Callers using it are refused at once.',
      'keys.deleted': 'Deleted {name}',
      'keys.gone': 'That key no longer exists; the list was reloaded.',
      'views.requests': 'Requests',
      'req.title': 'Requests',
      'req.filters': 'Filter requests',
      'req.prefix': 'Mapping',
      'req.key': 'Proxy key',
      'req.status': 'Status',
      'req.all': 'All',
      'req.exact': 'Exact code…',
      'req.code': 'Status code',
      'req.codeBad': 'A status code is three digits, such as 404',
      'req.model': 'Model',
      'req.clear': 'Clear filters',
      'req.listTitle': 'Recent requests',
      'req.col.time': 'Time',
      'req.col.prefix': 'Mapping',
      'req.col.request': 'Request',
      'req.col.status': 'Status',
      'req.col.model': 'Model',
      'req.col.tokens': 'Tokens in / out / total',
      'req.col.latency': 'Latency / TTFB',
      'req.col.key': 'Key',
      'req.col.attempts': 'Attempts',
      'req.loading': 'Loading…',
      'req.none': 'No requests yet.',
      'req.noMatch': 'No requests match these filters.',
      'req.count': '{n} shown',
      'req.live': 'Live · updated {time} · refreshes every {n} s',
      'req.paused': 'Paused while you read further down; back at the top it refreshes every {n} s',
      'req.older': 'Load older',
      'req.olderLoaded': '{n} older requests loaded',
      'req.capped': 'The newest {n} rows are kept here; narrow the filters to go further back.',
      'req.unsupported': 'This server has no request log API (/api/requests answered 404): it is older than this page.',
      'req.closed': 'client closed',
      'req.closedTitle': 'The client closed the connection before the response ended',
      'req.stream': 'stream',
      'req.tokensTitle': 'prompt {p}, completion {c}, total {t}',
      'req.attemptsTo': '{n} → target {t}',
      'req.attemptsTitle': '{n} attempts; target {t} answered',
    },
    zh: {
      'skip': '跳到正文',
      'nav.pages': '页面',
      'nav.dashboard': '仪表盘',
      'nav.admin': '管理',
      'lang.label': '语言',
      'theme.toggle': '切换浅色 / 深色主题',
      'copy': '复制',
      'copied': '已复制',
      'copy.failed': '请按 Ctrl+C',
      'copy.announce': '已复制 {text}',
      'copy.label': '复制 {what}',

      'dash.title': '流量',
      'dash.overview': '概览',
      'dash.charts': '图表',
      'dash.loading': '加载中…',
      'dash.live': '实时 · 更新于 {time} · 每 {n} 秒刷新',
      'dash.down': '自 {time} 起无法连接服务器，每 {n} 秒重试。当前显示的是 {last} 的数据。',
      'dash.downNever': '无法连接服务器，每 {n} 秒重试。',
      'dash.httpError': '/stats 返回 HTTP {status}，每 {n} 秒重试。',
      'dash.statsOff': '统计已关闭（ENABLE_STATS=false），只有进程数据会更新。',
      // 仪表盘的令牌表单（STATS_TOKEN）与空闲端点行。
      'stok.title': '统计令牌',
      'stok.help': '此服务器的统计数据不公开（STATS_TOKEN）。请输入统计令牌或管理令牌。它只保存在当前浏览器标签页中。',
      'stok.token': '统计令牌',
      'stok.submit': '查看数据',
      'stok.checking': '验证中…',
      'stok.empty': '请输入令牌。',
      'stok.wrong': '令牌错误。请输入 STATS_TOKEN 或管理令牌。',
      'stok.expired': '令牌已不再有效，请重新输入。',
      'stok.limited': '此地址失败次数过多，请 {n} 秒后再试。',
      'stok.unreachable': '无法连接服务器。请确认 apiproxy 正在运行，然后重试。',
      'stok.forget': '清除令牌',
      'stok.locked': '需要令牌才能查看数据。',
      'ep.idle': '{n} 个空闲端点',
      'ep.idleSub': '此范围内没有请求',
      'range.label': '时间范围',
      'range.24h': '24 小时',
      'range.7d': '7 天',
      'range.30d': '30 天',
      'range.all': '全部',
      'range.of.24h': '最近 24 小时',
      'range.of.7d': '最近 7 天',
      'range.of.30d': '最近 30 天',
      'range.of.all': '全部时间',
      'scope.fleet': '所有实例',
      'scope.instance': '本实例',
      'perf.title': '本实例 · 最近 60 秒',
      'card.requests': '请求数',
      'card.cc': '{n} 个被客户端中断',
      'card.cacheSub': '缓存 {n}',
      'card.latency': '延迟',
      'card.latencyAvg': '平均 {v}',
      'card.latencySub': 'p95 {p95} · 全部端点',
      'card.ttfb': '首字节时间',
      'card.ttfbSub': 'p95 {p95} · {prefix}（请求最多的端点）',
      'card.ttfbTitle': '{prefix}（请求最多的端点）的百分位数：多个端点的百分位数无法相加。图表按小时或按天显示全部流量。',
      'card.perfErr': '错误率',
      'chart.requests': '按结果分类的请求',
      'chart.tokens': 'Token 数',
      'chart.ttfb': '首字节时间',
      'chart.cc': '客户端中断',
      'chart.prompt': '输入',
      'chart.completion': '输出',
      'chart.cache': '缓存',
      'chart.total': '合计',
      'chart.emptyTTFB': '此范围内没有首字节时间',
      'chart.last30': '· 最近 30 天（/stats 保留的范围）',
      'ep.requests': '请求数',
      'ep.ttfb': '首字节 p50 / p95',
      'ep.ttfbShort': '首字节',
      'md.title': '模型',
      'md.count': '{n} 个模型',
      'md.model': '模型',
      'md.requests': '请求数',
      'md.share': '占比',
      'md.prompt': '输入',
      'md.completion': '输出',
      'md.cache': '缓存',
      'md.total': 'Token 总数',
      'md.endpoints': '端点',
      'md.more': '另外 {n} 个',
      'md.none': '此范围内没有响应标明模型。',
      're.title': '最近的错误',
      're.sub': '最近 20 个非 2xx 响应；点击打开请求日志',
      're.time': '时间',
      're.status': '状态',
      're.code': '代码',
      're.none': '请求日志中没有错误。',
      'card.rps': '每秒请求',
      'card.avg': '平均响应时间',
      'card.errrate': '错误率',
      'card.mem': '内存',
      'card.goroutines': 'Goroutine 数',
      'card.uptime': '运行时间',
      'card.tokens': 'Token 数',
      'card.errors': '{n} 个错误',
      'card.error1': '1 个错误',
      'card.active': '{n} 个进行中',
      'card.tokensSub': '输入 {p} · 输出 {c}',
      'chart.ok': '成功',
      'chart.empty': '此范围内没有请求',
      'chart.aria': '{title}，{range}：{n} 个数据点。用方向键逐个查看。',
      'ep.title': '端点',
      'ep.filter': '筛选端点',
      'ep.count': '{n} 个端点',
      'ep.countFiltered': '{shown} / {n} 个端点',
      'ep.endpoint': '端点',
      'ep.prefix': '前缀',
      'ep.target': '目标',
      'ep.url': '代理地址',
      'ep.errors': '错误',
      'ep.latency': '延迟 平均 / p95',
      'ep.latencyShort': '延迟',
      'ep.tokens': 'Token',
      'ep.last': '最近请求',
      'ep.none': '还没有端点。请在管理页面添加映射。',
      'ep.models': '模型',
      'ep.tokensTitle': '输入 {p}，输出 {c}',
      'ep.limited': '{n} 次限流',
      'ep.limitedTitle': '{n} 个请求被速率限制拒绝（429 rate_limited），已计入错误',
      'ks.title': '密钥',
      'ks.count': '{n} 个密钥',
      'ks.key': '密钥',
      'ks.last': '最近使用',
      'ks.deleted': '已删除的密钥',
      'card.failovers': '故障切换',
      'card.failoversSub': '累计，改由下一个目标重试',
      'tg.label': '目标',
      'tg.title': '{prefix} 的目标',
      'tg.url': '目标',
      'tg.count': '请求',
      'tg.errors': '错误',
      'tg.failovers': '切换',
      'tg.state': '状态',
      'tg.ok': '可用',
      'tg.cooling': '冷却至 {time}',
      'use.title': '在代码中使用',
      'use.intro': '把 SDK 的 base URL 指向本服务器即可，API 密钥原样转发。表中的任何前缀用法都相同。',
      'use.openai': 'OpenAI SDK（Python）',
      'use.anthropic': 'Anthropic SDK（Python）',
      'use.gemini': 'Gemini（google-genai，Python）',
      'use.curl': 'curl',
      'ago.s': '{n} 秒前',
      'ago.m': '{n} 分钟前',
      'ago.h': '{n} 小时前',
      'ago.d': '{n} 天前',
      'dur.d': '{n}天',
      'dur.h': '{n}小时',
      'dur.m': '{n}分',
      'dur.s': '{n}秒',

      'login.title': '管理员登录',
      'login.help': '请输入管理令牌：ADMIN_TOKEN，或服务器启动时日志中打印的令牌。它只保存在当前浏览器标签页中，直到你退出登录。',
      'login.token': '管理令牌',
      'login.submit': '登录',
      'login.checking': '验证中…',
      'login.empty': '请输入令牌。',
      'login.wrong': '令牌错误。请检查 ADMIN_TOKEN 或服务器日志中打印的令牌。',
      'login.expired': '令牌已不再有效，请重新登录。',
      'login.limited': '此地址失败次数过多，请 {n} 秒后再试。',
      'admin.title': '映射',
      'admin.logout': '退出登录',
      'admin.count': '{n} 个映射',
      'admin.countFiltered': '{shown} / {n} 个映射',
      'admin.unreachable': '无法连接服务器。请确认 apiproxy 正在运行，然后重试。',
      'admin.storeDown': '映射存储不可用（HTTP 503）：{msg} 代理会继续使用已有的映射转发；存储恢复前无法保存更改。',
      'admin.error': '服务器返回 HTTP {status}：{msg}',
      'add.title': '添加映射',
      'add.prefix': '前缀',
      'add.prefixHint': '以 / 开头，例如 /openai 或 /team/llm',
      'add.target': '目标 URL',
      'add.targetHint': 'http 或 https 地址，可带基础路径',
      'add.submit': '添加',
      'add.done': '已添加 {prefix}',
      'list.title': '当前映射',
      'list.filter': '筛选映射',
      'list.prefix': '前缀',
      'list.target': '目标',
      'list.url': '代理地址',
      'list.actions': '操作',
      'list.none': '没有映射。请在上方添加。',
      'list.noMatch': '没有符合筛选条件的映射。',
      'row.edit': '编辑',
      'row.editLabel': '{prefix} 的新目标',
      'row.save': '保存',
      'row.cancel': '取消',
      'row.delete': '删除',
      'row.confirm': '删除 {prefix}？',
      'row.confirmBtn': '确认删除',
      'row.saved': '已保存 {prefix}',
      'row.deleted': '已删除 {prefix}',
      'row.gone': '{prefix} 已不存在，列表已重新加载。',
      'row.editFull': '编辑 {prefix}',
      'row.more': '{prefix} 的多个目标和选项',
      'add.more': '多个目标和选项',
      'add.less': '单个目标，无选项',
      'add.lessRefused': '此映射有多个目标或设置了选项；请先删除它们，再回到单个 URL。',
      'ed.targets': '目标',
      'ed.targetsHint': '按此顺序尝试：某个目标失败或返回“重试状态码”中的状态时，改用下一个。',
      'ed.targetN': '目标 {n}',
      'ed.url': 'URL',
      'ed.weight': '权重',
      'ed.key': '上游密钥',
      'ed.keySet': '已设置密钥 {hint}，将保留。输入新密钥可替换它。',
      'ed.keyLost': '此目标的位置或 URL 已改变：已保存的密钥将被丢弃。如需保留，请重新输入密钥。',
      'ed.keyTag': '密钥 {hint}',
      'ed.keyNote': '上游密钥只写不读：保存后只显示最后 4 个字符。只有出示代理密钥的调用方（auth “keys”）才会用到它们。',
      'ed.keyEmpty': '无密钥：此目标不会收到任何凭据。',
      'ed.keyNew': '保存时发送；之后只显示最后 4 个字符。',
      'ed.keyReplacing': '保存时替换密钥 {hint}。',
      'ed.keyRemoving': '保存时将删除密钥 {hint}。',
      'ed.keyOff': '已保存密钥 {hint}，但只有 auth “keys” 才能保存密钥：请删除它，或改用代理密钥。',
      'ed.keyNeedsKeys': '仅用于 auth “keys”；否则调用方自己的密钥原样转发。',
      'ed.keyPlaceholder': '只写',
      'ed.keyRemove': '删除密钥',
      'ed.keyKeep': '保留密钥',
      'ed.keyRemoveN': '删除目标 {n} 的密钥 {hint}',
      'ed.keyKeepN': '保留目标 {n} 的密钥 {hint}',
      'ed.style': '密钥发送方式',
      'style.default': '默认（Bearer）',
      'style.bearer': 'Authorization: Bearer',
      'style.x_api_key': 'x-api-key（Anthropic）',
      'style.x_goog_api_key': 'x-goog-api-key（Gemini）',
      'style.api_key': 'api-key（Azure）',
      'style.query_key': '?key=（查询参数）',
      'ed.auth': '调用方',
      'ed.authPassthrough': '使用自己的服务商密钥（passthrough）',
      'ed.authKeys': '必须出示代理密钥（keys）',
      'ed.authHint': 'keys：代理检查调用方的代理密钥，将其移除，并改为发送目标的上游密钥。',
      'ed.up': '将目标 {n} 上移',
      'ed.down': '将目标 {n} 下移',
      'ed.remove': '删除',
      'ed.removeN': '删除目标 {n}',
      'ed.moved': '目标 {n} 现在是目标 {m}',
      'ed.removed': '已删除目标 {n}',
      'ed.addTarget': '添加目标',
      'ed.balance': '负载方式',
      'ed.failover': 'failover（按顺序）',
      'ed.weighted': 'weighted（按权重）',
      'ed.balanceHint': 'failover：按顺序尝试。weighted：第一次按权重选择，之后按顺序。',
      'ed.retryOn': '重试状态码',
      'ed.retryHint': '遇到这些状态（400–599）时尝试下一个目标。留空：只在连接错误和超时时切换。',
      'ed.retryBad': 'retry_on 必须是以逗号分隔的状态码，例如 429, 503',
      'ed.weightBad': '权重必须是 1 到 1000 之间的整数',
      'ed.idle': '流空闲超时',
      'ed.idleHint': '上游在这段时间内没有发送任何数据时切断响应，例如 30s 或 2m；0s：从不。',
      'ed.limits': '此映射所有调用方的限额',
      'ed.limitsHint': '0 或留空：不限。在同一 Redis 上的所有实例间共同生效；代理密钥自身的限额同样适用。',
      'ed.rpm': '每分钟请求数上限',
      'ed.tpm': '每分钟 Token 数上限',
      'ed.concurrency': '同时进行的请求数',
      'view.weight': '权重 {n}',
      'view.retry': '重试状态 {list}',
      'view.noRetry': '不按状态重试',
      'view.idle': '空闲超时 {d}',
      'view.auth': '认证 {auth}',
      'views.label': '管理视图',
      'views.mappings': '映射',
      'views.keys': '代理密钥',
      'keys.intro': 'auth 为 “keys” 的映射只接受出示这些密钥之一的调用方；代理会移除该密钥，改为发送目标自己的上游密钥。服务器只保存每个密钥的哈希。',
      'keys.unsupported': '此服务器没有代理密钥 API（/api/keys 返回 404）：它比此页面旧。',
      'keys.secretTitle': '新的代理密钥',
      'keys.secretWarn': '请立即复制：你将无法再次看到它。服务器只保存它的哈希，列表中只显示最后 4 个字符。',
      'keys.secretDone': '我已复制',
      'keys.secretFor': '属于“{name}”。调用方把它放在 SDK 放 API 密钥的地方即可。',
      'keys.secretWhat': '新的代理密钥',
      'keys.secretCopied': '新的代理密钥已复制',
      'keys.addTitle': '创建代理密钥',
      'keys.name': '名称',
      'keys.nameHint': '谁在使用它，1 到 64 个字符',
      'keys.prefixes': '映射',
      'keys.prefixesHint': '用逗号分隔的前缀；留空：所有 auth 为 “keys” 的映射',
      'keys.expires': '过期时间',
      'keys.expiresHint': '你的本地时间；留空：永不过期',
      'keys.expiresBad': 'expires_at 必须是日期和时间',
      'keys.limits': '限额',
      'keys.limitsHint': '0：不限。在同一 Redis 上的所有实例间共同生效；映射自身的限额同样适用。',
      'keys.limitBad': '{field} 必须是大于或等于 0 的整数',
      'keys.rpm': '每分钟请求数',
      'keys.tpm': '每分钟 Token 数',
      'keys.concurrency': '并发请求数',
      'keys.createDisabled': '创建为停用状态',
      'keys.create': '创建密钥',
      'keys.listTitle': '代理密钥',
      'keys.count': '{n} 个密钥',
      'keys.colName': '名称',
      'keys.colHint': '密钥',
      'keys.colPrefixes': '映射',
      'keys.colLimits': '限额',
      'keys.colUsed': '最近使用',
      'keys.colExpires': '过期时间',
      'keys.colStatus': '状态',
      'keys.none': '还没有代理密钥。请在上方创建。',
      'keys.allMappings': '所有 keys 映射',
      'keys.noLimits': '不限',
      'keys.rpmN': '每分钟 {n} 个请求',
      'keys.tpmN': '每分钟 {n} Token',
      'keys.concN': '同时 {n} 个',
      'keys.never': '从不',
      'keys.status.active': '启用',
      'keys.status.disabled': '已停用',
      'keys.status.expired': '已过期',
      'keys.disable': '停用',
      'keys.enable': '启用',
      'keys.disabledDone': '已停用 {name}',
      'keys.enabledDone': '已启用 {name}',
      'keys.confirm': '删除“{name}”？使用它的调用方会立即被拒绝。',
      'keys.deleted': '已删除 {name}',
      'keys.gone': '该密钥已不存在，列表已重新加载。',
      'views.requests': '请求',
      'req.title': '请求',
      'req.filters': '筛选请求',
      'req.prefix': '映射',
      'req.key': '代理密钥',
      'req.status': '状态',
      'req.all': '全部',
      'req.exact': '指定状态码…',
      'req.code': '状态码',
      'req.codeBad': '状态码是三位数字，例如 404',
      'req.model': '模型',
      'req.clear': '清除筛选',
      'req.listTitle': '最近的请求',
      'req.col.time': '时间',
      'req.col.prefix': '映射',
      'req.col.request': '请求',
      'req.col.status': '状态',
      'req.col.model': '模型',
      'req.col.tokens': 'Token 输入 / 输出 / 合计',
      'req.col.latency': '延迟 / 首字节',
      'req.col.key': '密钥',
      'req.col.attempts': '尝试次数',
      'req.loading': '加载中…',
      'req.none': '还没有请求。',
      'req.noMatch': '没有符合这些筛选条件的请求。',
      'req.count': '显示 {n} 条',
      'req.live': '实时 · 更新于 {time} · 每 {n} 秒刷新',
      'req.paused': '向下阅读时暂停刷新；回到顶部后每 {n} 秒刷新',
      'req.older': '加载更早的',
      'req.olderLoaded': '已加载 {n} 条更早的请求',
      'req.capped': '这里最多保留最新的 {n} 行；缩小筛选范围可查看更早的请求。',
      'req.unsupported': '此服务器没有请求日志 API（/api/requests 返回 404）：它比此页面旧。',
      'req.closed': '客户端断开',
      'req.closedTitle': '响应结束前客户端关闭了连接',
      'req.stream': '流式',
      'req.tokensTitle': '输入 {p}，输出 {c}，合计 {t}',
      'req.attemptsTo': '{n} → 目标 {t}',
      'req.attemptsTitle': '尝试 {n} 次；由目标 {t} 应答',
    },
  };

  const LANG_KEY = 'apiproxy.lang';
  const THEME_KEY = 'apiproxy.theme';
  const root = document.documentElement;

  // Storage throws in some privacy modes; the pages then simply forget.
  function load(store, key) {
    try { return window[store].getItem(key); } catch (e) { return null; }
  }
  function save(store, key, value) {
    try {
      if (value === null) window[store].removeItem(key);
      else window[store].setItem(key, value);
    } catch (e) { /* not remembered */ }
  }

  function browserLang() {
    const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || 'en'];
    for (const l of langs) {
      const s = String(l).toLowerCase();
      if (s.startsWith('zh')) return 'zh';
      if (s.startsWith('en')) return 'en';
    }
    return 'en';
  }

  let lang = load('localStorage', LANG_KEY);
  if (!STRINGS[lang]) lang = browserLang();
  root.lang = lang === 'zh' ? 'zh-CN' : 'en';

  const darkQuery = window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;
  function effectiveTheme() {
    const stored = load('localStorage', THEME_KEY);
    if (stored === 'light' || stored === 'dark') return stored;
    return darkQuery && darkQuery.matches ? 'dark' : 'light';
  }
  function applyTheme() {
    root.dataset.theme = effectiveTheme();
    document.querySelectorAll('[data-theme-toggle]').forEach((b) => {
      b.setAttribute('aria-pressed', String(root.dataset.theme === 'dark'));
    });
  }
  applyTheme();
  if (darkQuery) {
    const follow = () => applyTheme();
    if (darkQuery.addEventListener) darkQuery.addEventListener('change', follow);
    else if (darkQuery.addListener) darkQuery.addListener(follow);
  }

  const listeners = [];

  // templates: each string with {vars}, split once into its literal parts
  // (even indexes) and the names between them (odd indexes), so that a
  // large render (a few hundred "{n} s ago") runs no regular expression
  // per call.
  const templates = new Map();
  function t(key, vars) {
    let s = STRINGS[lang][key];
    if (s === undefined) s = STRINGS.en[key];
    if (s === undefined) return key;
    if (!vars) return s;
    let parts = templates.get(s);
    if (parts === undefined) {
      parts = s.split(/\{(\w+)\}/);
      templates.set(s, parts);
    }
    let out = parts[0];
    for (let i = 1; i < parts.length; i += 2) {
      const k = parts[i];
      out += (k in vars ? String(vars[k]) : '{' + k + '}') + parts[i + 1];
    }
    return out;
  }

  function applyI18n(scope) {
    const el = scope || document;
    el.querySelectorAll('[data-i18n]').forEach((n) => { n.textContent = t(n.dataset.i18n); });
    el.querySelectorAll('[data-i18n-placeholder]').forEach((n) => { n.placeholder = t(n.dataset.i18nPlaceholder); });
    el.querySelectorAll('[data-i18n-aria-label]').forEach((n) => { n.setAttribute('aria-label', t(n.dataset.i18nAriaLabel)); });
    el.querySelectorAll('[data-i18n-title]').forEach((n) => { n.title = t(n.dataset.i18nTitle); });
    document.querySelectorAll('[data-set-lang]').forEach((b) => {
      b.setAttribute('aria-pressed', String(b.dataset.setLang === lang));
    });
  }

  function setLang(next) {
    if (!STRINGS[next] || next === lang) return;
    lang = next;
    byId = Object.create(null); // the named formatters were of the other language
    save('localStorage', LANG_KEY, next);
    root.lang = next === 'zh' ? 'zh-CN' : 'en';
    applyI18n(document);
    document.querySelectorAll('button.copy').forEach((b) => {
      if (!b.classList.contains('copied') && !b.classList.contains('failed')) labelCopy(b);
    });
    listeners.forEach((fn) => fn(next));
  }

  // el('td', {className: 'num', title: x}, 'text', childNode, …) builds an
  // element: properties are assigned (never parsed as markup), strings
  // become text nodes.
  function el(tag, props, ...children) {
    const n = document.createElement(tag);
    if (props) {
      // for…in, not Object.entries: no array per call (a large render
      // makes thousands of elements).
      for (const k in props) {
        const v = props[k];
        if (v === undefined || v === null) continue;
        if (k === 'dataset') Object.assign(n.dataset, v);
        else if (k.startsWith('aria-') || k === 'role' || k === 'for') n.setAttribute(k, v);
        else n[k] = v;
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      n.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return n;
  }

  // setText changes a node's text only when it differs, so a refresh does
  // not disturb a selection or cause needless layout.
  function setText(n, s) {
    s = String(s);
    if (n.textContent !== s) n.textContent = s;
  }

  function announce(msg) {
    const a = document.getElementById('announcer');
    if (!a) return;
    a.textContent = '';
    // A fresh text node makes screen readers repeat an identical message.
    window.setTimeout(() => { a.textContent = msg; }, 30);
  }

  // copyText copies with the async Clipboard API where the page is a
  // secure context (https, localhost), and with a selected textarea and
  // execCommand on plain http, where navigator.clipboard does not exist.
  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(text); return true; } catch (e) { /* fall back */ }
    }
    const active = document.activeElement;
    const ta = el('textarea', { value: text, readOnly: true, className: 'offscreen', tabIndex: -1, 'aria-hidden': 'true' });
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
    ta.remove();
    if (active && active.focus) active.focus();
    return ok;
  }

  // copyButton returns a Copy button for the value getText() returns when
  // clicked, showing "Copied" on the button for a moment. what names the
  // copied thing for screen readers: a string key of STRINGS when whatKey
  // is set, else literal text (a prefix).
  function copyButton(getText, what, whatKey) {
    const b = el('button', { type: 'button', className: 'copy', dataset: whatKey ? { whatKey: what } : { what } });
    return wireCopy(b, getText);
  }
  // wireCopy makes b, a button.copy whose data-what or data-what-key is
  // set (one cloned from a prototype row, say), a Copy button for getText().
  function wireCopy(b, getText) {
    labelCopy(b);
    let timer = 0;
    b.addEventListener('click', async () => {
      const text = getText();
      const ok = await copyText(text);
      window.clearTimeout(timer);
      b.textContent = ok ? t('copied') : t('copy.failed');
      b.classList.toggle('copied', ok);
      b.classList.toggle('failed', !ok);
      if (ok) announce(t('copy.announce', { text }));
      timer = window.setTimeout(() => { b.classList.remove('copied', 'failed'); labelCopy(b); }, 1600);
    });
    return b;
  }
  function labelCopy(b) {
    setText(b, t('copy'));
    b.setAttribute('aria-label', t('copy.label', { what: b.dataset.whatKey ? t(b.dataset.whatKey) : b.dataset.what }));
  }

  // Dates and numbers follow the reader's locale (SPEC §5), never a region
  // fixed per page language: a US reader gets 11/4 for 4 November, a
  // British one 04/11. formatLocales is the browser's languages that are in
  // the page's language (en-US, en-GB, en-IN… for English; zh-CN, zh-TW…
  // for Chinese), most preferred first. When none is: a reader who picked
  // the other page language with the toggle gets that language's own
  // conventions (Intl's default region for it), and a reader whose
  // languages the page has no strings for (de-DE, reading the English
  // page) keeps those languages' conventions.
  function formatLocales() {
    const langs = (navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language])
      .filter((l) => typeof l === 'string' && l !== '');
    const same = langs.filter((l) => l.toLowerCase().split('-')[0] === lang);
    if (same.length) return same;
    if (lang !== browserLang()) return [lang];
    return langs.concat(lang);
  }

  // Intl formatters are costly to build (a table of 200 endpoints formats
  // a few thousand numbers), so each one is made once per language, and
  // again when the browser's languages change.
  const formatters = new Map();
  // byId: the formatters callers name (id), of the current language, read
  // without building a key string: a large render formats thousands of
  // numbers.
  let byId = Object.create(null);
  window.addEventListener('languagechange', () => { formatters.clear(); byId = Object.create(null); });
  // id names opts when the caller has a fixed name for them: the number
  // formatters, called thousands of times a render, then skip
  // JSON.stringify of their options on every call.
  function cached(kind, opts, id) {
    if (id !== undefined) {
      const f = byId[id];
      if (f !== undefined) return f;
    }
    const key = lang + '|' + kind + '|' + (id || JSON.stringify(opts));
    let f = formatters.get(key);
    if (!f) {
      const make = (locs) => (kind === 'date' ? new Intl.DateTimeFormat(locs, opts) : new Intl.NumberFormat(locs, opts));
      try {
        f = make(formatLocales());
      } catch (e) {
        f = make(lang); // a malformed language tag from the browser
      }
      formatters.set(key, f);
    }
    if (id !== undefined) byId[id] = f;
    return f;
  }
  function num(v) { const n = Number(v); return Number.isFinite(n) ? n : 0; }
  const INT_OPTS = { maximumFractionDigits: 0 };
  const COMPACT_OPTS = { notation: 'compact', maximumFractionDigits: 1 };
  const TIME_OPTS = { hour: '2-digit', minute: '2-digit', second: '2-digit' };
  const DATETIME_OPTS = { dateStyle: 'medium', timeStyle: 'medium' };
  const DEC_OPTS = [0, 1, 2, 3].map((d) => ({ minimumFractionDigits: d, maximumFractionDigits: d }));
  // plainInts is whether the int formatter writes a whole number from 0
  // to 999 as its ASCII digits alone (every digit is tried: Arabic-Indic or
  // Devanagari digits fail), as String does: a table's counts are mostly
  // such, and String is many times faster than format. Grouping starts at
  // 1000 in every locale, so larger ones always go to the formatter.
  let plainInts = null; // null: not known yet for this formatter
  let plainFor = null;  // the formatter plainInts is of
  function intOf(n) {
    const f = cached('num', INT_OPTS, 'int');
    if (plainFor !== f) {
      plainFor = f;
      plainInts = f.format(987) === '987' && f.format(654) === '654' && f.format(321) === '321' && f.format(0) === '0';
    }
    // Not -0, which format writes "-0".
    if (plainInts && Number.isInteger(n) && n < 1000 && (n > 0 || Object.is(n, 0))) return String(n);
    return f.format(n);
  }
  const fmt = {
    int: (v) => intOf(num(v)),
    compact: (v) => {
      const n = num(v);
      return Math.abs(n) < 10000 ? fmt.int(n) : cached('num', COMPACT_OPTS, 'compact').format(n);
    },
    // No fraction digits is what int shows: one formatter for both.
    dec: (v, d) => (d === 0 ? fmt.int(v) : cached('num', DEC_OPTS[d] || { minimumFractionDigits: d, maximumFractionDigits: d }, 'dec' + d).format(num(v))),
    ms: (v) => {
      const n = num(v);
      if (n >= 1000) return fmt.dec(n / 1000, n >= 10000 ? 1 : 2) + ' s';
      return fmt.dec(n, n < 10 ? 1 : 0) + ' ms';
    },
    // duration shows the two largest units: 3d 4h, 2h 5m, 5m 17s, 17s.
    duration: (secs) => {
      const total = Math.max(0, Math.floor(num(secs)));
      const units = [['dur.d', 86400], ['dur.h', 3600], ['dur.m', 60], ['dur.s', 1]];
      let i = units.findIndex(([, size]) => total >= size);
      if (i < 0) i = units.length - 1;
      const parts = [];
      let rest = total;
      for (const [key, size] of units.slice(i, i + 2)) {
        const n = Math.floor(rest / size);
        rest -= n * size;
        parts.push(t(key, { n }));
      }
      return parts.join(lang === 'zh' ? '' : ' ');
    },
    ago: (unix, nowMs) => {
      const s = Math.max(0, Math.round((nowMs || Date.now()) / 1000 - num(unix)));
      if (s < 60) return t('ago.s', { n: s });
      if (s < 3600) return t('ago.m', { n: Math.floor(s / 60) });
      if (s < 86400) return t('ago.h', { n: Math.floor(s / 3600) });
      return t('ago.d', { n: Math.floor(s / 86400) });
    },
    // date formats a Date with Intl.DateTimeFormat options; id, when the
    // caller gives one, names opts (as for the numbers: no JSON of them per
    // call).
    date: (d, opts, id) => cached('date', opts, id === undefined ? undefined : 'date.' + id).format(d),
    time: (ms) => fmt.date(new Date(ms), TIME_OPTS, 'time'),
    dateTime: (unix) => fmt.date(new Date(num(unix) * 1000), DATETIME_OPTS, 'dateTime'),
  };

  window.ui = {
    t, el, setText, announce, copyText, copyButton, wireCopy, fmt, num,
    get lang() { return lang; },
    onLangChange(fn) { listeners.push(fn); },
    session: { get: (k) => load('sessionStorage', k), set: (k, v) => save('sessionStorage', k, v) },
  };

  document.addEventListener('DOMContentLoaded', () => {
    applyI18n(document);
    applyTheme();
    document.querySelectorAll('[data-set-lang]').forEach((b) => {
      b.addEventListener('click', () => setLang(b.dataset.setLang));
    });
    document.querySelectorAll('[data-theme-toggle]').forEach((b) => {
      b.addEventListener('click', () => {
        const next = effectiveTheme() === 'dark' ? 'light' : 'dark';
        const system = darkQuery && darkQuery.matches ? 'dark' : 'light';
        // Back to what the system prefers: follow it again from now on.
        save('localStorage', THEME_KEY, next === system ? null : next);
        applyTheme();
      });
    });
  });
})();
