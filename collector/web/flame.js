'use strict';
// ember's flame graph renderer: a canvas, the API's flat tree in parallel arrays, and culling of
// frames narrower than half a pixel, so trees of 100k nodes draw in a few milliseconds.
(function () {
  const ROW = 18;

  /**
   * The renderer's tree from the API's flat arrays (docs/API.md): nodes depth first, each
   * with its parent, frame and counts. Adds each node's depth, its x offset (the totals of the
   * siblings before it) and the rows of node indexes per depth, in x order.
   */
  function fromApi(a) {
    const n = a.frame.length;
    const zeros = () => new Array(n).fill(0);
    const t = {
      name: new Array(n), kind: new Array(n), file: new Array(n),
      self: a.self, total: a.total, base: a.base_total || zeros(), baseSelf: a.base_self || zeros(),
      depth: new Array(n), parent: a.parent, x: new Array(n), rows: [], maxDepth: 0,
    };
    const nextX = new Array(n);
    for (let i = 0; i < n; i++) {
      const f = a.frame[i];
      t.name[i] = a.frames.name[f]; t.kind[i] = a.frames.kind[f]; t.file[i] = a.frames.file[f] || '';
      const p = a.parent[i];
      if (p >= 0 && p < i) {
        t.depth[i] = t.depth[p] + 1;
        t.x[i] = nextX[p];
        nextX[p] += t.total[i];
      } else {
        t.depth[i] = 0; t.x[i] = 0;
      }
      nextX[i] = t.x[i];
      (t.rows[t.depth[i]] || (t.rows[t.depth[i]] = [])).push(i);
      if (t.depth[i] > t.maxDepth) t.maxDepth = t.depth[i];
    }
    return t;
  }

  /** The renderer's tree from a nested `{name, kind, file, self, total, children}` tree built here. */
  function flatten(root) {
    const a = { frames: { name: [], kind: [], file: [] }, frame: [], parent: [], self: [], total: [], base_self: [], base_total: [] };
    const stack = [[root, -1]];
    while (stack.length) {
      const [node, parent] = stack.pop();
      const i = a.frame.length;
      a.frames.name.push(node.name); a.frames.kind.push(node.kind); a.frames.file.push(node.file || '');
      a.frame.push(i); a.parent.push(parent);
      a.self.push(node.self || 0); a.total.push(node.total || 0);
      a.base_self.push(node.base_self || 0); a.base_total.push(node.base_total || 0);
      const kids = node.children || [];
      for (let k = kids.length - 1; k >= 0; k--) stack.push([kids[k], i]);
    }
    return fromApi(a);
  }

  function hash(s) {
    let h = 2166136261;
    for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); }
    return (h >>> 0) / 4294967295;
  }

  function kindColor(kind, name) {
    const v = hash(name);
    switch (kind) {
      case 'python': return `hsl(${28 + v * 18}, 85%, ${56 + v * 10}%)`;
      case 'native': return `hsl(${205 + v * 20}, 60%, ${58 + v * 10}%)`;
      case 'kernel': return `hsl(${340 + v * 10}, 60%, ${60 + v * 8}%)`;
      default: return `hsl(0, 0%, ${72 + v * 8}%)`;
    }
  }

  /** Path of frame names from the root's first child down to node `i`. */
  function pathOf(t, i) {
    const names = [];
    for (let n = i; n > 0; n = t.parent[n]) names.push(t.name[n]);
    return names.reverse();
  }

  function findPath(t, names) {
    let at = 0;
    for (const name of names) {
      const row = t.rows[t.depth[at] + 1] || [];
      const next = row.find((c) => t.parent[c] === at && t.name[c] === name);
      if (next === undefined) return at;
      at = next;
    }
    return at;
  }

  class FlameView {
    constructor(canvas, handlers = {}) {
      this.canvas = canvas;
      this.handlers = handlers;
      this.tree = null;
      this.zoom = 0;
      this.orientation = 'icicle';
      this.highlight = null;
      this.color = null;
      canvas.addEventListener('mousemove', (e) => this.hover(e));
      canvas.addEventListener('mouseleave', () => handlers.onHover && handlers.onHover(null));
      canvas.addEventListener('click', (e) => {
        const i = this.hit(e);
        if (i !== null) this.zoomTo(i);
      });
      canvas.addEventListener('keydown', (e) => this.key(e));
      new ResizeObserver(() => this.draw()).observe(canvas);
    }

    setTree(tree) { this.tree = tree; this.zoom = 0; }

    zoomTo(i) {
      this.zoom = i;
      this.draw();
      if (this.handlers.onZoom) this.handlers.onZoom(i);
    }

    key(e) {
      const t = this.tree;
      if (!t) return;
      if (e.key === 'Escape') { this.zoomTo(0); e.preventDefault(); }
      else if (e.key === 'ArrowUp' && this.zoom > 0) { this.zoomTo(t.parent[this.zoom]); e.preventDefault(); }
      else if (e.key === 'ArrowDown') {
        const row = t.rows[t.depth[this.zoom] + 1] || [];
        let best = -1;
        for (const c of row) if (t.parent[c] === this.zoom && (best < 0 || t.total[c] > t.total[best])) best = c;
        if (best >= 0) this.zoomTo(best);
        e.preventDefault();
      }
    }

    /** Draws and returns how long it took, in milliseconds. */
    draw() {
      const started = performance.now();
      const t = this.tree;
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const width = c.clientWidth || 800;
      const depthCount = t ? t.maxDepth + 1 : 1;
      const height = depthCount * ROW;
      if (c.width !== Math.round(width * dpr) || c.height !== Math.round(height * dpr)) {
        c.width = Math.round(width * dpr);
        c.height = Math.round(height * dpr);
        c.style.height = height + 'px';
      }
      const g = c.getContext('2d');
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, width, height);
      if (!t || t.total[0] === 0) return performance.now() - started;
      const z = this.zoom;
      const x0 = t.x[z];
      const span = t.total[z] || 1;
      const scale = width / span;
      g.font = '12px system-ui, sans-serif';
      g.textBaseline = 'middle';
      const charWidth = 6.5;
      const zDepth = t.depth[z];
      for (let d = 0; d <= t.maxDepth; d++) {
        const row = t.rows[d];
        if (!row) continue;
        const y = this.orientation === 'flame' ? height - (d + 1) * ROW : d * ROW;
        // Rows are in x order: skip to the first node that can reach the visible range.
        let lo = 0, hi = row.length;
        while (lo < hi) { const m = (lo + hi) >> 1; if (t.x[row[m]] + t.total[row[m]] <= x0) lo = m + 1; else hi = m; }
        for (let k = lo; k < row.length; k++) {
          const i = row[k];
          if (t.x[i] >= x0 + span) break;
          let left = (t.x[i] - x0) * scale;
          let right = left + t.total[i] * scale;
          if (d < zDepth) { left = Math.max(left, 0); right = Math.min(right, width); }
          const w = right - left;
          if (w < 0.5) continue;
          g.fillStyle = this.fill(i);
          g.fillRect(left, y, Math.max(w - 0.5, 0.5), ROW - 1);
          if (w > 28) {
            const max = Math.floor((w - 6) / charWidth);
            const name = t.name[i];
            g.fillStyle = '#1b1b1b';
            g.fillText(name.length > max ? name.slice(0, Math.max(max - 1, 1)) + '…' : name, left + 3, y + ROW / 2);
          }
        }
      }
      return performance.now() - started;
    }

    fill(i) {
      const t = this.tree;
      if (this.color) return this.color(t, i);
      const base = kindColor(t.kind[i], t.name[i]);
      if (!this.highlight) return base;
      return this.highlight(t, i) ? '#d63fe0' : `hsl(0, 0%, ${80 + hash(t.name[i]) * 10}%)`;
    }

    hit(e) {
      const t = this.tree;
      if (!t) return null;
      const r = this.canvas.getBoundingClientRect();
      const mx = e.clientX - r.left;
      const my = e.clientY - r.top;
      const height = (t.maxDepth + 1) * ROW;
      const d = this.orientation === 'flame' ? Math.floor((height - my) / ROW) : Math.floor(my / ROW);
      const row = t.rows[d];
      if (!row) return null;
      const span = t.total[this.zoom] || 1;
      const x = t.x[this.zoom] + (mx / r.width) * span;
      for (const i of row) if (x >= t.x[i] && x < t.x[i] + t.total[i]) return i;
      return null;
    }

    hover(e) {
      const i = this.hit(e);
      if (this.handlers.onHover) this.handlers.onHover(i === null ? null : { index: i, x: e.clientX, y: e.clientY });
    }
  }

  /** A random tree of about `n` nodes, for measuring the renderer. */
  function syntheticTree(n) {
    let seed = 42;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const root = { name: 'all', kind: 'root', file: '', self: 0, total: 0, children: [] };
    const nodes = [root];
    for (let i = 1; i < n; i++) {
      const parent = nodes[Math.floor(Math.pow(rnd(), 0.7) * nodes.length)];
      const child = { name: `function_${i} (module_${i % 97}.py)`, kind: i % 3 ? 'python' : 'native', file: 'x.py', self: 1 + Math.floor(rnd() * 20), total: 0, children: [] };
      parent.children.push(child);
      nodes.push(child);
    }
    (function sum(node) { node.total = node.self + node.children.reduce((a, c) => a + sum(c), 0); return node.total; })(root);
    return root;
  }

  window.EmberFlame = { fromApi, flatten, FlameView, pathOf, findPath, kindColor, syntheticTree, ROW };
})();
