// node test/browser.mjs URL < cases.json: the cases run in headless Chromium (playwright-core driving the
// browser named by $CHROMIUM) on the page at URL (test/page.html, served from 127.0.0.1).
import { readFileSync } from "node:fs";

import { launch } from "./chromium.mjs";

const cases = JSON.parse(readFileSync(0, "utf-8"));
const browser = await launch();
try {
  const page = await browser.newPage();
  page.on("pageerror", error => console.error(`page error: ${error}`));
  await page.goto(process.argv[2]);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 30000 });
  console.log(JSON.stringify(await page.evaluate(cases => window.runCases(cases), cases)));
} finally {
  await browser.close();
}
