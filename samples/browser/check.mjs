// Drive the sample page in headless Chromium: classify text lines or image files and print
// the page's JSON results. Usage: node check.mjs URL [--text LINE]... [--image FILE]...
import { chromium } from "playwright-core";

const url = process.argv[2];
const texts = [], images = [];
for (let i = 3; i < process.argv.length; i += 2) (process.argv[i] === "--text" ? texts : images).push(process.argv[i + 1]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
page.on("pageerror", (e) => console.error("page error:", e.message));
await page.goto(url);
await page.waitForSelector("body[data-ready=yes]", { state: "attached", timeout: 60000 });
const results = async () => {
  await page.waitForFunction(() => document.getElementById("out").textContent.length > 0);
  const out = JSON.parse(await page.textContent("#out"));
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  await page.evaluate(() => { document.getElementById("out").textContent = ""; });
  return out;
};
let all = [];
if (texts.length) {
  await page.fill("#text", texts.join("\n"));
  await page.click("#classify");
  all = all.concat(await results());
}
if (images.length) {
  await page.setInputFiles("#image", images);
  all = all.concat(await results());
}
console.log(JSON.stringify(all));
await browser.close();
