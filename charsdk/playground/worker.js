// The playground's Web Worker: the JavaScript runtime generates here, off the page's thread, and posts the
// text back as it comes. The runtime and onnxruntime-web are imported by the URLs the page sends.
const generators = new Map();

self.onmessage = async ({ data }) => {
  try {
    const [{ Generator }, ort] = await Promise.all([import(data.runtime), import(data.ort)]);
    Generator.ort = ort;
    if (!generators.has(data.model)) generators.set(data.model, Generator.load(data.model));
    const generator = await generators.get(data.model);
    let piece = "", sent = performance.now();
    for await (const char of generator.stream(data.seedText, data.options)) {
      piece += char;
      if (performance.now() - sent > 30) {  // about 30 messages a second: the page stays smooth
        self.postMessage({ text: piece });
        piece = "";
        sent = performance.now();
      }
    }
    self.postMessage({ text: piece, done: true });
  } catch (error) {
    self.postMessage({ error: error.message, done: true });
  }
};
