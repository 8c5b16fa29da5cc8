// node test/playground.mjs URL SCREENSHOT < settings.json: open the playground in headless Chromium, type
// the seed and settings, press Generate, wait for the text to finish streaming in; prints what the page
// shows (and in how many pieces the text arrived: one text node per streamed chunk), and saves a screenshot.
import { readFileSync } from "node:fs";

import { launch } from "./chromium.mjs";

const settings = JSON.parse(readFileSync(0, "utf-8"));
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 420, height: 860 } });  // a phone's width
  const errors = [];
  page.on("pageerror", error => errors.push(String(error)));
  await page.goto(process.argv[2]);
  await page.waitForFunction(() => document.getElementById("status").textContent !== "", null, { timeout: 30000 });
  await page.fill("#seed-text", settings.seedText);
  await page.fill("#temperature", String(settings.temperature));
  await page.fill("#length", String(settings.length));
  await page.fill("#seed", String(settings.seed));
  await page.selectOption("#where", settings.where);
  await page.click("#go");
  await page.waitForFunction(() => !document.getElementById("go").disabled, null, { timeout: 120000 });
  await page.screenshot({ path: process.argv[3], fullPage: true });
  console.log(JSON.stringify({ out: await page.$eval("#out", e => e.textContent),
                               status: await page.$eval("#status", e => e.textContent),
                               pieces: await page.$eval("#out", e => e.childNodes.length - 1), errors }));
} finally {
  await browser.close();
}
