// node run.js DIR [node|web]: check.js on every <name>.json/<name>.onnx in DIR, in onnxruntime-node or in
// onnxruntime-web (wasm) inside headless Chromium, pages served from 127.0.0.1:PORT (env PORT).
const fs = require("fs");
const path = require("path");
const check = require("./check.js");
const [dir, runtime] = [process.argv[2], process.argv[3] || "node"];
const names = fs.readdirSync(dir).filter(f => f.endsWith(".json")).map(f => f.slice(0, -5));
(async () => {
  let results = {};
  if (runtime === "node") {
    const ort = require("onnxruntime-node");
    const load = async (f, binary) => binary ? fs.readFileSync(path.join(dir, f)) : JSON.parse(fs.readFileSync(path.join(dir, f)));
    for (const name of names) results[name] = await check(ort, load, name);
  } else {
    const { chromium } = require("playwright-core");
    const browser = await chromium.launch({ executablePath: process.env.CHROMIUM,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${process.env.PORT}/page.html`);
    results = await page.evaluate(async names => {
      const load = async (f, binary) => { const r = await fetch("/models/" + f); return binary ? new Uint8Array(await r.arrayBuffer()) : r.json(); };
      const out = {};
      for (const name of names) out[name] = await check(ort, load, name);
      return out;
    }, names);
    results.browser = await page.evaluate(() => navigator.userAgent);
    await browser.close();
  }
  console.log(JSON.stringify(results));
})().catch(e => { console.error(String(e)); process.exit(1); });
