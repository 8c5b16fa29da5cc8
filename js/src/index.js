// charsdk in JavaScript: the browser and Node runtime of charsdk's models (see README.md and
// ../docs/javascript.md).
export { Generator, MODES, chunkSizes } from "./generator.js";
export { SeedSequence, SFC64, streamGenerators } from "./random.js";
export { CharsdkError, Vocab } from "./vocab.js";
