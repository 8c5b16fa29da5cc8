// vocab.json, the contract between training and every runtime (charsdk/vocab.py): the characters in index
// order, the context length, the casing rule, the ONNX file's name and sha256, the state tensors.

export class CharsdkError extends Error {
  /** @param {string} message @param {string | null} option the option or argument at fault, if one */
  constructor(message, option = null) {
    super(message);
    this.name = "CharsdkError";
    this.option = option;
  }
}

export const FORMAT_VERSION = 2;

export class Vocab {
  constructor(data) {
    if (!data || data.format !== "charsdk-model") {
      throw new CharsdkError("vocab.json is not a charsdk model description ('format' is missing)");
    }
    if (data.format_version === 3) {
      throw new CharsdkError("this is a window model (a Keras model converted by tf2onnx): the JavaScript " +
                             "package runs charsdk's own graph models; run it with Python's charsdk");
    }
    if (data.format_version !== FORMAT_VERSION) {
      throw new CharsdkError(`vocab.json has format_version ${data.format_version}; this charsdk reads ` +
                             `version ${FORMAT_VERSION}: re-export the model or upgrade charsdk`);
    }
    this.chars = Array.from(data.chars);
    this.maxlen = data.maxlen;
    this.lowercase = data.lowercase;
    this.onnxFile = data.onnx.file;
    this.onnxSha256 = data.onnx.sha256;
    this.precision = data.onnx.precision;
    this.states = data.onnx.states.map(s => ({ input: s.input, output: s.output, size: s.shape[1] }));
    this.defaultSeedText = data.default_seed_text || "";
    this.training = data.training || {};
    this.items = data.items || null; // a list model's record of its training items: {file, sha256, count, hash}
    this.memory = data.memory || null; // an n-gram memory of the training text (memory.js): {file, sha256, weights, ...}
    this.index = new Map(this.chars.map((c, i) => [c, i]));
    this.codes = this.chars.map(c => c.codePointAt(0));
  }

  get size() { return this.chars.length; }

  /** The casing the model was trained with. */
  normalize(text) { return this.lowercase ? text.toLowerCase() : text; }

  /** The id read as "no character yet": what an empty seed primes with. */
  get noCharId() { return this.chars.length; }

  /** Character ids of `text` (lower-cased for a lower-case model); unknown characters are an error naming
   * them, or dropped with onUnknown "skip". */
  encode(text, onUnknown = "error") {
    if (onUnknown !== "error" && onUnknown !== "skip") {
      throw new CharsdkError(`onUnknown must be "error" or "skip", got ${JSON.stringify(onUnknown)}`, "onUnknown");
    }
    const chars = Array.from(this.lowercase ? text.toLowerCase() : text);
    const unknown = [...new Set(chars.filter(c => !this.index.has(c)))].sort();
    if (unknown.length && onUnknown === "error") {
      let shown = unknown.slice(0, 10).map(c => JSON.stringify(c)).join(", ");
      if (unknown.length > 10) shown += ` and ${unknown.length - 10} more`;
      throw new CharsdkError(`the text has ${unknown.length} character(s) this model does not know: ${shown}; ` +
                             'remove them, or skip them (onUnknown: "skip")', "seedText");
    }
    return chars.filter(c => this.index.has(c)).map(c => this.index.get(c));
  }

  decode(ids) {
    return ids.map(i => this.chars[i]).join("");
  }
}
