// The draw of charsdk/sampling.py in JavaScript, for the streams drawn outside the graph (those with
// penalties or biases, charsdk/controls.py): Gumbel-max over log p + T·g, with top-k / top-p, the noise in
// float32 as numpy computes it from the same uniform numbers, the rest in float64.

const LOG_LOG_CAP = 88.0; // log(-log u) for u = 0 is +inf: capped so that 0 · cap stays 0 for T = 0

/** T·g for one row of uniform numbers (float32, as numpy's gumbel_noise). */
export function gumbelNoise(uniforms, temperature) {
  const t = Math.fround(temperature);
  return Float32Array.from(uniforms, u => {
    const logLog = Math.min(Math.fround(Math.log(Math.fround(-Math.fround(Math.log(u))))), LOG_LOG_CAP);
    return Math.fround(logLog * -t);
  });
}

/** Which characters top-k / top-p keep, for probabilities reweighted by 1/T (sampling.py's allowed). */
export function allowed(probs, invTemperature, topK, topP) {
  const size = probs.length;
  let top = 0;
  for (const p of probs) top = Math.max(top, p);
  const w = Array.from(probs, p => (p === top ? 1 : (p / top) ** invTemperature)); // numpy: 1 ** inf is 1
  const k = topK === 0 ? size : Math.min(topK, size);
  const ranked = [...w].sort((a, b) => b - a);
  let total = 0;
  for (let i = 0; i < k; i++) total += ranked[i];
  let kept = 0, before = 0;
  for (let i = 0; i < k; i++) {
    const share = ranked[i] / total;
    if (before < topP) kept++;
    before += share;
  }
  const threshold = ranked[kept - 1];
  return w.map(v => v >= threshold);
}

/** argmax(log p + T·g) over the characters the options keep: one index from probabilities [V]. */
export function drawRow(probs, uniforms, option) {
  const noise = gumbelNoise(uniforms, option.temperature);
  const keep = option.filters ? allowed(probs, option.temperature === 0 ? Infinity : 1 / option.temperature,
                                        option.topK, option.topP < 1 ? option.topP : Infinity) : null;
  let best = -1, bestScore = -Infinity;
  for (let i = 0; i < probs.length; i++) {
    if (keep && !keep[i]) continue;
    const score = Math.log(probs[i]) + noise[i];
    if (best < 0 || score > bestScore) { best = i; bestScore = score; }
  }
  return best;
}

/** Log-probabilities (float64) of logits. */
export function logSoftmax(logits) {
  let top = -Infinity;
  for (const v of logits) top = Math.max(top, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - top);
  const log = Math.log(sum);
  return Float64Array.from(logits, v => v - top - log);
}
