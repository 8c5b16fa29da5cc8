// charsdk in JavaScript: charsdk's models in onnxruntime-web, in the browser and in Node, with the same
// seeded text as Python's charsdk (../docs/javascript.md).
import * as ort from "onnxruntime-web";

import { Generator } from "./generator.js";

Generator.ort = ort;

export { Generator, MODES, chunkSizes } from "./generator.js";
export { SeedSequence, SFC64, streamGenerators } from "./random.js";
export { CharsdkError, Vocab } from "./vocab.js";
export { ort };
