// Screenshot of the web view for the docs:  node screenshot.mjs <url> <out.png>
import { launch } from './browser.mjs';

const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1400, height: 820 } });
await page.goto(process.argv[2]);
await page.waitForFunction(() => window.ember && window.ember.flame().tree && window.ember.flame().tree.total[0] > 0);
await page.getByLabel('Search', { exact: true }).fill('price');
await page.mouse.move(300, 370);
await page.screenshot({ path: process.argv[3] });
await browser.close();
