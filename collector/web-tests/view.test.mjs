// Browser tests of the web view, in Debian's chromium driven by playwright-core.
// Run by collector/tests/web.rs against a collector fed by a real agent profiling
// agent/tests/fixtures/web_app.py:  node view.test.mjs http://127.0.0.1:PORT/
import assert from 'node:assert/strict';
import { launch } from './browser.mjs';

const base = process.argv[2];
const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const consoleErrors = [];
const dialogs = [];
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
page.on('pageerror', (e) => consoleErrors.push(String(e)));
page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });

const results = [];
async function check(name, body) {
  try {
    await body();
    results.push(`ok   ${name}`);
  } catch (e) {
    results.push(`FAIL ${name}: ${e.message}`);
  }
}

const flameNames = () => page.evaluate(() => window.ember.flame().tree.name);
const waitForTree = () => page.waitForFunction(() => window.ember && window.ember.flame().tree && window.ember.flame().tree.total[0] > 0, null, { timeout: 20000 });

await page.goto(base);
await waitForTree();

await check('opening / with no state picks the most recent target and shows its functions', async () => {
  assert.match(decodeURIComponent(page.url()), /query=\{service="web"\}/);
  const names = await flameNames();
  for (const fn of ['serve', 'hot_path', 'warm_path']) {
    assert.ok(names.some((n) => n.startsWith(fn + ' (')), `${fn} in the flame graph`);
  }
  assert.equal(await page.getByLabel('service').inputValue(), 'web');
});

await check('lines switches the flame graph between functions and source lines', async () => {
  const atLine = /\.py:\d+\)$/;
  assert.ok(!(await flameNames()).some((n) => atLine.test(n)), 'functions by default');
  await page.getByLabel('Lines', { exact: true }).check();
  await page.waitForFunction(() => window.ember.flame().tree.name.some((n) => /^hot_path \(.*\.py:\d+\)$/.test(n)), null, { timeout: 20000 });
  assert.match(decodeURIComponent(page.url()), /lines=1/);
  await page.getByLabel('Lines', { exact: true }).uncheck();
  await page.waitForFunction(() => !window.ember.flame().tree.name.some((n) => /\.py:\d+\)$/.test(n)), null, { timeout: 20000 });
  assert.ok((await flameNames()).some((n) => n.startsWith('hot_path (')), 'hot_path again, as a function');
});

await check('every control has an accessible name', async () => {
  const unnamed = await page.evaluate(() => [...document.querySelectorAll('button, input, select, a, canvas')]
    .filter((el) => !el.getAttribute('aria-label') && !el.labels?.length && !el.textContent.trim())
    .map((el) => el.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, [], JSON.stringify(unnamed));
  assert.ok(await page.getByLabel('Search', { exact: true }).isVisible());
});

await check('search highlights matches and reports their share', async () => {
  await page.getByLabel('Search', { exact: true }).fill('hot_path');
  const share = await page.locator('#search-share').textContent();
  const pct = parseFloat(share);
  assert.ok(pct > 35 && pct < 85, `hot_path share ${share}`);
  assert.match(share, /% of samples match "hot_path"/);
  const highlighted = await page.evaluate(() => {
    const v = window.ember.flame();
    return v.tree.name.filter((_, i) => v.highlight && v.highlight(v.tree, i));
  });
  assert.ok(highlighted.length > 0 && highlighted.every((n) => n.includes('hot_path')), JSON.stringify(highlighted));
  await page.getByLabel('Search', { exact: true }).fill('');
});

await check('clicking a frame zooms, breadcrumbs lead back, reset restores', async () => {
  const target = await page.evaluate(() => {
    const v = window.ember.flame();
    const t = v.tree;
    const i = t.name.findIndex((n) => n.startsWith('hot_path ('));
    const c = document.getElementById('flame').getBoundingClientRect();
    const x = c.left + ((t.x[i] + t.total[i] / 2) / t.total[0]) * c.width;
    const y = c.top + t.depth[i] * window.EmberFlame.ROW + 5;
    return { x, y, i };
  });
  await page.mouse.click(target.x, target.y);
  assert.equal(await page.evaluate(() => window.ember.flame().zoom), target.i);
  assert.match(decodeURIComponent(page.url()), /zoom=.*hot_path/);
  assert.ok(await page.locator('#breadcrumbs button').count() >= 3);
  await page.getByRole('button', { name: 'Reset zoom' }).click();
  assert.equal(await page.evaluate(() => window.ember.flame().zoom), 0);
});

await check('hovering shows name, file, self, total and percentage', async () => {
  const c = await page.locator('#flame').boundingBox();
  // The second row (depth 1) of the icicle: the program's outermost frame.
  await page.mouse.move(c.x + c.width / 3, c.y + 18 + 9);
  assert.ok(await page.locator('#tooltip').isVisible(), 'the tooltip stays up while the pointer is on the frame');
  const text = await page.locator('#tooltip').innerText();
  assert.match(text, /self: \d+ \(/);
  assert.match(text, /total: \d+ \(\d+\.\d+%\)/);
});

await check('keyboard: Escape resets the zoom, arrows move it', async () => {
  await page.locator('#flame').focus();
  await page.keyboard.press('ArrowDown');
  assert.ok(await page.evaluate(() => window.ember.flame().zoom) > 0);
  await page.keyboard.press('Escape');
  assert.equal(await page.evaluate(() => window.ember.flame().zoom), 0);
});

await check('the top table sorts and focuses', async () => {
  await page.getByRole('tab', { name: 'Top functions' }).click();
  await page.getByRole('button', { name: 'Sort by total' }).click();
  const totals = await page.$$eval('#top tbody tr td:nth-child(3)', (tds) => tds.map((td) => parseInt(td.textContent, 10)));
  assert.ok(totals.length > 3);
  assert.deepEqual(totals, [...totals].sort((a, b) => b - a), 'descending by total');
  await page.getByRole('button', { name: 'Sort by total' }).click();
  const ascending = await page.$$eval('#top tbody tr td:nth-child(3)', (tds) => tds.map((td) => parseInt(td.textContent, 10)));
  assert.deepEqual(ascending, [...ascending].sort((a, b) => a - b), 'ascending after a second click');
  assert.equal(await page.locator('#top th:nth-child(3)').getAttribute('aria-sort'), 'ascending');
  const row = page.locator('#top tbody button', { hasText: /^warm_path \(/ });
  await row.click();
  assert.equal(await page.getByRole('tab', { name: 'Flame graph' }).getAttribute('aria-selected'), 'true');
  const zoomed = await page.evaluate(() => { const v = window.ember.flame(); return v.tree.name[v.zoom]; });
  assert.match(zoomed, /^warm_path \(/);
});

await check('the sandwich view shows callers above and callees below', async () => {
  await page.getByRole('tab', { name: 'Sandwich' }).click();
  assert.match(await page.locator('#sandwich-title').textContent(), /warm_path/);
  const callers = await page.evaluate(() => document.getElementById('sandwich-callers').height);
  const callees = await page.evaluate(() => document.getElementById('sandwich-callees').height);
  assert.ok(callers > 0 && callees > 0);
});

await check('the diff view renders with its legend', async () => {
  await page.getByRole('tab', { name: 'Diff' }).click();
  await page.getByLabel('Base from').fill('now-2h');
  await page.getByLabel('Base to').fill('now-1h');
  await page.getByRole('button', { name: 'Compare' }).click();
  await page.waitForFunction(() => document.getElementById('diff-summary').textContent.includes('base period'));
  assert.match(await page.locator('#diff-summary').textContent(), /\d+ samples now, 0 in the base period/);
  assert.ok(await page.locator('#diff-legend').isVisible());
  assert.ok(await page.evaluate(() => document.getElementById('diff').height) > 0);
});

await check('the URL round-trips the state', async () => {
  const state = '?query=%7Bservice%3D%22web%22%7D&from=now-15m&to=now&tab=flame&search=warm_path&orientation=flame';
  const second = await browser.newPage();
  second.on('pageerror', (e) => consoleErrors.push(String(e)));
  await second.goto(base + state);
  await second.waitForFunction(() => window.ember && window.ember.flame().tree && window.ember.flame().tree.total[0] > 0);
  assert.equal(await second.getByLabel('Search', { exact: true }).inputValue(), 'warm_path');
  assert.equal(await second.evaluate(() => window.ember.flame().orientation), 'flame');
  assert.match(await second.locator('#search-share').textContent(), /warm_path/);
  assert.match(decodeURIComponent(second.url()), /from=now-15m/);
  await second.close();
});

await check('a function named with HTML stays text and opens no dialog', async () => {
  await page.getByRole('tab', { name: 'Top functions' }).click();
  const evil = page.locator('#top tbody button', { hasText: '<img src=x onerror=alert(1)>' });
  assert.equal(await evil.count(), 1, 'shown literally');
  assert.equal(await page.locator('#top img, body img').count(), 0, 'no element was created from it');
  await page.getByLabel('Search', { exact: true }).fill('<img');
  assert.match(await page.locator('#search-share').textContent(), /% of samples match/);
  assert.deepEqual(dialogs, []);
});

await check('download links carry the current query', async () => {
  for (const label of ['Download SVG', 'Download pprof', 'Download collapsed', 'Download speedscope']) {
    const href = await page.getByLabel(label).getAttribute('href');
    assert.match(decodeURIComponent(href), /query=\{service="web"\}/);
  }
  const svg = await page.evaluate(async () => (await fetch(document.getElementById('dl-svg').href)).text());
  assert.match(svg, /<svg/);
});

// ------------------------------------------------------------ asyncio tasks (service "tasks":
// agent/tests/fixtures/asyncio_cpu.py, ten TaskGroups of a 'heavy' and a 'light' task)
await page.goto(base + '?query=%7Bservice%3D%22tasks%22%7D&from=now-1h&tab=tasks');
await page.waitForFunction(() => window.ember && window.ember.timeline().tasks.length > 0, null, { timeout: 20000 });
const timelineInfo = () => page.evaluate(() => {
  const v = window.ember.timeline();
  return { groups: v.groups.map((g) => [g.name, g.tasks.length, g.collapsed]), rows: v.rows.length, span: v.viewTo - v.viewFrom };
});

await check('the tasks tab shows a lane per task, grouped by name, with a lag summary', async () => {
  const info = await timelineInfo();
  const groups = Object.fromEntries(info.groups.map(([n, c]) => [n, c]));
  assert.equal(groups.heavy, 10, JSON.stringify(info.groups));
  assert.equal(groups.light, 10, JSON.stringify(info.groups));
  assert.equal(info.groups[0][0], 'heavy', 'the busiest group first');
  const tasks = info.groups.reduce((n, g) => n + g[1], 0);
  assert.equal(info.rows, info.groups.length + tasks, 'a header per group and a lane per task');
  assert.ok(info.groups.some(([n]) => n === 'main (unnamed)'), 'unnamed tasks are grouped by coroutine');
  assert.match(await page.locator('#tasks-summary').textContent(), new RegExp(`^${tasks} tasks, \\d+ slices · event-loop lag p50 [\\d.]+ [µm]?s, p99`));
  assert.ok(await page.locator('#timeline').isVisible());
});

await check('clicking a slice shows the flame graph of the samples inside it', async () => {
  let total = 0;
  for (let k = 0; k < 11 && total === 0; k++) {
    const p = await page.evaluate((k) => {
      const v = window.ember.timeline();
      const task = v.groups.find((g) => g.name === 'heavy').tasks[0];
      return v.slicePoint(task, k);
    }, k);
    await page.mouse.click(p.x, p.y);
    await page.waitForFunction((k) => document.getElementById('tasks-selection').textContent.startsWith(`slice ${k + 1} of task heavy`), k);
    total = await page.evaluate(() => window.ember.taskFlame().tree.total[0]);
  }
  assert.ok(total > 0, 'some slice of a 4 ms step holds samples at 499 Hz');
  const names = await page.evaluate(() => window.ember.taskFlame().tree.name);
  assert.ok(names.some((n) => n.startsWith('stepper (')), JSON.stringify(names));
  assert.ok(!names.some((n) => n.startsWith('main (')), 'nothing from the parent task');
});

await check('clicking a task, then a task name, shows their flame graphs', async () => {
  const p = await page.evaluate(() => {
    const v = window.ember.timeline();
    return v.slicePoint(v.groups.find((g) => g.name === 'light').tasks[0], 0);
  });
  const box = await page.locator('#timeline').boundingBox();
  await page.mouse.click(box.x + 30, p.y);
  await page.waitForFunction(() => /^task light #\d+: \d+ samples/.test(document.getElementById('tasks-selection').textContent));
  assert.ok(await page.evaluate(() => window.ember.taskFlame().tree.total[0]) > 0);
  const light = await page.evaluate(() => window.ember.taskFlame().tree.total[0]);
  await page.evaluate(() => { const v = window.ember.timeline(); v.select({ group: v.groups.find((g) => g.name === 'heavy') }); });
  await page.waitForFunction(() => document.getElementById('tasks-selection').textContent.startsWith('10 tasks named heavy'));
  const heavy = await page.evaluate(() => window.ember.taskFlame().tree.total[0]);
  assert.ok(heavy > 5 * light, `all heavy tasks (${heavy}) against one light task (${light})`);
});

await check('a group folds into one lane when its name is clicked', async () => {
  const before = (await timelineInfo()).rows;
  const box = await page.locator('#timeline').boundingBox();
  await page.evaluate(() => { window.ember.timeline().scroller.scrollTop = 0; window.ember.timeline().draw(); });
  await page.mouse.click(box.x + 20, box.y + 22 + 8); // the first group's header, under the axis
  const after = await timelineInfo();
  assert.equal(after.rows, before - 10);
  assert.equal(after.groups[0][2], true, 'heavy is folded');
  await page.mouse.click(box.x + 20, box.y + 22 + 8);
  assert.equal((await timelineInfo()).rows, before);
});

await check('the timeline zooms and pans, and comes back to the whole range', async () => {
  const whole = (await timelineInfo()).span;
  await page.getByRole('button', { name: 'Zoom in on the timeline' }).click();
  assert.ok(Math.abs((await timelineInfo()).span - whole / 2) < 1);
  await page.locator('#timeline').focus();
  const from = await page.evaluate(() => window.ember.timeline().viewFrom);
  await page.keyboard.press('d');
  assert.ok(await page.evaluate(() => window.ember.timeline().viewFrom) > from, 'D pans right');
  await page.getByRole('button', { name: 'Show the whole timeline' }).click();
  assert.equal((await timelineInfo()).span, whole);
  for (let i = 0; i < 60; i++) await page.getByRole('button', { name: 'Zoom out of the timeline' }).click();
  assert.ok((await timelineInfo()).span <= whole * 100 + 1, 'zooming out stops at 100 times the data');
  await page.getByRole('button', { name: 'Show the whole timeline' }).click();
});

await check('hovering a slice tells its task, duration and lag', async () => {
  const p = await page.evaluate(() => {
    const v = window.ember.timeline();
    return v.slicePoint(v.groups.find((g) => g.name === 'heavy').tasks[1], 3);
  });
  await page.mouse.move(p.x, p.y);
  assert.ok(await page.locator('#tooltip').isVisible());
  const text = await page.locator('#tooltip').innerText();
  assert.match(text, /^heavy \(task \d+, PID \d+\)/);
  assert.match(text, /slice 4 of 11: ran \d/);
  assert.match(text, /lag \(ready → running\): [\d.]+ [µm]?s/);
});

await check('an empty range explains itself', async () => {
  await page.goto(base + '?query=%7Bservice%3D%22nobody%22%7D&from=now-5m&to=now');
  await page.waitForFunction(() => !document.getElementById('empty').hidden);
  assert.match(await page.locator('#empty').textContent(), /No samples in this range yet/);
});

await check('collector errors are shown, not swallowed', async () => {
  await page.goto(base + '?query=%7Bservice%3D%22web%22%7D&from=yesterday');
  await page.waitForFunction(() => !document.getElementById('error').hidden);
  assert.match(await page.locator('#error').textContent(), /parameter "from"/);
  consoleErrors.splice(0); // the browser logs the 400 itself; that is the point of this check
});

await check('the page sends a CSP that forbids inline script', async () => {
  const res = await page.request.get(base);
  const csp = res.headers()['content-security-policy'];
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
});

await check('no console errors', async () => {
  assert.deepEqual(consoleErrors, []);
});

if (process.env.SCREENSHOT) {
  await page.goto(base + '?query=%7Bservice%3D%22web%22%7D&from=now-15m');
  await waitForTree();
  await page.screenshot({ path: process.env.SCREENSHOT });
}
await browser.close();
console.log(results.join('\n'));
process.exit(results.some((r) => r.startsWith('FAIL')) ? 1 : 0);
