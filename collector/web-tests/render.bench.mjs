// Flame graph renderer benchmark: draw time of synthetic trees in headless Chromium.
//   node collector/web-tests/render.bench.mjs http://127.0.0.1:7080/
// Target: a 100k-node tree in ≤ 100 ms.
import { launch } from './browser.mjs';

const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
await page.goto(process.argv[2]);
await page.waitForFunction(() => window.ember);
console.log('| nodes | draw (ms, best of 3) | vs target 100 ms |');
console.log('| ---: | ---: | ---: |');
for (const n of [10000, 100000, 300000]) {
  const r = await page.evaluate((count) => window.ember.measure(count), n);
  console.log(`| ${r.nodes} | ${r.ms.toFixed(1)} | ${(r.ms / 100).toFixed(2)}× |`);
}
await browser.close();
