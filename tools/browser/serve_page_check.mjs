// The page of `meshdit serve` in a real browser: types a prompt, clicks Generate, sees the progress bar
// move and the image arrive in the gallery, then asks for a size the server refuses and sees the error,
// and saves a screenshot. Usage: node serve_page_check.mjs URL SCREENSHOT.png (CHROMIUM overrides the
// browser, /usr/bin/chromium by default). Prints one JSON line; exits non-zero on any failure.
import { chromium } from 'playwright-core';

const [url, shot] = process.argv.slice(2);
if (!url || !shot) {
  console.error('usage: node serve_page_check.mjs URL SCREENSHOT.png');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // Root in CI containers: Chromium's sandbox needs user namespaces it may not have.
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const report = { ok: false, page_errors: [], progress_seen: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.on('pageerror', (e) => report.page_errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('model').textContent.includes('Pipeline'),
                             null, { timeout: 30000 });
  await page.fill('#prompt', 'a large red circle in the center on a blue background');
  await page.fill('#width', '64');
  await page.fill('#height', '64');
  await page.fill('#steps', '24');
  await page.fill('#seed', '42');
  await page.click('#generate');
  // The bar between empty and full: it moved while the job ran.
  const w = await page.waitForFunction(() => {
    const p = parseFloat(document.getElementById('fill').style.width || '0');
    return p > 0 && p < 100 ? p : false;
  }, null, { timeout: 60000, polling: 5 });
  report.progress_seen.push(await w.jsonValue());
  await page.waitForSelector('#gallery figure img', { timeout: 120000 });
  report.caption = await page.textContent('#gallery figcaption');
  report.state = await page.textContent('#state');
  // A refused request shows the server's error, naming the field.
  await page.fill('#width', '100');
  await page.click('#generate');
  await page.waitForFunction(() => document.getElementById('error').textContent.includes('multiple of 16'),
                             null, { timeout: 30000 });
  report.error_text = await page.textContent('#error');
  await page.screenshot({ path: shot, fullPage: true });
  report.ok = report.page_errors.length === 0;
} catch (e) {
  report.failure = String(e);
}
await browser.close();
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
