// The playground: type a seed, choose the settings, watch the text stream in. It generates in the browser
// (charsdk's JavaScript runtime in a Web Worker, onnxruntime-web's wasm) or, when `charsdk serve` serves
// the page, optionally through the server's completions API. Served from a static file server instead,
// the page reads the model beside it (model/, or ?model=URL) and the runtime from the repository's js/.
const $ = id => document.getElementById(id);
const here = new URL(".", location.href);
const runtime = new URL("../../js/src/generator.js", here).href;
const ort = new URL("../../js/node_modules/onnxruntime-web/dist/ort.bundle.min.mjs", here).href;
let worker = null, reader = null;

function options() {
  const seed = $("seed").value.trim();
  return { length: Number($("length").value), temperature: Number($("temperature").value),
           topP: Number($("top-p").value), seed: seed === "" ? null : Number(seed) };
}

function show(text, status = "") {
  $("out").append(text);
  if (status) $("status").textContent = status;
}

function finish(status) {
  $("status").textContent = status;
  $("go").disabled = false;
  $("stop").disabled = true;
}

async function inBrowser(seedText, started) {
  worker ??= new Worker(new URL("worker.js", import.meta.url), { type: "module" });
  const model = $("model").value;
  await new Promise(resolve => {
    worker.onmessage = ({ data }) => {
      if (data.text) show(data.text);
      if (data.error) show("", `error: ${data.error}`);
      if (data.done) resolve();
    };
    worker.postMessage({ runtime, ort, model, seedText, options: options() });
  });
  return (performance.now() - started) / 1000;
}

async function onServer(seedText, started) {
  const o = options();
  const body = { model: $("model").selectedOptions[0].dataset.id, prompt: seedText, max_tokens: o.length,
                 temperature: o.temperature, top_p: o.topP, stream: true, ...(o.seed === null ? {} : { seed: o.seed }) };
  const response = await fetch("/v1/completions", { method: "POST", body: JSON.stringify(body),
                                                    headers: { "Content-Type": "application/json" } });
  if (!response.ok) throw new Error((await response.json()).error.message);
  reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") continue;
      const parsed = JSON.parse(data);
      if (parsed.error) throw new Error(parsed.error.message);
      show(parsed.choices.map(c => c.text).join(""));
    }
  }
  return (performance.now() - started) / 1000;
}

$("go").onclick = async () => {
  const seedText = $("seed-text").value;
  $("out").replaceChildren(Object.assign(document.createElement("span"), { className: "seed-text", textContent: seedText }));
  $("go").disabled = true;
  $("stop").disabled = false;
  $("status").textContent = "generating…";
  const started = performance.now();
  try {
    const seconds = await ($("where").value === "server" ? onServer : inBrowser)(seedText, started);
    const chars = $("out").textContent.length - seedText.length;
    if (!$("status").textContent.startsWith("error")) finish(`${chars} characters in ${seconds.toFixed(2)} s`);
    else finish($("status").textContent);
  } catch (error) {
    finish(`error: ${error.message}`);
  }
};

$("stop").onclick = () => {
  worker?.terminate();
  worker = null;
  reader?.cancel();
  finish("stopped");
};

async function setUp() {
  const params = new URLSearchParams(location.search);
  let served = [];
  try {
    const response = await fetch("/v1/models");
    if (response.ok) served = (await response.json()).data.map(m => m.id);
  } catch { /* not served by charsdk serve */ }
  const models = served.length ? served.map(id => [id, new URL(`/models/${id}/`, location.href).href])
                               : [[params.get("model") || "model", new URL(params.get("model") || "model/", here).href]];
  for (const [id, url] of models) {
    const option = new Option(id, url);
    option.dataset.id = id;
    $("model").append(option);
  }
  if (!served.length) $("where").querySelector("[value=server]").disabled = true;
  const runtimeThere = await fetch(runtime, { method: "HEAD" }).then(r => r.ok, () => false);
  if (!runtimeThere) {
    $("where").querySelector("[value=browser]").disabled = true;
    $("where").value = "server";
  } else if (params.get("where")) {
    $("where").value = params.get("where");
  }
  $("status").textContent = runtimeThere || served.length ? "ready" : "no runtime and no server: see docs/javascript.md";
}

setUp();
