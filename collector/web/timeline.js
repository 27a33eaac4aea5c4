'use strict';
// ember's asyncio task timeline: a canvas with one lane per task, lanes grouped by task name.
// A task's life (created → done) is a pale band; each run slice is solid; the time between the
// task becoming ready and running (event-loop lag) is drawn in red just before its slice.
// Only the lanes in view are drawn, so tens of thousands of tasks scroll smoothly.
(function () {
  const ROW = 16;
  const AXIS = 22;
  const LABEL = 240;
  const COLORS = { life: '#ece7df', run: '#e07b20', lag: '#d0342c', group: '#f3efe8', selected: '#111', axis: '#666' };

  function quantile(sorted, q) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }

  /** Lag statistics in µs over slices whose ready time is known. */
  function lagStats(tasks) {
    const lags = [];
    for (const t of tasks) {
      t.slices.forEach((s, k) => { const r = t.ready[k]; if (r !== null && r !== undefined) lags.push(Math.max(0, s[0] - r)); });
    }
    lags.sort((a, b) => a - b);
    return { count: lags.length, p50: quantile(lags, 0.5), p99: quantile(lags, 0.99), max: lags.length ? lags[lags.length - 1] : null };
  }

  function formatUs(us) {
    if (us === null || us === undefined) return '–';
    if (us < 1000) return `${Math.round(us)} µs`;
    if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
    return `${(us / 1e6).toFixed(2)} s`;
  }

  const DEFAULT_NAME = /^Task-\d+$/;

  /** Groups tasks by name (tasks left with asyncio's default `Task-N` name, by coroutine):
   * busiest group first, each group's tasks in creation order. */
  function groupTasks(tasks) {
    const groups = new Map();
    for (const t of tasks) {
      const unnamed = DEFAULT_NAME.test(t.name);
      const key = unnamed ? '\u0000' + t.coro : t.name;
      let g = groups.get(key);
      if (!g) {
        g = { name: unnamed ? `${t.coro} (unnamed)` : t.name, unnamed, coro: t.coro, tasks: [], running: 0, samples: 0, collapsed: false };
        groups.set(key, g);
      }
      g.tasks.push(t); g.running += t.running; g.samples += t.samples;
    }
    const list = [...groups.values()].sort((a, b) => b.running - a.running || a.name.localeCompare(b.name));
    for (const g of list) { g.tasks.sort((a, b) => a.created - b.created); g.lag = lagStats(g.tasks); }
    return list;
  }

  class TimelineView {
    /** `scroller` is the scrolling box holding `canvas` (sticky) and `spacer`. */
    constructor(scroller, canvas, spacer, opts = {}) {
      this.scroller = scroller; this.canvas = canvas; this.spacer = spacer;
      this.opts = opts;
      this.groups = []; this.rows = []; this.tasks = [];
      this.from = 0; this.to = 1; this.viewFrom = 0; this.viewTo = 1;
      this.selected = null; // {task, slice} | {group}
      this.ctx = canvas.getContext('2d');
      scroller.addEventListener('scroll', () => this.draw());
      let drag = null;
      canvas.addEventListener('mousedown', (e) => { drag = { x: e.clientX, from: this.viewFrom, to: this.viewTo, moved: false }; });
      window.addEventListener('mousemove', (e) => {
        if (drag) {
          const dx = e.clientX - drag.x;
          if (Math.abs(dx) > 3) drag.moved = true;
          if (drag.moved) { const us = dx * (drag.to - drag.from) / this.plotWidth(); this.setView(drag.from - us, drag.to - us); }
        }
        if (e.target === canvas) this.hover(e);
      });
      window.addEventListener('mouseup', (e) => {
        if (drag && !drag.moved && e.target === canvas) this.click(e);
        drag = null;
      });
      canvas.addEventListener('mouseleave', () => { if (this.opts.onHover) this.opts.onHover(null); });
      canvas.addEventListener('wheel', (e) => {
        if (e.ctrlKey || e.metaKey) { e.preventDefault(); this.zoom(e.deltaY < 0 ? 0.8 : 1.25, this.timeAt(this.localX(e))); }
        else if (e.shiftKey) { e.preventDefault(); this.pan((e.deltaY || e.deltaX) / this.plotWidth() * 0.5); }
      }, { passive: false });
      canvas.addEventListener('keydown', (e) => {
        const keys = { w: () => this.zoom(0.8), s: () => this.zoom(1.25), a: () => this.pan(-0.1), d: () => this.pan(0.1),
          '+': () => this.zoom(0.8), '-': () => this.zoom(1.25), ArrowLeft: () => this.pan(-0.1), ArrowRight: () => this.pan(0.1),
          Escape: () => this.resetView() };
        if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
      });
    }

    setData(body, fromUs, toUs) {
      this.tasks = body.tasks;
      const keep = new Map(this.groups.map((g) => [g.name, g.collapsed]));
      this.groups = groupTasks(body.tasks);
      const many = body.tasks.length > 300;
      for (const g of this.groups) g.collapsed = keep.has(g.name) ? keep.get(g.name) : many && g.tasks.length > 1;
      let lo = fromUs; let hi = toUs;
      if (body.tasks.length) {
        // Fit the view to the activity, inside the range asked for.
        lo = Math.max(fromUs, Math.min(...body.tasks.map((t) => (t.slices[0] ? Math.min(t.created, t.slices[0][0]) : t.created))));
        hi = Math.min(toUs, Math.max(...body.tasks.map((t) => t.done ?? (t.slices.length ? t.slices[t.slices.length - 1][1] : t.created))));
        if (hi <= lo) hi = lo + 1000;
        const pad = (hi - lo) * 0.02;
        lo -= pad; hi += pad;
      }
      this.from = lo; this.to = hi;
      this.viewFrom = lo; this.viewTo = hi;
      this.selected = null;
      this.layout();
    }

    layout() {
      this.rows = [];
      for (const g of this.groups) {
        this.rows.push({ group: g });
        if (!g.collapsed) for (const t of g.tasks) this.rows.push({ group: g, task: t });
      }
      const total = AXIS + this.rows.length * ROW;
      const visible = Math.min(total, Math.max(200, Math.round(window.innerHeight * 0.55)));
      this.canvas.style.height = visible + 'px';
      this.spacer.style.height = Math.max(0, total - visible) + 'px';
      this.draw();
    }

    plotWidth() { return Math.max(1, (this.canvas.clientWidth || 800) - LABEL); }
    localX(e) { return e.clientX - this.canvas.getBoundingClientRect().left; }
    timeAt(x) { return this.viewFrom + (x - LABEL) / this.plotWidth() * (this.viewTo - this.viewFrom); }
    xOf(us) { return LABEL + (us - this.viewFrom) / (this.viewTo - this.viewFrom) * this.plotWidth(); }

    setView(from, to) {
      // Between 1 µs and 100 times the data's span, so the axis stays representable.
      const whole = Math.max(1, this.to - this.from);
      const span = Math.min(Math.max(1, to - from), whole * 100);
      const center = Math.min(Math.max((from + to) / 2, this.from - whole * 50), this.to + whole * 50);
      from = center - span / 2;
      this.viewFrom = from; this.viewTo = from + span;
      this.draw();
      if (this.opts.onView) this.opts.onView();
    }

    zoom(factor, at) {
      const center = at ?? (this.viewFrom + this.viewTo) / 2;
      this.setView(center - (center - this.viewFrom) * factor, center + (this.viewTo - center) * factor);
    }

    pan(fraction) { const d = (this.viewTo - this.viewFrom) * fraction; this.setView(this.viewFrom + d, this.viewTo + d); }
    resetView() { this.setView(this.from, this.to); }

    firstRow() { return Math.floor(this.scroller.scrollTop / ROW); }

    /** The row, task and slice under a point of the canvas. */
    hit(x, y) {
      if (y < AXIS) return null;
      const row = this.rows[this.firstRow() + Math.floor((y - AXIS) / ROW)];
      if (!row) return null;
      if (x < LABEL) return { row, task: row.task, label: true };
      const t = this.timeAt(x);
      const slack = 3 * (this.viewTo - this.viewFrom) / this.plotWidth();
      const tasks = row.task ? [row.task] : row.group.tasks;
      // The slice under the pointer; failing that, the nearest within a few pixels (slices
      // narrower than a pixel are still reachable), never a neighbour of the one under it.
      let near = null;
      for (const task of tasks) {
        for (let k = 0; k < task.slices.length; k++) {
          const s = task.slices[k];
          if (t >= s[0] && t <= s[1]) return { row, task, slice: k };
          const gap = t < s[0] ? s[0] - t : t - s[1];
          if (gap <= slack && (!near || gap < near.gap)) near = { task, slice: k, gap };
        }
      }
      return near ? { row, task: near.task, slice: near.slice } : { row, task: row.task };
    }

    click(e) {
      const h = this.hit(this.localX(e), e.clientY - this.canvas.getBoundingClientRect().top);
      if (!h) return;
      if (h.label && !h.row.task) { h.row.group.collapsed = !h.row.group.collapsed; this.layout(); return; }
      this.select(h.slice !== undefined ? { task: h.task, slice: h.slice } : h.task ? { task: h.task } : { group: h.row.group });
    }

    select(selection) {
      this.selected = selection;
      this.draw();
      if (this.opts.onSelect) this.opts.onSelect(selection);
    }

    hover(e) {
      if (!this.opts.onHover) return;
      const h = this.hit(this.localX(e), e.clientY - this.canvas.getBoundingClientRect().top);
      if (!h) { this.opts.onHover(null); return; }
      const lines = [];
      if (h.task) {
        const t = h.task;
        lines.push(`${t.name} (task ${t.id}, PID ${t.pid})`, `coroutine: ${t.coro}`, `state: ${t.state}${t.exception ? ' ' + t.exception : ''}`);
        if (h.slice !== undefined) {
          const s = t.slices[h.slice]; const r = t.ready[h.slice];
          lines.push(`slice ${h.slice + 1} of ${t.slices.length}: ran ${formatUs(s[1] - s[0])} on thread ${s[2]}`,
            r === null || r === undefined ? 'lag: not recorded' : `lag (ready → running): ${formatUs(Math.max(0, s[0] - r))}`);
        } else {
          lines.push(`${t.slices.length} slices, ran ${formatUs(t.running)}, ${t.samples} samples`);
        }
      } else {
        const g = h.row.group;
        lines.push(`${g.name}: ${g.tasks.length} tasks`, `ran ${formatUs(g.running)}, ${g.samples} samples`,
          g.lag.count ? `lag p50 ${formatUs(g.lag.p50)}, p99 ${formatUs(g.lag.p99)}, max ${formatUs(g.lag.max)}` : 'lag: not recorded',
          g.collapsed ? 'click the name to show its tasks' : 'click the name to fold its tasks');
      }
      this.opts.onHover({ x: e.clientX, y: e.clientY, lines });
    }

    /** Where slice `k` of `task` is drawn, in page coordinates (for tests and keyboard users). */
    slicePoint(task, k) {
      const index = this.rows.findIndex((r) => r.task === task || (!r.task && r.group.collapsed && r.group.tasks.includes(task)));
      if (index < 0) return null;
      this.scroller.scrollTop = Math.max(0, (index - 2) * ROW);
      this.draw();
      const s = task.slices[k];
      const rect = this.canvas.getBoundingClientRect();
      const y = AXIS + (index - this.firstRow()) * ROW + ROW / 2;
      return { x: rect.left + (this.xOf(s[0]) + this.xOf(s[1])) / 2, y: rect.top + y };
    }

    draw() {
      const c = this.canvas; const ctx = this.ctx;
      const dpr = window.devicePixelRatio || 1;
      const width = c.clientWidth || 800; const height = c.clientHeight || 200;
      if (c.width !== Math.round(width * dpr) || c.height !== Math.round(height * dpr)) { c.width = Math.round(width * dpr); c.height = Math.round(height * dpr); }
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, width, height);
      ctx.font = '11px system-ui, sans-serif';
      ctx.textBaseline = 'middle';
      this.drawAxis(width);
      const first = this.firstRow();
      const count = Math.ceil((height - AXIS) / ROW) + 1;
      const minWidth = 1 / dpr;
      for (let i = 0; i < count && first + i < this.rows.length; i++) {
        const row = this.rows[first + i];
        const y = AXIS + i * ROW;
        if (!row.task) { ctx.fillStyle = COLORS.group; ctx.fillRect(0, y, width, ROW); }
        const tasks = row.task ? [row.task] : row.group.collapsed ? row.group.tasks : [];
        ctx.save();
        ctx.beginPath(); ctx.rect(LABEL, y, width - LABEL, ROW); ctx.clip();
        for (const t of tasks) {
          if (row.task) {
            const end = t.done ?? this.to;
            ctx.fillStyle = COLORS.life;
            ctx.fillRect(this.xOf(t.created), y + 4, Math.max(minWidth, this.xOf(end) - this.xOf(t.created)), ROW - 8);
          }
          for (let k = 0; k < t.slices.length; k++) {
            const s = t.slices[k];
            if (s[1] < this.viewFrom || s[0] > this.viewTo) continue;
            const r = t.ready[k];
            if (r !== null && r !== undefined && r < s[0]) {
              ctx.fillStyle = COLORS.lag;
              ctx.fillRect(this.xOf(r), y + 6, Math.max(minWidth, this.xOf(s[0]) - this.xOf(r)), ROW - 12);
            }
            ctx.fillStyle = COLORS.run;
            ctx.fillRect(this.xOf(s[0]), y + 2, Math.max(minWidth, this.xOf(s[1]) - this.xOf(s[0])), ROW - 4);
            const sel = this.selected;
            if (sel && sel.task === t && (sel.slice === k || sel.slice === undefined)) {
              ctx.strokeStyle = COLORS.selected; ctx.lineWidth = 1.5;
              ctx.strokeRect(this.xOf(s[0]) - 1, y + 1, Math.max(2, this.xOf(s[1]) - this.xOf(s[0]) + 2), ROW - 2);
            }
          }
        }
        ctx.restore();
        ctx.fillStyle = '#222';
        const label = row.task ? `   ${row.task.name} #${row.task.id}` : `${row.group.collapsed ? '▸' : '▾'} ${row.group.name} (${row.group.tasks.length})`;
        ctx.font = row.task ? '11px system-ui, sans-serif' : 'bold 11px system-ui, sans-serif';
        ctx.fillText(label, 4, y + ROW / 2, LABEL - 8);
        if (this.selected && ((row.task && this.selected.task === row.task) || (!row.task && this.selected.group === row.group))) {
          ctx.strokeStyle = COLORS.selected; ctx.lineWidth = 1; ctx.strokeRect(0.5, y + 0.5, LABEL - 2, ROW - 1);
        }
      }
    }

    drawAxis(width) {
      const ctx = this.ctx;
      ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, width, AXIS);
      ctx.fillStyle = COLORS.axis; ctx.strokeStyle = '#ddd'; ctx.lineWidth = 1;
      const span = this.viewTo - this.viewFrom;
      const target = span / Math.max(1, this.plotWidth() / 110);
      const pow = Math.pow(10, Math.floor(Math.log10(Math.max(1, target))));
      const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= target) || pow * 10;
      ctx.fillText(`from ${new Date(this.viewFrom / 1000).toISOString().slice(11, 23)}`, 4, AXIS / 2, LABEL - 8);
      for (let t = Math.ceil((this.viewFrom - this.from) / step) * step + this.from; t <= this.viewTo; t += step) {
        const x = Math.round(this.xOf(t)) + 0.5;
        ctx.beginPath(); ctx.moveTo(x, AXIS - 6); ctx.lineTo(x, AXIS); ctx.stroke();
        ctx.fillText('+' + formatUs(t - this.from), x + 3, AXIS / 2);
      }
    }
  }

  window.EmberTimeline = { TimelineView, lagStats, formatUs, groupTasks };
})();
