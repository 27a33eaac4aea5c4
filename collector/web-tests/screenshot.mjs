// Screenshot of the web view for the docs:  node screenshot.mjs <url> <out.png>
import { chromium } from 'playwright-core';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 820 } });
await page.goto(process.argv[2]);
await page.waitForFunction(() => window.ember && window.ember.flame().tree && window.ember.flame().tree.total[0] > 0);
await page.getByLabel('Search', { exact: true }).fill('price');
await page.mouse.move(300, 370);
await page.screenshot({ path: process.argv[3] });
await browser.close();
