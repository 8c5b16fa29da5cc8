// node test/node.mjs MODELS_DIR < cases.json: each case's text (or error) as JSON, in onnxruntime-web on Node.
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { runCases } from "./cases.mjs";

const cases = JSON.parse(readFileSync(0, "utf-8"));
console.log(JSON.stringify(await runCases(cases, name => join(process.argv[2], name))));
