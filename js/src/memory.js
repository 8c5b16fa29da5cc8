// A model's n-gram memory of its training text (charsdk/memory.py): the same counts from the same
// Burrows-Wheeler transform, the same smoothing and mixture, in float64 and in the same order of
// operations, so that a memory model draws Python's text for the same seed.

import { CharsdkError } from "./vocab.js";

export const ORDER = 16; // the longest context counted
export const BETA = 4.0; // pseudo-count of the shorter context's distribution in each order's
const BLOCK = 32; // positions between stored occurrence counts
const LOGE2 = Math.LN2;

/** numpy's logaddexp: log(exp(x) + exp(y)) without overflow. */
function logAddExp(x, y) {
  if (x === y) return x + LOGE2;
  const tmp = x - y;
  return tmp > 0 ? x + Math.log1p(Math.exp(-tmp)) : y + Math.log1p(Math.exp(tmp));
}

export class Memory {
  /** @param {Uint16Array} bwt the transform (symbol = id + 1; 0 ends the text) @param {number} vocabSize
   * @param {number[]} weights the memory's share of the mixture by the depth of the context found */
  constructor(bwt, vocabSize, weights) {
    const symbols = vocabSize + 1, blocks = Math.ceil(bwt.length / BLOCK);
    this.bwt = bwt;
    this.size = vocabSize;
    this.symbols = symbols;
    this.weights = Float64Array.from(weights);
    this.starts = new Float64Array(symbols + 1); // sorted suffixes that begin with a symbol below s
    for (const s of bwt) this.starts[s + 1] += 1;
    for (let s = 1; s <= symbols; s++) this.starts[s] += this.starts[s - 1];
    this.characters = bwt.length - 1;
    // order 0, the start of every distribution: each character's count, smoothed from uniform
    this.order0 = Float64Array.from({ length: vocabSize },
                                    (_, c) => (this.starts[c + 2] - this.starts[c + 1] + BETA / vocabSize) / (this.characters + BETA));
    this.occurrences = new Int32Array((blocks + 1) * symbols); // symbol s in bwt[: b * BLOCK]
    for (let b = 0; b < blocks; b++) {
      const row = this.occurrences.subarray((b + 1) * symbols, (b + 2) * symbols);
      row.set(this.occurrences.subarray(b * symbols, (b + 1) * symbols));
      for (let i = b * BLOCK; i < Math.min((b + 1) * BLOCK, bwt.length); i++) row[bwt[i]] += 1;
    }
  }

  /** A memory file (its sha256 checked) and vocab.json's entry for it. */
  static async of(bytes, entry, vocabSize, sha256Hex) {
    if ((await sha256Hex(bytes)) !== entry.sha256) {
      throw new CharsdkError(`${entry.file} does not match the sha256 recorded in vocab.json: re-export the model`);
    }
    if (entry.order !== ORDER || entry.beta !== BETA || entry.weights.length !== ORDER + 1) {
      throw new CharsdkError(`vocab.json's memory was counted to order ${entry.order} with beta ${entry.beta}; this ` +
                             `charsdk counts to ${ORDER} with ${BETA}: build it again (make memory)`);
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const bwt = Uint16Array.from({ length: bytes.byteLength / 2 }, (_, i) => view.getUint16(2 * i, true));
    return new Memory(bwt, vocabSize, entry.weights);
  }

  /** How often `symbol` occurs in bwt[:at]. */
  occ(symbol, at) {
    const block = Math.floor(at / BLOCK);
    let count = this.occurrences[block * this.symbols + symbol];
    for (let i = block * BLOCK; i < at; i++) if (this.bwt[i] === symbol) count++;
    return count;
  }

  /** The memory's next-character probabilities after `context` (ids, the most recent last) and the depth
   * of the longest context counted (charsdk/memory.py's distributions, one row). */
  distribution(context) {
    const size = this.size, q = Float64Array.from(this.order0);
    let lo = [], hi = [], chars = [];
    for (let c = 0; c < size; c++) {
      if (this.starts[c + 2] > this.starts[c + 1]) { chars.push(c); lo.push(this.starts[c + 1]); hi.push(this.starts[c + 2]); }
    }
    let depth = 0;
    for (let k = 1; k <= Math.min(ORDER, context.length); k++) {
      const symbol = context[context.length - k] + 1, base = this.starts[symbol];
      const next = { lo: [], hi: [], chars: [] };
      let total = 0;
      chars.forEach((c, i) => {
        const l = base + this.occ(symbol, lo[i]), h = base + this.occ(symbol, hi[i]);
        if (h > l) { next.lo.push(l); next.hi.push(h); next.chars.push(c); total += h - l; }
      });
      if (total === 0) break;
      const counts = new Float64Array(size);
      next.chars.forEach((c, i) => { counts[c] = next.hi[i] - next.lo[i]; });
      for (let c = 0; c < size; c++) q[c] = (counts[c] + BETA * q[c]) / (total + BETA);
      depth = k;
      ({ lo, hi, chars } = next);
    }
    return { q, depth };
  }

  /** log((1 - w) p + w q) for log-probabilities `logP` [V] after `context`: the mixture a memory model draws
   * from and scores with. */
  mixed(logP, context) {
    const { q, depth } = this.distribution(context.slice(-ORDER));
    const w = this.weights[depth], keep = Math.log1p(-w), share = Math.log(w);
    return Float64Array.from(logP, (v, c) => logAddExp(keep + v, share + Math.log(q[c])));
  }
}
