/* personadrift transcript and judge browser. Static: no server, no network, no dependencies.
 * The study index (window.PD_INDEX) is inline; each conversation and each persona's judge audit
 * is a small script under data/ that calls PD.receive(key, data), added when a view needs it
 * (fetch() of file:// URLs is blocked, script tags are not). Views are chosen by the URL hash,
 * so every view, filter and sort is a link. Model text is only ever set as text, never as HTML. */
(function () {
  'use strict';
  const D = window.PD_INDEX;
  const PD = (window.PD = window.PD || {});
  const cache = {}, waiting = {};
  const PAGE = 50;
  const PALETTE = ['#1f5fbf', '#b54708', '#067647', '#9e1f63', '#6941c6', '#0e7090', '#c11574',
    '#4e5ba6', '#93370d', '#344054', '#3b7c0f', '#a15c07'];

  PD.receive = function (key, data) {
    cache[key] = data;
    (waiting[key] || []).forEach((w) => w.resolve(data));
    delete waiting[key];
  };

  function load(key) {
    if (cache[key]) return Promise.resolve(cache[key]);
    return new Promise((resolve, reject) => {
      if (waiting[key]) { waiting[key].push({ resolve, reject }); return; }
      waiting[key] = [{ resolve, reject }];
      const s = document.createElement('script');
      s.src = 'data/' + key + '.js';
      s.onerror = () => {
        (waiting[key] || []).forEach((w) => w.reject(new Error('data file data/' + key + '.js could not be loaded')));
        delete waiting[key];
      };
      document.head.appendChild(s);
    });
  }

  // ---------- small DOM helpers ----------
  function add(e, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      e.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    return add(e, kids);
  }
  const SVGNS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    return add(e, kids);
  }
  function link(view, args, q) {
    const path = [view].concat(args || []).map((x) => encodeURIComponent(String(x))).join('/');
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(q || {})) if (v !== '' && v !== null && v !== undefined) qs.set(k, v);
    const s = qs.toString();
    return '#/' + (view === 'index' && !(args || []).length ? '' : path) + (s ? '?' + s : '');
  }
  function parseHash() {
    const h = location.hash.replace(/^#\/?/, '');
    const cut = h.indexOf('?');
    const path = cut < 0 ? h : h.slice(0, cut);
    const q = {};
    new URLSearchParams(cut < 0 ? '' : h.slice(cut + 1)).forEach((v, k) => { q[k] = v; });
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    return { view: parts[0] || 'index', args: parts.slice(1), q };
  }
  const fmt = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v) ? '\u2013' : Number(v).toFixed(d));
  function scoreBadge(v, extra) {
    const bg = v === null || v === undefined ? '#e4e7ec' : 'hsl(' + Math.round(Math.max(0, Math.min(1, v)) * 120) + ',70%,84%)';
    return el('span', Object.assign({ class: 'score', style: 'background:' + bg, 'data-score': v === null || v === undefined ? '' : String(v) }, extra || {}), fmt(v));
  }
  const flag = (text, title, cls) => el('span', { class: 'flag' + (cls ? ' ' + cls : ''), title }, text);
  const personaName = (i) => D.personas[i].id;
  const settingName = (i) => D.settings[i].name;
  const settingIdx = (name) => D.settings.findIndex((s) => s.name === name);
  const settingLabel = (s) => s.name + (s.method && s.method !== 'none' ? ' (' + s.method + (s.value !== null && s.value !== undefined ? ' = ' + s.value : '') + ')' : '');
  const colour = (i) => PALETTE[i % PALETTE.length];

  // ---------- the index, decoded once ----------
  const C = D.convs;
  const ROWS = C.c.map((c, i) => {
    const r = { i, s: C.s[i], c, a: C.a[i], u: C.u[i], t: C.t[i], as: C.as[i], us: C.us[i], f: C.f[i], n: C.n[i] };
    const idx = r.as.map((v, j) => (v === null ? -1 : j)).filter((j) => j >= 0);
    r.first = idx.length ? r.as[idx[0]] : null;
    r.firstRound = idx.length ? D.rounds[idx[0]] : null;
    r.last = idx.length ? r.as[idx[idx.length - 1]] : null;
    r.change = idx.length > 1 ? r.last - r.first : null;
    r.compliant = r.first !== null && r.first >= D.compliant;
    return r;
  });
  const BY_KEY = new Map(ROWS.map((r) => [r.s + '/' + r.c, r]));

  function meanBy(rows, col) { // per round: mean over conversations of each conversation's mean
    return D.rounds.map((_, j) => {
      const v = rows.map((r) => r[col][j]).filter((x) => x !== null);
      return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
    });
  }
  const DRIFT = D.settings.map((_, s) => {
    const rows = ROWS.filter((r) => r.s === s);
    return { agent: meanBy(rows, 'as'), user: meanBy(rows, 'us'), n: rows.length };
  });

  // ---------- charts ----------
  function points(values, w, h, pad) {
    const n = D.rounds.length;
    return values.map((v, j) => (v === null ? null : [pad + (n > 1 ? (j * (w - 2 * pad)) / (n - 1) : (w - 2 * pad) / 2), h - pad - v * (h - 2 * pad)]));
  }
  function path(pts) {
    let d = '', pen = false;
    for (const p of pts) {
      if (!p) { pen = false; continue; }
      d += (pen ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1);
      pen = true;
    }
    return d;
  }
  function sparkline(as, us, w = 120, h = 30) {
    const title = D.rounds.map((r, j) => 'round ' + r + ': stability ' + fmt(as[j]) + ', adoption ' + fmt(us[j])).join('\n');
    const pa = points(as, w, h, 3), pu = points(us, w, h, 3);
    return svg('svg', { class: 'spark', width: w, height: h, viewBox: '0 0 ' + w + ' ' + h, 'data-agent': JSON.stringify(as) },
      svg('title', {}, title),
      svg('line', { class: 'axis', x1: 3, x2: w - 3, y1: h - 3, y2: h - 3, 'stroke-opacity': 0.4 }),
      svg('path', { class: 'user', d: path(pu), fill: 'none', 'stroke-width': 1.2 }),
      svg('path', { class: 'agent', d: path(pa), fill: 'none', 'stroke-width': 1.6 }),
      pa.filter(Boolean).map((p) => svg('circle', { class: 'agent', cx: p[0], cy: p[1], r: 1.6, fill: 'none', stroke: 'currentColor' })));
  }
  function driftChart(kind, title) {
    const w = 300, h = 190, pad = 28;
    const g = svg('svg', { class: 'chart', width: w, height: h, viewBox: '0 0 ' + w + ' ' + h, 'data-kind': kind });
    add(g, [svg('text', { x: pad, y: 12 }, title),
      svg('line', { class: 'axis', x1: pad, x2: pad, y1: pad, y2: h - pad }),
      svg('line', { class: 'axis', x1: pad, x2: w - pad, y1: h - pad, y2: h - pad })]);
    for (const v of [0, 0.5, 1]) add(g, [svg('text', { x: 4, y: h - pad - v * (h - 2 * pad) + 3 }, v.toFixed(1))]);
    const xs = points(D.rounds.map(() => 0), w, h, pad);
    D.rounds.forEach((r, j) => add(g, [svg('text', { x: xs[j][0] - 3, y: h - pad + 14 }, String(r))]));
    add(g, [svg('text', { x: w / 2 - 15, y: h - 4 }, 'round')]);
    DRIFT.forEach((d, s) => {
      const pts = points(d[kind], w, h, pad);
      add(g, [svg('path', { d: path(pts), fill: 'none', stroke: colour(s), 'stroke-width': 2 })]);
      pts.forEach((p, j) => {
        if (!p) return;
        const href = link('index', [], { setting: settingName(s), sort: (kind === 'agent' ? 'a' : 'u') + D.rounds[j], dir: 'asc' });
        add(g, [svg('a', { href }, svg('circle', { cx: p[0], cy: p[1], r: 4, fill: colour(s), 'data-setting': settingName(s), 'data-round': D.rounds[j] },
          svg('title', {}, settingName(s) + ', round ' + D.rounds[j] + ': ' + fmt(d[kind][j], 3) + ' (' + d.n + ' conversations); click to list them, lowest first')))]);
      });
    });
    return g;
  }
  function histogram(hist, w = 120, h = 30) {
    const max = Math.max(1, ...hist), bw = w / hist.length;
    return svg('svg', { class: 'hist', width: w, height: h + 12, viewBox: '0 0 ' + w + ' ' + (h + 12), 'data-hist': JSON.stringify(hist) },
      svg('title', {}, hist.map((n, i) => '[' + (i / hist.length).toFixed(1) + ', ' + ((i + 1) / hist.length).toFixed(1) + (i === hist.length - 1 ? ']' : ')') + ': ' + n).join('\n')),
      hist.map((n, i) => svg('rect', { x: i * bw + 0.5, width: bw - 1, y: h - (n / max) * h, height: (n / max) * h })),
      svg('text', { x: 0, y: h + 11 }, '0'), svg('text', { x: w - 6, y: h + 11 }, '1'));
  }

  // ---------- views ----------
  const app = document.getElementById('app');

  function filtered(q) {
    const s = q.setting ? settingIdx(q.setting) : -1;
    const pid = q.persona ? D.personas.findIndex((p) => p.id === q.persona) : -1;
    const role = q.role || 'either';
    let rows = ROWS.filter((r) => (s < 0 || r.s === s)
      && (!q.category || D.personas[r.a].category === q.category)
      && (pid < 0 || (role !== 'user' && r.a === pid) || (role !== 'agent' && r.u === pid))
      && (!q.compliant || (q.compliant === 'yes') === r.compliant)
      && (!q.flag || (r.f & D.flags[q.flag]) !== 0));
    if (q.setting && s < 0) rows = [];
    if (q.persona && pid < 0) rows = [];
    const key = q.sort || 'conv';
    let val;
    if (key === 'conv') val = (r) => r.c * 1000 + r.s;
    else if (key === 'change' || key === 'first' || key === 'last') val = (r) => r[key];
    else {
      const j = D.rounds.indexOf(Number(key.slice(1)));
      val = (r) => (j < 0 ? null : r[key[0] === 'a' ? 'as' : 'us'][j]);
    }
    const dir = q.dir === 'desc' ? -1 : 1;
    return rows.map((r) => [val(r), r]).sort((x, y) => {
      if (x[0] === null) return y[0] === null ? x[1].i - y[1].i : 1;
      if (y[0] === null) return -1;
      return (x[0] - y[0]) * dir || x[1].i - y[1].i;
    }).map((x) => x[1]);
  }

  function flagsOf(f) {
    return [f & D.flags.length ? flag('max tokens', 'a reply or probe answer stopped at max_new_tokens') : null,
      f & D.flags.context ? flag('context', 'a prompt was truncated or overflowed the context limit') : null,
      f & D.flags.judge_error ? flag('judge error', 'a judge raised on one of the answers (NaN score)') : null,
      f & D.flags.no_tokens ? flag('no token info', 'older transcript: no token counts or finish reasons recorded', 'info') : null];
  }

  function viewIndex(q) {
    const rows = filtered(q);
    const page = Math.max(0, Math.min(Number(q.page || 0), Math.floor(Math.max(0, rows.length - 1) / PAGE)));
    const set = (patch) => { location.hash = link('index', [], Object.assign({}, q, { page: '' }, patch)); };
    const sel = (name, opts, label) => el('label', {}, label, el('select', { name, 'data-filter': name, onchange: (e) => set({ [name]: e.target.value }) },
      opts.map(([v, t]) => el('option', { value: v, selected: (q[name] || '') === v }, t))));
    const cats = [...new Set(D.personas.map((p) => p.category).filter(Boolean))].sort();
    const sortOpts = [['conv', 'conversation'], ['change', 'change (last - first round)'], ['first', 'first-round stability'], ['last', 'last-round stability']]
      .concat(D.rounds.map((r) => ['a' + r, 'stability at round ' + r]), D.rounds.map((r) => ['u' + r, 'adoption at round ' + r]));
    const firstRound = D.rounds.length ? D.rounds[0] : '?';
    add(app, [
      el('h1', {}, 'Study ', el('code', {}, D.study || '?'), D.model ? [' \u00b7 model ', el('code', {}, D.model)] : null),
      el('p', { id: 'pool' }, 'Personas: ', el('b', {}, D.personas.filter((p) => p.kept === true).length + ' kept'), ', ',
        D.personas.filter((p) => p.kept === false).length + ' dropped', D.pool_rule ? ' (rule: ' + D.pool_rule + ')' : '', ' \u2014 ',
        el('a', { href: link('personas') }, 'which, and why'), '.'),
      el('div', { class: 'overview' },
      el('div', { class: 'card' },
        el('h2', {}, 'Settings'),
        el('table', { id: 'settings' },
          el('tr', {}, el('th', {}, 'setting'), el('th', {}, 'family'), el('th', {}, 'method'), el('th', {}, 'value'), el('th', { class: 'num' }, 'conversations'),
            el('th', { class: 'num' }, 'stability, first round'), el('th', { class: 'num' }, 'stability, last round'),
            el('th', { class: 'num', title: 'conversations the context policy stopped before the last round (per round in the tooltip)' }, 'stopped early'), el('th', {}, 'curve')),
          D.settings.map((s, i) => {
            const a = DRIFT[i].agent.filter((x) => x !== null);
            return el('tr', { 'data-setting': s.name },
              el('td', { class: 'nowrap' }, el('span', { class: 'swatch', style: 'background:' + colour(i) }), el('a', { href: link('index', [], { setting: s.name }) }, s.name)),
              el('td', {}, s.family || ''), el('td', {}, s.method || ''), el('td', {}, s.value === null || s.value === undefined ? '' : String(s.value)),
              el('td', { class: 'num' }, String(s.n)), el('td', { class: 'num' }, fmt(a[0])), el('td', { class: 'num' }, fmt(a[a.length - 1])),
              el('td', { class: 'num stopped', title: D.rounds.map((r, j) => 'round ' + r + ': ' + s.running[j] + ' running, ' + s.stopped[j] + ' stopped').join('\n') },
                String(s.stopped.length ? Math.max(...s.stopped) : 0)),
              el('td', {}, sparkline(DRIFT[i].agent, DRIFT[i].user)));
          })),
        el('p', { class: 'muted small' }, 'Judge scores in [0, 1]. Stability: the agent answers its own persona\u2019s probe (solid); adoption: it answers the user persona\u2019s probe (dashed). ',
          'Curves: per round, the mean over conversations of each conversation\u2019s mean over probe samples (the drift figure\u2019s points, without CIs).')),
      el('div', { class: 'card' },
        el('h2', {}, 'Drift per round'), el('p', { class: 'muted small' }, 'Click a point to list the conversations behind it, lowest score first.'),
        el('div', { class: 'charts' }, driftChart('agent', 'stability (own persona)'), driftChart('user', 'adoption (user persona)')),
        el('div', { class: 'legend small' }, D.settings.map((s, i) => el('span', {}, el('span', { class: 'swatch', style: 'background:' + colour(i) }), s.name))))),
      el('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
        sel('setting', [['', 'all']].concat(D.settings.map((s) => [s.name, s.name])), 'setting'),
        sel('category', [['', 'all']].concat(cats.map((c) => [c, c])), 'agent category'),
        sel('persona', [['', 'all']].concat(D.personas.map((p) => [p.id, p.id])), 'persona'),
        sel('role', [['', 'as agent or user'], ['agent', 'as agent'], ['user', 'as user']], 'persona role'),
        sel('compliant', [['', 'any'], ['yes', 'yes'], ['no', 'no']], 'started compliant (round-' + firstRound + ' stability \u2265 ' + D.compliant + ')'),
        sel('flag', [['', 'any'], ['length', 'hit max tokens'], ['context', 'context limit'], ['judge_error', 'judge error'], ['no_tokens', 'no token info']], 'marker'),
        sel('sort', sortOpts, 'sort by'),
        sel('dir', [['', 'ascending'], ['desc', 'descending']], 'order'),
        el('button', { type: 'button', onclick: () => { location.hash = '#/'; } }, 'reset')),
      el('p', { id: 'count' }, el('b', {}, String(rows.length)), ' of ' + ROWS.length + ' conversations'),
      pager(rows.length, page, set),
      el('table', { id: 'conversations' },
        el('tr', {}, el('th', {}, '#'), el('th', {}, 'setting'), el('th', {}, 'agent persona'), el('th', {}, 'user persona'), el('th', {}, 'topic'),
          el('th', {}, 'per round'), el('th', { class: 'num' }, 'first'), el('th', { class: 'num' }, 'last'), el('th', { class: 'num' }, 'change'), el('th', {}, 'markers'), el('th', {}, '')),
        rows.slice(page * PAGE, (page + 1) * PAGE).map((r) => el('tr', { class: 'conv-row', 'data-setting': settingName(r.s), 'data-conv': r.c, 'data-compliant': r.compliant ? 'yes' : 'no' },
          el('td', {}, el('a', { href: link('conv', [settingName(r.s), r.c]) }, String(r.c))),
          el('td', {}, settingName(r.s)),
          el('td', {}, personaName(r.a), el('div', { class: 'muted small' }, D.personas[r.a].category || '')),
          el('td', {}, personaName(r.u), el('div', { class: 'muted small' }, D.personas[r.u].category || '')),
          el('td', { class: 'small' }, D.topics[r.t]),
          el('td', {}, sparkline(r.as, r.us)),
          el('td', { class: 'num' }, scoreBadge(r.first)), el('td', { class: 'num' }, scoreBadge(r.last)),
          el('td', { class: 'num' }, fmt(r.change)), el('td', {}, flagsOf(r.f)),
          el('td', {}, el('a', { href: link('compare', [r.c]), title: 'this conversation under every setting' }, 'compare'))))),
      pager(rows.length, page, set),
    ]);
    ready('index');
  }

  function pager(n, page, set) {
    const last = Math.floor(Math.max(0, n - 1) / PAGE);
    if (last === 0) return null;
    return el('div', { class: 'pager' },
      el('button', { type: 'button', disabled: page === 0, onclick: () => set({ page: page - 1 }) }, '\u2190 previous'),
      el('span', {}, 'page ' + (page + 1) + ' of ' + (last + 1)),
      el('button', { type: 'button', disabled: page === last, onclick: () => set({ page: page + 1 }) }, 'next \u2192'));
  }

  function personaCard(p, role, note) {
    const row = D.personas.find((x) => x.id === p.id) || {};
    return el('div', { class: 'card persona ' + role, 'data-persona': p.id },
      el('h3', {}, role === 'agent' ? 'Agent persona' : 'User persona', ': ', el('a', { href: link('judge', [p.id]) }, p.id),
        ' ', el('span', { class: 'muted' }, p.category || '')),
      note ? el('p', { class: 'muted small' }, note) : null,
      el('dl', { class: 'kv' },
        el('dt', {}, 'system prompt'), el('dd', { class: 'text' }, p.system_prompt || ''),
        el('dt', {}, 'probe'), el('dd', { class: 'text' }, p.probe || ''),
        el('dt', {}, 'judge'), el('dd', {}, el('code', { class: 'judge-name' }, p.judge || '?'), ' ', el('code', { class: 'judge-args' }, JSON.stringify(p.judge_args || {}))),
        el('dt', {}, 'calibration'), el('dd', {}, row.kept === null || row.kept === undefined ? 'not in the pool file'
          : (row.kept ? 'kept' : 'dropped') + ' \u00b7 round-0 adherence ' + fmt(row.adherence) + (row.reason ? ' \u00b7 ' + row.reason : ''))));
  }

  function tokenInfo(x, cap) {
    const out = [];
    if (x.prompt_tokens !== null && x.prompt_tokens !== undefined) out.push('prompt ' + x.prompt_tokens + ' tokens');
    if (x.new_tokens !== null && x.new_tokens !== undefined) out.push('reply ' + x.new_tokens + (cap ? ' / ' + cap : '') + ' tokens');
    if (x.finish_reason) out.push('finish: ' + x.finish_reason);
    return out.length ? el('span', { class: 'tokens' }, out.join(' \u00b7 ')) : null;
  }
  function markers(x) {
    return [x.finish_reason === 'length' ? flag('hit max_new_tokens', 'the reply stopped at the max_new_tokens cap, mid-sentence if need be') : null,
      x.context && x.context !== 'ok' ? flag('context ' + x.context, 'the prompt was ' + x.context + ' by the context-length policy') : null];
  }

  function probeBlock(p, conv) {
    const persona = conv[p.kind];
    return el('div', { class: 'probe ' + p.kind, 'data-round': p.round, 'data-kind': p.kind },
      el('div', {}, el('b', {}, 'Round ' + p.round + ' probe'), ' \u00b7 ',
        p.kind === 'agent' ? 'agent\u2019s own persona (stability)' : 'user persona ' + persona.id + ' (adoption)',
        ' \u00b7 judge ', el('code', {}, persona.judge || '?'), ' ', markers(p)),
      el('div', { class: 'muted text' }, p.question),
      p.samples.map((s, i) => el('div', { class: 'sample', 'data-sample': i },
        el('div', {}, scoreBadge(s.score, { class: 'score sample-score' })),
        el('div', {}, el('div', { class: 'text' }, s.text === '' ? el('i', { class: 'muted' }, '(empty answer)') : s.text),
          el('div', { class: 'meta' }, 'sample ' + i, ' ', tokenInfo(s, D.caps.probe_max_new_tokens), ' ', markers(s),
            s.echo ? flag('echoes the question', 'the answer repeats the probe question', 'info') : null,
            s.error ? el('span', { class: 'error' }, ' judge error: ' + s.error) : null)))));
  }

  function turnBlock(t, i) {
    const label = t.speaker === 'topic' ? 'Topic' : t.speaker === 'agent' ? 'Agent' : 'User bot';
    const rnd = t.speaker === 'agent' ? 'round ' + (i + 1) / 2 : t.speaker === 'user' ? 'before round ' + (i / 2 + 1) : '';
    return el('div', { class: 'turn', 'data-turn': i, 'data-speaker': t.speaker },
      el('div', {}, el('div', { class: 'speaker ' + t.speaker }, label), el('div', { class: 'muted small' }, rnd)),
      el('div', {}, el('div', { class: 'text' }, t.text),
        t.speaker === 'topic' ? null : el('div', { class: 'meta' }, tokenInfo(t, D.caps.max_new_tokens), ' ', markers(t))));
  }

  function dialog(conv) {
    const out = [];
    const probesAt = (t) => conv.probes.filter((p) => p.turn === t);
    conv.turns.forEach((t, i) => {
      out.push(probesAt(i).map((p) => probeBlock(p, conv)));
      out.push(turnBlock(t, i));
    });
    out.push(conv.probes.filter((p) => p.turn >= conv.turns.length).map((p) => probeBlock(p, conv)));
    return out;
  }

  function roundTable(conv) {
    const rounds = [...new Set(conv.probes.map((p) => p.round))].sort((a, b) => a - b);
    const mean = (r, k) => {
      const v = conv.probes.filter((p) => p.round === r && p.kind === k).flatMap((p) => p.samples.map((s) => s.score)).filter((x) => x !== null);
      return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
    };
    return el('table', { class: 'rounds' },
      el('tr', {}, el('th', {}, 'round'), rounds.map((r) => el('th', { class: 'num' }, String(r)))),
      el('tr', {}, el('td', {}, 'stability'), rounds.map((r) => el('td', { class: 'num' }, scoreBadge(mean(r, 'agent'))))),
      el('tr', {}, el('td', {}, 'adoption'), rounds.map((r) => el('td', { class: 'num' }, scoreBadge(mean(r, 'user'))))));
  }

  function viewConv(args) {
    const s = settingIdx(args[0]), c = Number(args[1]);
    const row = BY_KEY.get(s + '/' + c);
    if (!row) return fail('No conversation ' + args[1] + ' under setting ' + args[0] + ' in this study.');
    app.appendChild(el('p', { class: 'muted' }, 'loading conversation\u2026'));
    load('c/' + s + '/' + c).then((conv) => {
      app.textContent = '';
      const same = ROWS.filter((r) => r.s === s);
      const k = same.indexOf(row);
      const others = ROWS.filter((r) => r.c === c && r.s !== s);
      add(app, [
        el('h1', {}, 'Conversation ' + c + ' \u00b7 ', el('code', {}, settingLabel(D.settings[s]))),
        el('p', {},
          k > 0 ? el('a', { href: link('conv', [args[0], same[k - 1].c]) }, '\u2190 previous') : null, ' ',
          k < same.length - 1 ? el('a', { href: link('conv', [args[0], same[k + 1].c]) }, 'next \u2192') : null, ' \u00b7 ',
          el('a', { href: link('compare', [c]), id: 'compare-link' }, 'this conversation under every setting, side by side'),
          others.length ? [' \u00b7 other settings: ', others.map((r) => [el('a', { href: link('conv', [settingName(r.s), c]) }, settingName(r.s)), ' '])] : null),
        el('div', { class: 'card' },
          el('dl', { class: 'kv' },
            el('dt', {}, 'topic'), el('dd', {}, conv.topic),
            el('dt', {}, 'seed'), el('dd', {}, String(conv.seed ?? '?'), conv.fingerprint ? el('span', { class: 'muted small' }, ' \u00b7 fingerprint ' + conv.fingerprint.slice(0, 12)) : null),
            el('dt', {}, 'caps'), el('dd', {}, 'max_new_tokens ' + (D.caps.max_new_tokens ?? '?') + ' (dialog), ' + (D.caps.probe_max_new_tokens ?? '?') + ' (probes)'),
            el('dt', {}, 'token counts'), el('dd', {}, conv.have_tokens ? 'recorded per turn and per probe answer'
              : 'not recorded (older transcript): no max-token or context markers can be shown'),
            el('dt', {}, 'written'), el('dd', { class: 'small' }, (conv.created || '?') + (conv.git_commit ? ' \u00b7 commit ' + conv.git_commit.slice(0, 10) : ''))),
          el('h3', {}, 'Mean judge score per round'), roundTable(conv)),
        el('div', { class: 'personas' }, personaCard(conv.agent, 'agent'),
          personaCard(conv.user, 'user', conv.user_has_system_prompt === false ? 'The user bot had no system prompt in this setting (length-only control); its persona still defines the adoption probe.' : null)),
        el('h2', {}, 'Dialog, turn by turn, with each probe\u2019s samples and each sample\u2019s own score'),
        el('div', { class: 'card', id: 'dialog' }, dialog(conv)),
      ]);
      ready('conv');
    }, (err) => fail(err.message));
  }

  function viewCompare(args, q) {
    const c = Number(args[0]);
    const all = ROWS.filter((r) => r.c === c).sort((a, b) => a.s - b.s);
    if (!all.length) return fail('No conversation ' + args[0] + ' in this study.');
    const only = q.only ? q.only.split(',') : null; // a chosen subset of settings, in the URL
    const shown = (r) => !only || only.includes(settingName(r.s));
    const rows = all.filter(shown).length ? all.filter(shown) : all;
    const picker = el('p', { class: 'small', id: 'pick' }, 'Settings shown: ', all.map((r) => el('label', { class: 'nowrap' },
      el('input', { type: 'checkbox', value: settingName(r.s), checked: rows.includes(r), onchange: () => {
        const on = [...document.querySelectorAll('#pick input:checked')].map((x) => x.value);
        location.hash = link('compare', [c], { only: on.length === all.length ? '' : on.join(',') });
      } }), settingName(r.s) + ' ')));
    app.appendChild(el('p', { class: 'muted' }, 'loading ' + rows.length + ' settings\u2026'));
    Promise.all(rows.map((r) => load('c/' + r.s + '/' + c))).then((convs) => {
      app.textContent = '';
      const base = convs[0];
      const differs = convs.filter((v) => v.agent.id !== base.agent.id || v.user.id !== base.user.id || v.topic !== base.topic || v.seed !== base.seed);
      const nTurns = Math.max(...convs.map((v) => v.turns.length));
      const body = [];
      const probeKeys = [...new Set(convs.flatMap((v) => v.probes.map((p) => p.turn + '/' + p.round + '/' + p.kind)))]
        .map((k) => k.split('/')).map(([t, r, kind]) => ({ t: +t, r: +r, kind }));
      const probeRows = (t) => probeKeys.filter((k) => k.t === t || (t === nTurns && k.t >= nTurns))
        .sort((a, b) => a.r - b.r || (a.kind > b.kind ? 1 : -1))
        .map((k) => el('tr', {}, el('td', { class: 'rowhead small' }, 'round ' + k.r + ' probe, ' + k.kind),
          convs.map((v) => {
            const p = v.probes.find((x) => x.turn === k.t && x.round === k.r && x.kind === k.kind);
            return el('td', {}, p ? probeBlock(p, v) : el('span', { class: 'muted' }, '\u2013'));
          })));
      for (let t = 0; t <= nTurns; t++) {
        body.push(probeRows(t));
        if (t === nTurns) break;
        body.push(el('tr', {}, el('td', { class: 'rowhead small' }, t === 0 ? 'topic' : (t % 2 ? 'agent' : 'user bot') + ', turn ' + t),
          convs.map((v) => {
            const tt = v.turns[t];
            return el('td', {}, tt ? [el('div', { class: 'text' }, tt.text), t ? el('div', { class: 'meta' }, tokenInfo(tt), ' ', markers(tt)) : null] : el('span', { class: 'muted' }, '\u2013'));
          })));
      }
      add(app, [
        el('h1', {}, 'Conversation ' + c + ' under every setting'),
        el('p', {}, 'Same persona pair, topic and sampling seeds under each setting; only the intervention differs. Agent ',
          el('a', { href: link('judge', [base.agent.id]) }, base.agent.id), ', user ', el('a', { href: link('judge', [base.user.id]) }, base.user.id),
          ', topic \u201c' + base.topic + '\u201d.'),
        picker,
        differs.length ? el('p', { class: 'error' }, 'Warning: ' + differs.map((v) => v.setting.name).join(', ') + ' did not use the same personas, topic or seed as ' + base.setting.name + '.') : null,
        el('div', { class: 'compare' }, el('table', { id: 'compare' },
          el('tr', {}, el('th', { class: 'rowhead' }, ''), convs.map((v, i) => el('th', { 'data-setting': v.setting.name },
            el('a', { href: link('conv', [v.setting.name, c]) }, settingLabel(v.setting)), el('div', {}, sparkline(rows[i].as, rows[i].us, 160, 34))))),
          body)),
      ]);
      ready('compare');
    }, (err) => fail(err.message));
  }

  function viewJudge(args) {
    if (!args.length) return judgeIndex();
    const pid = args[0];
    const idx = D.personas.findIndex((p) => p.id === pid);
    const summary = D.audit.find((a) => a.p === idx);
    if (idx < 0 || !summary) return fail('No judged answers for persona ' + pid + ' in this study.');
    app.appendChild(el('p', { class: 'muted' }, 'loading judge audit\u2026'));
    load('j/' + idx).then((a) => {
      app.textContent = '';
      const p = D.personas[idx];
      const answers = (list, id) => el('div', { id, class: 'card' }, list.length ? list.map((x) => el('div', { class: 'sample' },
        el('div', {}, scoreBadge(x.score, { class: 'score audit-score' })),
        el('div', {}, el('div', { class: 'text' }, x.text === '' ? el('i', { class: 'muted' }, '(empty answer)') : x.text),
          el('div', { class: 'meta' }, el('a', { href: link('conv', [settingName(x.s), x.c]) }, settingName(x.s) + ' \u00b7 conversation ' + x.c),
            ' \u00b7 round ' + x.r + ' \u00b7 ' + (x.k === 'agent' ? 'as agent (stability)' : 'as user persona (adoption)') + ' \u00b7 sample ' + x.i, ' ',
            markers(x), x.echo ? flag('echoes the question', 'the answer repeats the probe question', 'info') : null)))) : el('p', { class: 'muted' }, 'none'));
      add(app, [
        el('h1', {}, 'Judge audit: ', el('code', {}, pid)),
        personaCard(p, 'agent'),
        el('div', { class: 'card' },
          el('p', {}, 'Every probe answer judged against this persona (as the agent\u2019s own persona and as the user persona), all settings: ',
            el('b', {}, String(summary.n)), ' scored, ' + summary.errors + ' judge errors' + (summary.errors ? ' (' + errorsBySetting(summary) + '; scored 0 in the statistics)' : '') + (summary.unscored ? ', ' + summary.unscored + ' without a score table row' : '') + ', mean ' + fmt(summary.mean, 3) + ', range ' + fmt(summary.min) + '\u2013' + fmt(summary.max) + '.'),
          histogram(summary.hist, 400, 90),
          el('p', { class: 'muted text' }, 'Probe: ' + a.question)),
        el('h2', {}, 'Highest scored answers'), answers(a.highest, 'highest'),
        el('h2', {}, 'Lowest scored answers'), answers(a.lowest, 'lowest'),
        el('h2', {}, 'Empty answers (' + summary.n_empty + ', mean score ' + fmt(summary.empty_mean) + '), highest scored first'), answers(a.empty, 'empty'),
        el('h2', {}, 'Answers that echo the question (' + summary.n_echo + ', mean score ' + fmt(summary.echo_mean) + '), highest scored first'), answers(a.echo, 'echo'),
      ]);
      ready('judge');
    }, (err) => fail(err.message));
  }

  // judge errors of one persona per setting, e.g. "none 2, control 1"
  function errorsBySetting(a) {
    return (a.errors_by_setting || []).map((x) => settingName(x[0]) + ' ' + x[1]).join(', ');
  }

  function judgeIndex() {
    add(app, [
      el('h1', {}, 'Judge audit'),
      el('p', { class: 'muted' }, 'Per persona: the distribution of its judge\u2019s scores over every probe answer it scored (all settings, both probe kinds), ',
        'and how it scored empty answers and answers that only echo the question. A judge that gives such answers high scores is wrong.'),
      el('table', { id: 'audit' },
        el('tr', {}, el('th', {}, 'persona'), el('th', {}, 'category'), el('th', {}, 'judge'), el('th', { class: 'num' }, 'answers'), el('th', { class: 'num' }, 'judge errors'),
          el('th', { class: 'num' }, 'mean'), el('th', {}, 'distribution (0 to 1)'), el('th', { class: 'num' }, 'empty (mean)'), el('th', { class: 'num' }, 'echo (mean)')),
        D.audit.map((a) => {
          const p = D.personas[a.p];
          return el('tr', { 'data-persona': p.id },
            el('td', {}, el('a', { href: link('judge', [p.id]) }, p.id)), el('td', {}, p.category || ''), el('td', {}, el('code', {}, p.judge || '')),
            el('td', { class: 'num' }, String(a.n)), el('td', { class: 'num judge-errors', title: errorsBySetting(a) }, String(a.errors)), el('td', { class: 'num' }, scoreBadge(a.mean)),
            el('td', {}, histogram(a.hist)),
            el('td', { class: 'num' }, a.n_empty + ' (' + fmt(a.empty_mean) + ')'), el('td', { class: 'num' }, a.n_echo + ' (' + fmt(a.echo_mean) + ')'));
        })),
    ]);
    ready('judge-index');
  }

  function viewPersonas() {
    const asAgent = new Map(), asUser = new Map();
    for (const r of ROWS) { asAgent.set(r.a, (asAgent.get(r.a) || 0) + 1); asUser.set(r.u, (asUser.get(r.u) || 0) + 1); }
    const kept = D.personas.filter((p) => p.kept === true).length, dropped = D.personas.filter((p) => p.kept === false).length;
    add(app, [
      el('h1', {}, 'Personas'),
      el('p', {}, 'Pool rule: ', el('b', {}, D.pool_rule || 'no persona pool file given'), ' \u00b7 ', el('span', { id: 'kept-count' }, kept + ' kept, ' + dropped + ' dropped'), '.'),
      el('table', { id: 'personas' },
        el('tr', {}, el('th', {}, 'persona'), el('th', {}, 'category'), el('th', {}, 'kept'), el('th', {}, 'why dropped'), el('th', { class: 'num' }, 'round-0 adherence'),
          el('th', { class: 'num' }, 'without persona'), el('th', { class: 'num' }, 'lift'), el('th', {}, 'judge'), el('th', { class: 'num' }, 'as agent'), el('th', { class: 'num' }, 'as user'), el('th', {}, 'system prompt')),
        D.personas.map((p, i) => el('tr', { 'data-persona': p.id, 'data-kept': String(p.kept) },
          el('td', {}, el('a', { href: link('index', [], { persona: p.id }) }, p.id)), el('td', {}, p.category || ''),
          el('td', { class: p.kept === false ? 'kept-no' : '' }, p.kept === true ? 'yes' : p.kept === false ? 'no' : '?'), el('td', { class: 'small' }, p.reason || ''),
          el('td', { class: 'num' }, fmt(p.adherence)), el('td', { class: 'num' }, fmt(p.no_persona)), el('td', { class: 'num' }, fmt(p.lift)),
          el('td', {}, el('a', { href: link('judge', [p.id]) }, el('code', {}, p.judge || ''))),
          el('td', { class: 'num' }, String(asAgent.get(i) || 0)), el('td', { class: 'num' }, String(asUser.get(i) || 0)),
          el('td', { class: 'small' }, p.system_prompt || '')))),
    ]);
    ready('personas');
  }

  function fail(message) {
    app.textContent = '';
    app.appendChild(el('p', { class: 'error', id: 'fail' }, message));
    ready('error');
  }

  function ready(view) {
    document.body.dataset.view = view;
    document.documentElement.dataset.readyMs = performance.now().toFixed(1);
    document.documentElement.dataset.ready = '1';
  }

  function route() {
    const t0 = performance.now();
    const { view, args, q } = parseHash();
    document.documentElement.dataset.ready = '0';
    app.textContent = '';
    for (const a of document.querySelectorAll('[data-nav]')) {
      a.classList.toggle('active', a.dataset.nav === view || (a.dataset.nav === 'index' && view === 'conv'));
    }
    const views = { index: () => viewIndex(q), conv: () => viewConv(args), compare: () => viewCompare(args, q), judge: () => viewJudge(args), personas: viewPersonas };
    (views[view] || (() => fail('Unknown view ' + view)))();
    document.documentElement.dataset.renderMs = (performance.now() - t0).toFixed(1);
    window.scrollTo(0, 0);
  }

  document.getElementById('study').textContent = (D.study || '') + (D.model ? ' \u00b7 ' + D.model : '') + ' \u00b7 ' + ROWS.length + ' conversations';
  window.addEventListener('hashchange', route);
  route();
})();
