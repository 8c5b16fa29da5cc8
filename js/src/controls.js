// Penalties and biases, as charsdk/controls.py defines them: logitBias ({character or id: bias}, -100
// bans), presencePenalty and frequencyPenalty (OpenAI's, over the generated characters), repetitionPenalty
// over the last repetitionWindow characters read (Hugging Face's, llama.cpp's).

import { CharsdkError } from "./vocab.js";

const BAN = -100;
export const REPETITION_WINDOW = 64;

function number(value, name, low, high, openLow = false) {
  if (typeof value !== "number" || !Number.isFinite(value) || value > high || (openLow ? value <= low : value < low)) {
    const span = openLow && high === Infinity ? `> ${low}` : `from ${low} to ${high}`;
    throw new CharsdkError(`${name} must be a number ${span}, got ${value}`, name);
  }
  return value;
}

/** The checked controls, or null when all are neutral (the stream is then drawn inside the graph). */
export function checkControls(vocab, { logitBias = null, presencePenalty = 0, frequencyPenalty = 0,
                                       repetitionPenalty = 1, repetitionWindow = REPETITION_WINDOW } = {}) {
  const presence = number(presencePenalty, "presencePenalty", -2, 2);
  const frequency = number(frequencyPenalty, "frequencyPenalty", -2, 2);
  const repetition = number(repetitionPenalty, "repetitionPenalty", 0, Infinity, true);
  if (!Number.isInteger(repetitionWindow) || repetitionWindow < 1) {
    throw new CharsdkError(`repetitionWindow must be an integer >= 1, got ${repetitionWindow}`, "repetitionWindow");
  }
  let bias = null;
  if (logitBias && Object.keys(logitBias).length) {
    bias = new Float64Array(vocab.size);
    for (const [key, value] of Object.entries(logitBias)) bias[charIndex(vocab, key)] = number(value, "logitBias", -100, 100);
  }
  if (!bias && presence === 0 && frequency === 0 && repetition === 1) return null;
  if (bias && bias.every(b => b <= BAN)) throw new CharsdkError("logitBias bans every character: leave at least one above -100", "logitBias");
  return { bias, presence, frequency, repetition, window: repetitionWindow };
}

function charIndex(vocab, key) {
  if (/^\d{2,}$/.test(key)) {
    const index = Number(key);
    if (index >= vocab.size) throw new CharsdkError(`logitBias has the id ${index}; this model's ids are 0 to ${vocab.size - 1}`, "logitBias");
    return index;
  }
  const char = [...key].length === 1 ? vocab.normalize(key) : null;
  const index = char === null ? -1 : vocab.chars.indexOf(char);
  if (index < 0) {
    throw new CharsdkError(`logitBias has the key ${JSON.stringify(key)}, which is neither one of this model's characters nor an id from 0 to ${vocab.size - 1}`, "logitBias");
  }
  return index;
}

/** One stream's logits [V] after its controls (float64): counts of its generated characters, recent ids. */
export function applyControls(controls, logits, counts, recent) {
  const z = Float64Array.from(logits);
  if (controls.repetition !== 1) {
    for (const id of new Set(recent.slice(-controls.window))) {
      z[id] = z[id] > 0 ? z[id] / controls.repetition : z[id] * controls.repetition;
    }
  }
  if (controls.frequency || controls.presence) {
    for (let i = 0; i < z.length; i++) z[i] -= controls.frequency * counts[i] + controls.presence * (counts[i] > 0 ? 1 : 0);
  }
  if (controls.bias) {
    for (let i = 0; i < z.length; i++) z[i] = controls.bias[i] <= BAN ? -Infinity : z[i] + controls.bias[i];
  }
  return z;
}
