// Render an edgesdk report.html in headless Chromium as a person would see it, and print what
// could be wrong: images that did not decode, content wider than the window, empty tables.
// Usage: node render_report.mjs REPORT.html SCREENSHOT.png   (used by the tests)
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";

const [report, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
await page.goto(pathToFileURL(report).href);
await page.waitForLoadState("load");
const findings = await page.evaluate(() => ({
  images: document.images.length,
  broken: Array.from(document.images).filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.alt),
  tables: document.querySelectorAll("table").length,
  empty_tables: Array.from(document.querySelectorAll("table")).filter((t) => t.rows.length < 2).length,
  overflow_px: document.documentElement.scrollWidth - window.innerWidth,
  text_chars: document.body.innerText.length,
}));
await page.screenshot({ path: screenshot, fullPage: true });
console.log(JSON.stringify(findings));
await browser.close();
