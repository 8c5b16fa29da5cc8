// node test/speed.mjs URL: characters per second of the JavaScript runtime in headless Chromium (the page
// at URL: test/page.html served beside the models), one stream and 64, both shipped models; then Node.
import { launch } from "./chromium.mjs";

import { Generator } from "../src/index.js";

async function measure(generate) {
  const rows = {};
  for (const model of ["nietzsche", "nietzsche-book"]) {
    for (const [n, length] of [[1, 2000], [64, 200]]) {
      await generate(model, 1, 16);  // warm-up: load, compile
      const started = performance.now();
      await generate(model, n, length);
      rows[`${model} n=${n}`] = Math.round((n * length) / ((performance.now() - started) / 1000));
    }
  }
  return rows;
}

const browser = await launch();
const page = await browser.newPage();
await page.goto(process.argv[2]);
await page.waitForFunction(() => window.ready === true);
const chromiumRows = await page.evaluate(async () => {
  const generators = {};
  const rows = {};
  for (const model of ["nietzsche", "nietzsche-book"]) {
    for (const [n, length] of [[1, 2000], [64, 200]]) {
      const { Generator } = await import("../src/index.js");
      generators[model] ??= await Generator.load(new URL(`/models/${model}/`, location.href));
      await generators[model].generate("the ", { length: 16, n: 1, seed: 1 });
      const started = performance.now();
      await generators[model].generate("the free spirit ", { length, n, seed: 1, temperature: 0.5 });
      rows[`${model} n=${n}`] = Math.round((n * length) / ((performance.now() - started) / 1000));
    }
  }
  return rows;
});
await browser.close();
const loaded = {};
const nodeRows = await measure(async (model, n, length) => {
  loaded[model] ??= await Generator.load(new URL(`../../charsdk/models/${model}/`, import.meta.url).pathname);
  await loaded[model].generate("the free spirit ", { length, n, seed: 1, temperature: 0.5 });
});
console.log(JSON.stringify({ chromium: chromiumRows, node: nodeRows, userAgent: "chromium-headless-shell" }));
