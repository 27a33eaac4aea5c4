'use strict';
// The ember web view. Everything it shows comes from /api/v1; every string from the profiled
// program is inserted as text (textContent, Option, canvas), never as HTML.
(function () {
  const $ = (id) => document.getElementById(id);
  const F = window.EmberFlame;
  const LABELS = ['service', 'host', 'pid', 'container', 'pod'];
  const SEP = '\u001f';

  const state = {
    query: '', from: 'now-1h', to: 'now', tab: 'flame', zoom: '', search: '', orientation: 'icicle',
    fn: '', live: false, lines: false, baseFrom: '', baseTo: '', baseQuery: '',
  };
  const FLAGS = ['live', 'lines'];
  let tree = null;
  let targets = [];
  let chart = null;
  let liveTimer = null;

  // ---------------------------------------------------------------- URL state
  function readUrl() {
    const p = new URLSearchParams(location.search);
    for (const key of Object.keys(state)) {
      if (!p.has(key)) continue;
      state[key] = FLAGS.includes(key) ? p.get(key) === '1' : p.get(key);
    }
  }

  function writeUrl() {
    const p = new URLSearchParams();
    for (const [key, value] of Object.entries(state)) {
      if (FLAGS.includes(key)) { if (value) p.set(key, '1'); } else if (value !== '') p.set(key, value);
    }
    history.replaceState(null, '', '?' + p.toString());
  }

  // ---------------------------------------------------------------- API
  async function api(path, params) {
    const url = path + '?' + new URLSearchParams(params).toString();
    const res = await fetch(url);
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`;
      try {
        const body = await res.json();
        message = body.error + (body.param ? ` (parameter "${body.param}")` : '');
      } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return res.json();
  }

  function showError(e) {
    const box = $('error');
    box.textContent = 'The collector answered with an error: ' + (e && e.message ? e.message : String(e));
    box.hidden = false;
  }

  function clearError() { $('error').hidden = true; }

  // ---------------------------------------------------------------- targets
  function parseEquals(query) {
    const out = {};
    const re = /([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
    let m;
    while ((m = re.exec(query))) if (query[m.index + m[1].length] !== '!') out[m[1]] = m[2].replace(/\\(.)/g, '$1');
    return out;
  }

  function quote(v) { return '"' + v.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"'; }

  function fillPickers() {
    const chosen = parseEquals(state.query);
    for (const label of LABELS) {
      const select = $('label-' + label);
      const values = [...new Set(targets.map((t) => t.labels[label]).filter((v) => v !== undefined))].sort();
      select.replaceChildren(new Option('any', ''), ...values.map((v) => new Option(v, v)));
      select.value = chosen[label] !== undefined && values.includes(chosen[label]) ? chosen[label] : '';
      select.disabled = values.length === 0;
    }
    $('query').value = state.query;
  }

  function queryFromPickers() {
    const parts = LABELS.map((l) => [l, $('label-' + l).value]).filter(([, v]) => v !== '').map(([l, v]) => `${l}=${quote(v)}`);
    return parts.length ? '{' + parts.join(',') + '}' : '';
  }

  async function loadTargets() {
    const body = await api('/api/v1/targets', { from: state.from, to: state.to });
    targets = body.targets;
    if (!state.query && targets.length) {
      // No state: show the most recently active target.
      const t = targets[0];
      state.query = t.labels.service ? `{service=${quote(t.labels.service)}}` : `{pid=${quote(t.labels.pid || '')}}`;
    }
    fillPickers();
  }

  // ---------------------------------------------------------------- time chart
  function rangeParams() { return { query: state.query, from: state.from, to: state.to }; }
  // Flame graphs by function, or by line where the agent sent lines.
  function profileParams() { return { ...rangeParams(), ...(state.lines ? { lines: '1' } : {}) }; }

  async function loadSeries() {
    const body = await api('/api/v1/series', rangeParams());
    const xs = body.points.map((p) => p[0] / 1000);
    const ys = body.points.map((p) => p[1]);
    const el = $('chart');
    const opts = {
      width: el.clientWidth || 800, height: 100, legend: { show: false },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true } },
      axes: [{}, { size: 50 }],
      series: [{}, { label: 'samples', stroke: '#e07b20', fill: 'rgba(224,123,32,0.25)', paths: window.uPlot.paths.stepped({ align: 1 }) }],
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 2) return;
          const from = Math.round(u.posToVal(u.select.left, 'x') * 1000);
          const to = Math.round(u.posToVal(u.select.left + u.select.width, 'x') * 1000);
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          setRange(String(from), String(to));
        }],
      },
    };
    if (chart) chart.destroy();
    chart = new window.uPlot(opts, [xs, ys], el);
    for (const c of el.querySelectorAll('canvas')) c.setAttribute('aria-label', 'Samples over time; drag to choose a range');
    $('range-text').textContent = `${state.from} → ${state.to}`;
    for (const b of document.querySelectorAll('[data-preset]')) b.setAttribute('aria-pressed', String(state.from === 'now-' + b.dataset.preset && state.to === 'now'));
  }

  function setRange(from, to) {
    state.from = from; state.to = to; state.zoom = '';
    if (!to.startsWith('now')) setLive(false);
    refresh();
  }

  function setLive(on) {
    state.live = on;
    $('live').checked = on;
    clearInterval(liveTimer);
    if (on) liveTimer = setInterval(() => { if (state.to.startsWith('now')) refresh(); }, 5000);
  }

  // ---------------------------------------------------------------- flame graph
  const tooltip = $('tooltip');
  function placeTooltip(x, y, lines) {
    tooltip.replaceChildren(...lines.filter(Boolean).map((l) => { const d = document.createElement('div'); d.textContent = l; return d; }));
    tooltip.style.left = Math.min(x + 12, window.innerWidth - 320) + 'px';
    tooltip.style.top = (y + 14) + 'px';
    tooltip.hidden = false;
  }

  function showTooltip(view, h) {
    if (!h) { tooltip.hidden = true; return; }
    const t = view.tree;
    const i = h.index;
    const all = t.total[0] || 1;
    const lines = [t.name[i], t.file[i] ? 'file: ' + t.file[i] : '', `kind: ${t.kind[i]}`,
      `self: ${t.self[i]} (${(100 * t.self[i] / all).toFixed(2)}%)`, `total: ${t.total[i]} (${(100 * t.total[i] / all).toFixed(2)}%)`];
    if (view === diffView) lines.push(`base: ${t.base[i]}`);
    placeTooltip(h.x, h.y, lines);
  }

  const flame = new F.FlameView($('flame'), {
    onHover: (h) => showTooltip(flame, h),
    onZoom: (i) => { state.zoom = i > 0 ? F.pathOf(flame.tree, i).join(SEP) : ''; writeUrl(); breadcrumbs(); },
  });

  function breadcrumbs() {
    const nav = $('breadcrumbs');
    if (!tree) { nav.replaceChildren(); return; }
    const chain = [];
    for (let i = flame.zoom; i >= 0; i = tree.parent[i]) chain.unshift(i);
    nav.replaceChildren(...chain.map((i, k) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = (k ? '› ' : '') + tree.name[i];
      b.setAttribute('aria-label', 'Zoom to ' + tree.name[i]);
      b.addEventListener('click', () => flame.zoomTo(i));
      return b;
    }));
  }

  function matches(t, i) {
    const q = state.search.toLowerCase();
    return q !== '' && i > 0 && (t.name[i].toLowerCase().includes(q) || t.file[i].toLowerCase().includes(q));
  }

  /** Share of samples under a matching frame, without counting nested matches twice. */
  function matchedShare(t) {
    let covered = 0;
    let insideDepth = -1;
    for (let i = 0; i < t.name.length; i++) {
      if (insideDepth >= 0 && t.depth[i] <= insideDepth) insideDepth = -1;
      if (insideDepth < 0 && matches(t, i)) { covered += t.total[i]; insideDepth = t.depth[i]; }
    }
    return t.total[0] ? covered / t.total[0] : 0;
  }

  function applySearch() {
    flame.highlight = state.search ? matches : null;
    $('search-share').textContent = state.search && tree
      ? `${(100 * matchedShare(tree)).toFixed(1)}% of samples match "${state.search}"` : '';
    flame.draw();
  }

  async function loadProfile() {
    const body = await api('/api/v1/profile', profileParams());
    tree = F.fromApi(body.tree);
    const empty = tree.total[0] === 0;
    $('empty').hidden = !empty;
    flame.setTree(tree);
    flame.orientation = state.orientation;
    if (state.zoom) flame.zoom = F.findPath(tree, state.zoom.split(SEP));
    applySearch();
    breadcrumbs();
    downloads();
  }

  function downloads() {
    for (const format of ['svg', 'pprof', 'collapsed', 'speedscope']) {
      const a = $('dl-' + format);
      a.href = '/api/v1/profile?' + new URLSearchParams({ ...profileParams(), format }).toString();
      a.setAttribute('download', `ember-profile.${{ svg: 'svg', pprof: 'pb.gz', collapsed: 'folded', speedscope: 'speedscope.json' }[format]}`);
    }
  }

  // ---------------------------------------------------------------- top table
  const sort = { key: 'self', descending: true };
  function topRows() {
    const t = tree;
    const rows = new Map();
    const onPath = new Map();
    const path = [];
    for (let i = 1; i < t.name.length; i++) {
      while (path.length && t.depth[path[path.length - 1]] >= t.depth[i]) {
        const j = path.pop();
        onPath.set(t.name[j], onPath.get(t.name[j]) - 1);
      }
      const name = t.name[i];
      const row = rows.get(name) || { name, kind: t.kind[i], self: 0, total: 0 };
      row.self += t.self[i];
      if (!onPath.get(name)) row.total += t.total[i]; // recursion counts once
      rows.set(name, row);
      path.push(i);
      onPath.set(name, (onPath.get(name) || 0) + 1);
    }
    return [...rows.values()];
  }

  function renderTable() {
    if (!tree) return;
    const all = tree.total[0] || 1;
    const rows = topRows().sort((a, b) => {
      const d = sort.key === 'name' ? a.name.localeCompare(b.name) : a[sort.key] - b[sort.key];
      return sort.descending ? -d : d;
    }).slice(0, 500);
    const body = $('top').tBodies[0];
    body.replaceChildren(...rows.map((r) => {
      const tr = document.createElement('tr');
      const name = document.createElement('td');
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = r.name;
      b.setAttribute('aria-label', 'Focus ' + r.name + ' in the flame graph');
      b.addEventListener('click', () => focusFunction(r.name));
      name.append(b);
      const cell = (v) => { const td = document.createElement('td'); td.textContent = `${v} (${(100 * v / all).toFixed(1)}%)`; return td; };
      tr.append(name, cell(r.self), cell(r.total));
      return tr;
    }));
    for (const th of document.querySelectorAll('#top th')) {
      const key = th.querySelector('button').dataset.sort;
      th.setAttribute('aria-sort', key === sort.key ? (sort.descending ? 'descending' : 'ascending') : 'none');
    }
  }

  function focusFunction(name) {
    state.fn = name;
    state.search = name;
    $('search').value = name;
    let best = -1;
    for (let i = 1; i < tree.name.length; i++) if (tree.name[i] === name && (best < 0 || tree.total[i] > tree.total[best])) best = i;
    selectTab('flame');
    applySearch();
    if (best > 0) flame.zoomTo(best);
  }

  // ---------------------------------------------------------------- sandwich
  const callers = new F.FlameView($('sandwich-callers'), { onHover: (h) => showTooltip(callers, h) });
  const callees = new F.FlameView($('sandwich-callees'), { onHover: (h) => showTooltip(callees, h) });

  function subtree(t, i) {
    const node = { name: t.name[i], kind: t.kind[i], file: t.file[i], self: t.self[i], total: t.total[i], children: [] };
    const row = t.rows[t.depth[i] + 1] || [];
    for (const c of row) if (t.parent[c] === i) node.children.push(subtree(t, c));
    return node;
  }

  function merge(into, node) {
    into.self += node.self; into.total += node.total;
    for (const c of node.children) {
      let m = into.children.find((x) => x.name === c.name);
      if (!m) { m = { name: c.name, kind: c.kind, file: c.file, self: 0, total: 0, children: [] }; into.children.push(m); }
      merge(m, c);
    }
  }

  function renderSandwich() {
    const name = state.fn || state.search;
    $('sandwich-title').textContent = name ? `Callers and callees of ${name}` : 'Choose a function in Top functions (or type its exact name in Search).';
    if (!tree || !name) { callers.setTree(null); callees.setTree(null); callers.draw(); callees.draw(); return; }
    const rootCallees = { name: 'all', kind: 'root', file: '', self: 0, total: 0, children: [] };
    const rootCallers = { name: 'all', kind: 'root', file: '', self: 0, total: 0, children: [] };
    for (let i = 1; i < tree.name.length; i++) {
      if (tree.name[i] !== name) continue;
      let nested = false;
      for (let p = tree.parent[i]; p > 0; p = tree.parent[p]) if (tree.name[p] === name) { nested = true; break; }
      if (nested) continue;
      merge(rootCallees, { name: 'all', kind: 'root', file: '', self: 0, total: tree.total[i], children: [subtree(tree, i)] });
      // Callers: the function at the root, then its parent, grandparent, … above it.
      const top = { name: tree.name[i], kind: tree.kind[i], file: tree.file[i], self: 0, total: tree.total[i], children: [] };
      // Rebuild the chain innermost-first: function at the root, callers above it.
      const up = [];
      for (let p = tree.parent[i]; p > 0; p = tree.parent[p]) up.push(p);
      let cur = top;
      for (const p of up) { const n = { name: tree.name[p], kind: tree.kind[p], file: tree.file[p], self: 0, total: tree.total[i], children: [] }; cur.children.push(n); cur = n; }
      cur.self = tree.total[i];
      merge(rootCallers, { name: 'all', kind: 'root', file: '', self: 0, total: tree.total[i], children: [top] });
    }
    callers.setTree(F.flatten(rootCallers)); callers.orientation = 'flame'; callers.draw();
    callees.setTree(F.flatten(rootCallees)); callees.orientation = 'icicle'; callees.draw();
  }

  // ---------------------------------------------------------------- diff
  const diffView = new F.FlameView($('diff'), { onHover: (h) => showTooltip(diffView, h) });
  diffView.color = (t, i) => {
    const now = t.total[i] / (t.total[0] || 1);
    const base = t.base[i] / (t.base[0] || 1);
    const delta = Math.max(-1, Math.min(1, (now - base) * 4));
    if (Math.abs(delta) < 0.02) return 'hsl(0, 0%, 85%)';
    return delta > 0 ? `hsl(2, 75%, ${88 - delta * 40}%)` : `hsl(220, 75%, ${88 + delta * 40}%)`;
  };

  async function loadDiff() {
    const params = { ...profileParams() };
    if (state.baseFrom) params.base_from = state.baseFrom;
    if (state.baseTo) params.base_to = state.baseTo;
    if (state.baseQuery) params.base_query = state.baseQuery;
    const body = await api('/api/v1/diff', params);
    diffView.setTree(F.fromApi(body.tree));
    diffView.draw();
    $('diff-summary').textContent = `${body.total} samples now, ${body.base_total} in the base period`;
  }

  // ---------------------------------------------------------------- asyncio tasks
  const T = window.EmberTimeline;
  const timeline = new T.TimelineView($('tasks-scroll'), $('timeline'), $('tasks-spacer'), {
    onHover: (h) => { if (h) placeTooltip(h.x, h.y, h.lines); else tooltip.hidden = true; },
    onSelect: (selection) => loadSelection(selection).then(clearError, showError),
  });
  const taskFlame = new F.FlameView($('task-flame'), { onHover: (h) => showTooltip(taskFlame, h) });

  /** `query` with more matchers; task matchers select samples by the task that ran them. */
  function withMatchers(query, extra) {
    const inner = query.trim().replace(/^\{/, '').replace(/\}$/, '').trim();
    return '{' + [inner, ...extra].filter(Boolean).join(',') + '}';
  }

  async function loadTimeline() {
    const body = await api('/api/v1/timeline', rangeParams());
    const now = Date.now();
    const bound = (v) => (v.startsWith('now') ? now : Number(v)) * 1000;
    timeline.setData(body, body.from * 1000 || bound(state.from), body.to * 1000 || bound(state.to));
    $('tasks-empty').hidden = body.tasks.length > 0;
    const slices = body.tasks.reduce((n, t) => n + t.slices.length, 0);
    const lag = T.lagStats(body.tasks);
    $('tasks-summary').textContent = `${body.total_tasks} tasks${body.truncated ? ` (the ${body.tasks.length} that ran longest shown)` : ''}, ${slices} slices · `
      + (lag.count ? `event-loop lag p50 ${T.formatUs(lag.p50)}, p99 ${T.formatUs(lag.p99)}, max ${T.formatUs(lag.max)}` : 'event-loop lag not recorded');
    taskFlame.setTree(null); taskFlame.draw();
    $('tasks-selection').textContent = 'Click a slice, a task or a task name to see its flame graph.';
  }

  async function loadSelection(sel) {
    let matchers; let from = state.from; let to = state.to; let title;
    if (sel.group) {
      matchers = sel.group.unnamed ? ['task=~"Task-[0-9]+"', `task_coro=${quote(sel.group.coro)}`] : [`task=${quote(sel.group.name)}`];
      const n = sel.group.tasks.length;
      title = sel.group.unnamed ? `${n} unnamed task${n === 1 ? '' : 's'} of ${sel.group.coro}` : `${n} task${n === 1 ? '' : 's'} named ${sel.group.name}`;
    } else {
      const t = sel.task;
      matchers = [`task_id=${quote(String(t.id))}`];
      if (t.pid) matchers.push(`pid=${quote(t.pid)}`);
      title = `task ${t.name} #${t.id}`;
      if (sel.slice !== undefined) {
        const s = t.slices[sel.slice];
        // The API's range is in milliseconds: cover the slice; the task matcher keeps out
        // what other tasks ran in the same milliseconds.
        from = String(Math.floor(s[0] / 1000));
        to = String(Math.max(Math.floor(s[0] / 1000) + 1, Math.ceil(s[1] / 1000)));
        title = `slice ${sel.slice + 1} of ${title} (${T.formatUs(s[1] - s[0])})`;
      }
    }
    const body = await api('/api/v1/profile', { ...profileParams(), query: withMatchers(state.query, matchers), from, to });
    taskFlame.setTree(F.fromApi(body.tree)); taskFlame.orientation = 'icicle'; taskFlame.draw();
    $('tasks-selection').textContent = `${title}: ${body.total} sample${body.total === 1 ? '' : 's'}`
      + (body.total ? '' : ' (a slice shorter than the sampling interval often has none)');
    return body;
  }

  // ---------------------------------------------------------------- tabs and wiring
  function selectTab(tab) {
    state.tab = tab;
    for (const b of document.querySelectorAll('[data-tab]')) b.setAttribute('aria-selected', String(b.dataset.tab === tab));
    for (const name of ['flame', 'table', 'sandwich', 'diff', 'tasks']) $('view-' + name).hidden = name !== tab;
    $('toolbar').hidden = tab === 'diff' || tab === 'tasks';
    $('empty').hidden = tab === 'tasks' || !tree || tree.total[0] > 0;
    $('breadcrumbs').hidden = tab !== 'flame';
    if (tab === 'flame') flame.draw();
    if (tab === 'table') renderTable();
    if (tab === 'sandwich') renderSandwich();
    if (tab === 'diff') loadDiff().then(clearError, showError);
    if (tab === 'tasks') loadTimeline().then(clearError, showError);
    writeUrl();
  }

  async function refresh() {
    writeUrl();
    try {
      await loadTargets();
      await Promise.all([loadSeries(), loadProfile()]);
      clearError();
      selectTab(state.tab);
    } catch (e) {
      showError(e);
    }
  }

  function wire() {
    for (const label of LABELS) $('label-' + label).addEventListener('change', () => { state.query = queryFromPickers(); state.zoom = ''; refresh(); });
    $('query').addEventListener('change', () => { state.query = $('query').value.trim(); state.zoom = ''; refresh(); });
    $('targets').addEventListener('submit', (e) => e.preventDefault());
    for (const b of document.querySelectorAll('[data-preset]')) b.addEventListener('click', () => setRange('now-' + b.dataset.preset, 'now'));
    $('live').addEventListener('change', () => { setLive($('live').checked); writeUrl(); });
    $('lines').addEventListener('change', () => { state.lines = $('lines').checked; refresh(); });
    for (const b of document.querySelectorAll('[data-tab]')) b.addEventListener('click', () => selectTab(b.dataset.tab));
    $('search').addEventListener('input', () => { state.search = $('search').value; state.fn = ''; applySearch(); writeUrl(); });
    $('reset').addEventListener('click', () => flame.zoomTo(0));
    $('orientation').addEventListener('click', () => {
      state.orientation = state.orientation === 'flame' ? 'icicle' : 'flame';
      flame.orientation = state.orientation;
      $('orientation').textContent = state.orientation === 'flame' ? 'Icicle' : 'Flame';
      flame.draw(); writeUrl();
    });
    for (const b of document.querySelectorAll('[data-sort]')) b.addEventListener('click', () => {
      if (sort.key === b.dataset.sort) sort.descending = !sort.descending; else { sort.key = b.dataset.sort; sort.descending = b.dataset.sort !== 'name'; }
      renderTable();
    });
    $('diff-form').addEventListener('submit', (e) => {
      e.preventDefault();
      state.baseFrom = $('base-from').value.trim(); state.baseTo = $('base-to').value.trim(); state.baseQuery = $('base-query').value.trim();
      writeUrl();
      loadDiff().then(clearError, showError);
    });
    $('tasks-zoom-in').addEventListener('click', () => timeline.zoom(0.5));
    $('tasks-zoom-out').addEventListener('click', () => timeline.zoom(2));
    $('tasks-reset').addEventListener('click', () => timeline.resetView());
    window.addEventListener('resize', () => { if (state.tab === 'tasks') timeline.draw(); });
    document.addEventListener('keydown', (e) => {
      if (e.key === '/' && document.activeElement.tagName !== 'INPUT') { e.preventDefault(); $('search').focus(); }
    });
  }

  readUrl();
  $('search').value = state.search;
  $('base-from').value = state.baseFrom; $('base-to').value = state.baseTo; $('base-query').value = state.baseQuery;
  $('orientation').textContent = state.orientation === 'flame' ? 'Icicle' : 'Flame';
  flame.orientation = state.orientation;
  wire();
  setLive(state.live);
  $('lines').checked = state.lines;
  refresh();
  // For tests and the renderer benchmark.
  window.ember = { state, flame: () => flame, timeline: () => timeline, taskFlame: () => taskFlame, loadSelection, measure: (n) => {
    // A canvas of the live one's width, off screen, so the page's own view is left alone.
    const canvas = document.createElement('canvas');
    canvas.style.position = 'absolute';
    canvas.style.left = '-100000px';
    canvas.style.width = ($('flame').clientWidth || 800) + 'px';
    document.body.append(canvas);
    const v = new F.FlameView(canvas);
    v.setTree(F.flatten(F.syntheticTree(n)));
    const times = [v.draw(), v.draw(), v.draw()];
    canvas.remove();
    return { nodes: v.tree.name.length, ms: Math.min(...times) };
  } };
})();
