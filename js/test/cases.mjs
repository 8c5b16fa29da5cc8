// Runs generation cases and prints their texts as JSON, in Node or (imported by page.html) in a browser.
// A case: {model, seedText, options} (with predict: true, the next character's distribution instead of a
// text; with items: N, N complete items of a list model; with evaluate: true, the bits/char of seedText; with contexts: [[ids]], the n-gram memory's distributions); errors are reported as {error, option} instead of a text.
import { Generator } from "../src/index.js";

export async function runCases(cases, modelUrl) {
  const generators = {};
  const out = [];
  for (const c of cases) {
    try {
      generators[c.model] ??= await Generator.load(modelUrl(c.model));
      const generator = generators[c.model];
      out.push(c.predict ? { predict: await generator.predict(c.seedText, c.options) }
               : c.items ? { items: await generator.items(c.items, c.options) }
               : c.evaluate ? { evaluate: await generator.evaluate(c.seedText, c.options) }
               : c.contexts ? { memory: c.contexts.map(context => generator.memory.distribution(context))
                                                  .map(({ q, depth }) => ({ q: Array.from(q), depth })) }
               : { text: await generator.generate(c.seedText, c.options) });
    } catch (error) {
      out.push({ error: error.message, option: error.option ?? null, name: error.name });
    }
  }
  return out;
}
