// Text generation with a charsdk model in onnxruntime-web, in the browser and in Node: the same calls of
// the same model.onnx as Python's charsdk/generator.py (prime on the seed, then chunks of drawn
// characters, the sampling rules inside the graph), fed the same seeded uniform numbers (random.js), so a
// seed gives the same text as Python's `Generator.generate`.

import { choiceIds, Pattern } from "./constraints.js";
import { ItemRecord } from "./items.js";
import { Memory, ORDER } from "./memory.js";
import { applyControls, checkControls, REPETITION_WINDOW } from "./controls.js";
import { webcrypto } from "./crypto.js";
import { streamGenerators } from "./random.js";
import { drawRow, gumbelNoise, logSoftmax } from "./sampling.js";
import { CharsdkError, Vocab } from "./vocab.js";

export const MODES = ["stateful", "window"];
const FIRST_CHUNK = 16; // characters in the first call: the first ones show quickly
const CHUNK = 1024; // at most per call after that (each call 4x the one before)
const UNIFORMS_PER_CALL = 1 << 21; // uniform numbers per call, whatever n is
const SCORE_CHUNK = 4096; // characters read per call when scoring a text
const ITEM_ROUNDS = 20; // batches drawn at most to find the items asked for

/** Chunk sizes adding up to `length`: FIRST_CHUNK, then 4x as many per call up to CHUNK, fewer for many
 * streams (charsdk/generator.py's chunk_sizes). */
export function* chunkSizes(length, streams, vocabSize) {
  const limit = Math.max(1, Math.floor(UNIFORMS_PER_CALL / (streams * vocabSize)));
  let done = 0, size = FIRST_CHUNK;
  while (done < length) {
    const step = Math.min(size, limit, length - done);
    yield step;
    done += step;
    size = Math.min(4 * size, CHUNK);
  }
}

const isInteger = v => (typeof v === "number" && Number.isInteger(v)) || typeof v === "bigint";

/** One stream's options, checked as Python's SamplingOptions.check checks them. */
function samplingOptions(temperature, topK, topP) {
  if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature < 0) {
    throw new CharsdkError(`temperature must be a finite number >= 0 (0 = greedy), got ${temperature}`, "temperature");
  }
  if (!Number.isInteger(topK) || topK < 0) {
    throw new CharsdkError(`topK must be an integer >= 0 (0 = no limit), got ${topK}`, "topK");
  }
  if (typeof topP !== "number" || !(topP > 0 && topP <= 1)) {
    throw new CharsdkError(`topP must be in (0, 1] (1 = no limit), got ${topP}`, "topP");
  }
  return { temperature, topK, topP, filters: topK > 0 || topP < 1 };
}

/** One stream's text as its drawn ids arrive: at most `length` characters, cut before the first stop
 * string, holding back the characters that could start one (charsdk/generator.py's TextDecoder). */
class TextDecoder {
  constructor(chars, length, stop) {
    this.chars = chars; this.length = length; this.stop = stop;
    this.hold = Math.max(1, ...stop.map(s => [...s].length)) - 1;
    this.text = []; this.sent = 0; this.drawn = 0; this.finishReason = null;
  }

  /** The text now certain from ids drawn after the previous ones; `end`: the stream ends after them ("stop":
   * a pattern's end, a choice made), its held characters sent. */
  feed(ids, end = false) {
    if (this.finishReason) return "";
    end = end && ids.length <= this.length - this.drawn; // else `length` cuts it first
    if (end) this.length = this.drawn + ids.length;
    ids = ids.slice(0, this.length - this.drawn);
    this.drawn += ids.length;
    const searched = Math.max(this.text.length - this.hold, 0);
    for (const id of ids) this.text.push(this.chars[id]);
    const joined = this.text.join("");
    const searchedAt = this.text.slice(0, searched).join("").length; // in UTF-16 units
    const cuts = this.stop.map(s => joined.indexOf(s, searchedAt)).filter(i => i >= 0);
    if (cuts.length) {
      this.text = [...joined.slice(0, Math.min(...cuts))];
      this.finishReason = "stop";
    } else if (this.drawn === this.length) {
      this.finishReason = end ? "stop" : "length";
    }
    const last = this.finishReason ? this.text.length : this.text.length - this.hold;
    const piece = this.text.slice(this.sent, Math.max(last, this.sent)).join("");
    this.sent = Math.max(last, this.sent);
    return piece;
  }
}

async function readLocation(location, file, binary) {
  const isUrl = typeof location !== "string" || /^[a-z]+:\/\//i.test(location) || typeof process === "undefined";
  if (isUrl) {
    const url = new URL(file, String(location).endsWith("/") ? String(location) : `${location}/`);
    const response = await fetch(url);
    if (!response.ok) throw new CharsdkError(`${url} could not be fetched (HTTP ${response.status})`);
    return binary ? new Uint8Array(await response.arrayBuffer()) : response.json();
  }
  const { readFile } = await import("node:fs/promises");
  const { join } = await import("node:path");
  let data;
  try {
    data = await readFile(join(location, file));
  } catch (error) {
    throw new CharsdkError(`${join(location, file)} cannot be read: ${error.code || error.message}`);
  }
  return binary ? new Uint8Array(data) : JSON.parse(data.toString("utf-8"));
}

async function sha256Hex(bytes) {
  const digest = await webcrypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), b => b.toString(16).padStart(2, "0")).join("");
}

/** A loaded model: `const gen = await Generator.load(location); await gen.generate("seed text")`. */
export class Generator {
  /** onnxruntime-web's module: index.js sets it; a Web Worker that imports ort by URL sets it itself. */
  static ort = null;

  constructor(vocab, session, ort, trainingItems = null, memory = null) {
    this.vocab = vocab;
    this.session = session;
    this.ort = ort;
    this.trainingItems = trainingItems; // a list model's ItemRecord, or null
    this.memory = memory; // the model's n-gram memory of its training text (memory.js), or null
    // a graph built since 2026-12-03 masks a pattern's draws inside the call (charsdk/engine.py's _draw_masked)
    this.masksInCall = session.inputNames.includes("pattern_mask");
  }

  /**
   * A model directory: a URL (browser, Node) or a directory path (Node) holding vocab.json and the ONNX
   * file it names, which must match the sha256 vocab.json records.
   * @param {string | URL} location
   * @param {{sessionOptions?: object, ort?: object}} [options] sessionOptions: passed to
   *   ort.InferenceSession.create; ort: onnxruntime-web's module (default: Generator.ort)
   */
  static async load(location, { sessionOptions = {}, ort = Generator.ort } = {}) {
    const vocab = new Vocab(await readLocation(location, "vocab.json", false));
    const bytes = await readLocation(location, vocab.onnxFile, true);
    if ((await sha256Hex(bytes)) !== vocab.onnxSha256) {
      throw new CharsdkError(`${vocab.onnxFile} does not match the sha256 recorded in vocab.json: the files ` +
                             "come from different exports; re-export the model so they belong together");
    }
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], ...sessionOptions });
    const record = vocab.items && await ItemRecord.of(await readLocation(location, vocab.items.file, true),
                                                      vocab.items.sha256, sha256Hex);
    const memory = vocab.memory && await Memory.of(await readLocation(location, vocab.memory.file, true),
                                                   vocab.memory, vocab.size, sha256Hex);
    return new Generator(vocab, session, ort, record || null, memory || null);
  }

  // -- the graph ----------------------------------------------------------------------------------

  zeroState(rows) {
    return Object.fromEntries(this.vocab.states.map(s => [s.input, { data: new Float32Array(rows * s.size), rows, size: s.size }]));
  }

  /** One call of model.onnx for B streams: read ids [B][T], then draw K characters (uniforms [B, K, V]). */
  async run(ids, state, { logits = null, uniforms = null, draws = 0, options = null, window = 0, start = 0,
                         automaton = null } = {}) {
    const streams = ids.length, size = this.vocab.size, reads = ids[0]?.length ?? 0;
    options = options || Array(streams).fill(samplingOptions(0.5, 0, 1));
    const ort = this.ort;
    const i64 = values => BigInt64Array.from(values, v => BigInt(v));
    const feed = {
      ids: new ort.Tensor("int64", i64(ids.flat()), [streams, reads]),
      logits: new ort.Tensor("float32", logits || new Float32Array(streams * size), [streams, size]),
      uniforms: new ort.Tensor("float32", uniforms || new Float32Array(0), [streams, draws, size]),
      temperature: new ort.Tensor("float32", Float32Array.from(options, o => o.temperature), [streams]),
      top_k: new ort.Tensor("int64", i64(options.map(o => o.topK)), [streams]),
      // top_p 1 (no limit) as +inf: the graph's cumulative sum may reach 1.0 by rounding before the end
      top_p: new ort.Tensor("float32", Float32Array.from(options, o => (o.topP < 1 ? o.topP : Infinity)), [streams]),
      use_filter: new ort.Tensor("bool", Uint8Array.of(options.some(o => o.filters) ? 1 : 0), []),
      window: new ort.Tensor("int64", BigInt64Array.of(BigInt(window)), []),
      start: new ort.Tensor("int64", BigInt64Array.of(BigInt(start)), []),
    };
    for (const [name, s] of Object.entries(state)) feed[name] = new ort.Tensor("float32", s.data, [s.rows, s.size]);
    if (this.masksInCall) { // each stream's state of the automata that mask its draws (none: state 0)
      const { mask, next, state: states } = automaton ?? { mask: new Float32Array(size), next: new BigInt64Array(size),
                                                           state: new BigInt64Array(1) };
      feed.pattern_mask = new ort.Tensor("float32", mask, [mask.length / size, size]);
      feed.pattern_next = new ort.Tensor("int64", next, [mask.length / size, size]);
      feed.pattern_state = new ort.Tensor("int64", states, [states.length]);
    }
    const out = await this.session.run(feed);
    const newState = {};
    for (const s of this.vocab.states) {
      const rows = out[s.output].dims[0];
      newState[s.input] = { data: out[s.output].data, rows, size: s.size };
    }
    return { logits: out.logits_out.data, state: newState, drawn: out.ids_out, read: out.read_logits };
  }

  /** Read the seed once and copy the result to every stream (charsdk/generator.py's _prime). */
  async prime(ids, streams, mode) {
    const maxlen = this.vocab.maxlen;
    const repeatRows = (data, times) => { const out = new Float32Array(data.length * times); for (let i = 0; i < times; i++) out.set(data, i * data.length); return out; };
    if (mode === "window" && ids.length) {
      const seed = ids.slice(-maxlen);
      const { logits, state } = await this.run([seed], this.zeroState(maxlen), { window: maxlen });
      const tiled = Object.fromEntries(Object.entries(state).map(([k, s]) => [k, { ...s, data: repeatRows(s.data, streams), rows: s.rows * streams }]));
      return { logits: repeatRows(logits, streams), state: tiled, read: seed.length };
    }
    const { logits, state } = await this.run([ids.length ? ids : [this.vocab.noCharId]], this.zeroState(1));
    if (mode === "window") return { logits: repeatRows(logits, streams), state: this.zeroState(streams * maxlen), read: 0 };
    const repeated = Object.fromEntries(Object.entries(state).map(([k, s]) => [k, { ...s, data: repeatRows(s.data, streams), rows: streams }]));
    return { logits: repeatRows(logits, streams), state: repeated, read: 0 };
  }

  /** The logits each of B streams draws from ([B * V]): the model's, or with a memory their mixture with the
   * memory's counts after each stream's text (contexts: ids, the most recent last), as log-probabilities
   * (charsdk/memory_backend.py's next_log_probs). */
  drawnFrom(logits, contexts) {
    if (!this.memory) return logits;
    const size = this.vocab.size, out = new Float64Array(contexts.length * size);
    contexts.forEach((context, b) => {
      out.set(this.memory.mixed(logSoftmax(logits.subarray(b * size, (b + 1) * size)), context), b * size);
    });
    return out;
  }

  // -- the public API -----------------------------------------------------------------------------

  async plan(seedText, { length = 400, temperature = 0.5, n = 1, topK = 0, topP = 1.0, stop = [], seed = null,
                         mode = "stateful", onUnknown = "error", logprobs = null, logitBias = null,
                         presencePenalty = 0, frequencyPenalty = 0, repetitionPenalty = 1,
                         repetitionWindow = REPETITION_WINDOW, regex = null, choice = null } = {}) {
    if (!Number.isInteger(length) || length < 0) throw new CharsdkError(`length must be an integer >= 0, got ${length}`, "length");
    if (!Number.isInteger(n) || n < 1) throw new CharsdkError(`n must be an integer >= 1, got ${n}`, "n");
    if (seed !== null && (!isInteger(seed) || seed < 0)) {
      throw new CharsdkError(`seed must be an integer >= 0 (or null for a fresh one), got ${seed}`, "seed");
    }
    if (seedText !== null && seedText !== undefined && typeof seedText !== "string") {
      throw new CharsdkError(`seedText must be a string (or null for the model's own), got ${typeof seedText}`, "seedText");
    }
    if (!MODES.includes(mode)) throw new CharsdkError(`mode must be one of ${MODES.join(", ")}, got ${JSON.stringify(mode)}`, "mode");
    stop = typeof stop === "string" ? [stop] : Array.from(stop || []);
    if (stop.some(s => typeof s !== "string" || !s)) throw new CharsdkError("stop must be a list of non-empty strings", "stop");
    const temperatures = Array.isArray(temperature) ? temperature : [temperature];
    if (!temperatures.length) throw new CharsdkError("temperature must be a number or a non-empty list of numbers", "temperature");
    const options = temperatures.flatMap(t => Array(n).fill(null).map(() => samplingOptions(t, topK, topP)));
    if (logprobs !== null && (!Number.isInteger(logprobs) || logprobs < 0 || logprobs > 20)) {
      throw new CharsdkError(`logprobs must be an integer from 0 to 20 (or null for no scores), got ${logprobs}`, "logprobs");
    }
    const controls = checkControls(this.vocab, { logitBias, presencePenalty, frequencyPenalty, repetitionPenalty,
                                                 repetitionWindow });
    const ids = this.vocab.encode(seedText ?? this.vocab.defaultSeedText, onUnknown);
    if (regex !== null && choice !== null) throw new CharsdkError("regex and choice cannot be combined: give one of them", "regex");
    const pattern = regex === null ? null : await Pattern.compile(regex, this.vocab);
    if (pattern && pattern.distance[pattern.start] > length) {
      throw new CharsdkError(`regex ${JSON.stringify(regex)} needs at least ${pattern.distance[pattern.start]} characters, ` +
                             `more than length=${length}`, "length");
    }
    const choices = choice === null ? null : choiceIds(choice, this.vocab);
    return { ids, options, rngs: streamGenerators(seed, options.length), length, stop, mode, logprobs, controls,
             pattern, choices, many: Array.isArray(temperature) || n > 1 };
  }

  /**
   * The new text of every stream of a plan, chunk by chunk (one model call per chunk; a plan with
   * penalties, biases, a pattern or a memory, one per character, drawn here as charsdk/engine.py draws it; a choice,
   * at once), each piece with its characters' scores when the plan asks for logprobs:
   * [{text, scores, finishReason}] per chunk.
   */
  async *texts(plan) {
    if (plan.length === 0) return;
    const streams = plan.options.length, size = this.vocab.size;
    const decoders = plan.options.map(() => new TextDecoder(this.vocab.chars, plan.length, plan.stop));
    if (plan.choices) {
      yield await this.choose(plan, decoders);
      return;
    }
    const scores = plan.options.map(() => []);
    const drawing = plan.options.map(() => ({ counts: new Float64Array(size), state: plan.pattern?.start ?? 0,
                                              recent: plan.ids.slice(-(plan.controls?.window ?? 0)), endsAt: null }));
    const contexts = plan.options.map(() => plan.ids.slice(-ORDER)); // what a memory counts after
    let { logits, state, read } = await this.prime(plan.ids, streams, plan.mode);
    const window = plan.mode === "window" ? this.vocab.maxlen : 0;
    const noIds = Array.from({ length: streams }, () => []);
    for (const k of chunkSizes(plan.length, streams, size)) {
      const uniforms = new Float32Array(streams * k * size);
      plan.rngs.forEach((rng, b) => rng.fillFloat32(uniforms.subarray(b * k * size, (b + 1) * k * size)));
      const drawn = Array.from({ length: streams }, () => []); // [B][k]
      const before = [];  // the logits each character was drawn from: [k][B * V]
      let first = 0; // where the characters drawn one per call start
      if (plan.pattern && !plan.controls && this.masksInCall && !this.memory) {
        const out = await this.run(noIds, state, { logits, uniforms, draws: k, options: plan.options, window, start: read,
                                                   automaton: this.automaton(plan.pattern, drawing, decoders) });
        const ids = Array.from(out.drawn.data, Number); // [k, B]
        const rows = Array.from({ length: streams }, () => []);
        ids.forEach((id, i) => rows[i % streams].push(id));
        first = this.follow(plan.pattern, rows, drawing, decoders);
        rows.forEach((row, b) => drawn[b].push(...row.slice(0, first)));
        if (plan.logprobs !== null && first > 0) {
          before.push(logits);
          const again = first > 1 ? await this.run(rows.map(r => r.slice(0, first - 1)), state, { window, start: read }) : null;
          for (let j = 0; j < first - 1; j++) before.push(again.read.data.subarray(j * streams * size, (j + 1) * streams * size));
        }
        if (first === k) ({ logits, state } = out);
        else if (first) ({ logits, state } = await this.run(rows.map(r => r.slice(0, first)), state, { window, start: read }));
        read += first;
      }
      if (plan.controls || plan.pattern || this.memory) {
        for (let j = first; j < k; j++) {
          const from = this.drawnFrom(logits, contexts);
          before.push(from);
          const ids = plan.options.map((option, b) => {
            const row = (b * k + j) * size, d = decoders[b];
            const id = this.drawOne(plan, from.subarray(b * size, (b + 1) * size), uniforms.subarray(row, row + size),
                                    option, drawing[b], d.finishReason ? null : d.length - d.drawn - j, j);
            drawn[b].push(id);
            contexts[b] = [...contexts[b], id].slice(-ORDER);
            return id;
          });
          ({ logits, state } = await this.run(ids.map(id => [id]), state, { window, start: read }));
          read += 1;
        }
      } else {
        const out = await this.run(noIds, state, { logits, uniforms, draws: k, options: plan.options, window, start: read });
        const ids = Array.from(out.drawn.data, Number); // [k, B]
        ids.forEach((id, i) => drawn[i % streams].push(id));
        if (plan.logprobs !== null) {
          before.push(logits);
          const again = await this.run(drawn.map(d => d.slice(0, -1)), state, { window, start: read });
          for (let j = 0; j < k - 1; j++) before.push(again.read.data.subarray(j * streams * size, (j + 1) * streams * size));
        }
        ({ logits, state } = out);
        read += k;
      }
      yield decoders.map((d, b) => {
        const sent = d.sent, ends = drawing[b].endsAt !== null;
        const ids = ends ? drawn[b].slice(0, drawing[b].endsAt) : drawn[b];
        if (plan.logprobs !== null) {
          ids.slice(0, d.length - d.drawn).forEach((id, j) =>
            scores[b].push(this.charScore(id, before[j].subarray(b * size, (b + 1) * size), plan.logprobs)));
        }
        const text = d.feed(ids, ends);
        return { text, scores: scores[b].slice(sent, sent + [...text].length), finishReason: d.finishReason };
      });
      if (decoders.every(d => d.finishReason)) return;
    }
  }

  /** The automaton the graph masks a chunk's draws with: state 0 allows every character (a stream that
   * has ended), the pattern's states after it (charsdk/constraints.py's Automaton). */
  automaton(pattern, drawing, decoders) {
    pattern.graph ??= pattern.graphTables(0);
    const size = this.vocab.size, mask = new Float32Array(size + pattern.graph.mask.length);
    const next = new BigInt64Array(size + pattern.graph.next.length);
    mask.set(pattern.graph.mask, size);
    next.set(pattern.graph.next, size);
    const state = BigInt64Array.from(drawing, (d, b) => BigInt(d.endsAt === null && !decoders[b].finishReason ? 1 + d.state : 0));
    return { mask, next, state };
  }

  /** How many characters of a chunk the graph drew masked stand for every stream (charsdk/engine.py's
   * _follow): each stream's automaton moved over them, and a stream that ends among them ended. */
  follow(pattern, rows, drawing, decoders) {
    const walks = [];
    rows.forEach((row, b) => {
      if (drawing[b].endsAt === null && !decoders[b].finishReason) {
        walks.push([drawing[b], pattern.walk(drawing[b].state, row, decoders[b].length - decoders[b].drawn)]);
      }
    });
    const kept = Math.min(rows[0].length, ...walks.filter(([, w]) => !w.ends).map(([, w]) => w.at));
    for (const [d, { at, ends, states }] of walks) {
      d.state = states[Math.min(at, kept)];
      if (ends && at < kept) d.endsAt = at;
    }
    return kept;
  }

  /**
   * One character of a controlled stream (charsdk/engine.py's _draw_controlled and _adjusted): its
   * controls, its pattern's mask where the pattern has not accepted yet, the draw; where the pattern
   * accepts, a character it does not allow ends the sample there (`endsAt`). `left`: the characters the
   * stream may still draw, this one included (null: it has finished).
   */
  drawOne(plan, logits, uniforms, option, drawing, left, j) {
    const pattern = left === null || drawing.endsAt !== null ? null : plan.pattern;
    const z = plan.controls ? applyControls(plan.controls, logits, drawing.counts, drawing.recent) : Float64Array.from(logits);
    if (pattern && !pattern.accepting[drawing.state]) {
      for (let v = 0; v < z.length; v++) if (!pattern.allows(drawing.state, v, left)) z[v] = -Infinity;
    }
    const id = drawRow(logSoftmax(z).map(Math.exp), uniforms, option);
    if (pattern) {
      if (!pattern.allows(drawing.state, id, left)) drawing.endsAt = j;
      drawing.state = pattern.next(drawing.state, id);
    }
    if (plan.controls && drawing.endsAt === null) {
      drawing.counts[id] += 1;
      drawing.recent.push(id);
      drawing.recent.splice(0, drawing.recent.length - plan.controls.window);
    }
    return id;
  }

  /**
   * Each stream's choice (charsdk/engine.py's _choose): every choice's probability after the seed text, read
   * character by character, and one drawn per stream by Gumbel-max at its temperature; the stream ends with it.
   */
  async choose(plan, decoders) {
    const window = plan.mode === "window" ? this.vocab.maxlen : 0;
    const primed = await this.prime(plan.ids, 1, plan.mode);
    const totals = [], steps = [];
    for (const ids of plan.choices) {
      let { logits, state, read } = primed, total = 0;
      const seen = [];
      for (const [j, char] of ids.entries()) {
        const from = this.drawnFrom(logits, [[...plan.ids, ...ids.slice(0, j)].slice(-ORDER)]);
        seen.push(from);
        total += logSoftmax(from)[char];
        ({ logits, state } = await this.run([[char]], state, { window, start: read }));
        read += 1;
      }
      totals.push(total);
      steps.push(seen);
    }
    return plan.options.map((option, b) => {
      const noise = gumbelNoise(plan.rngs[b].fillFloat32(new Float32Array(totals.length)), option.temperature);
      let pick = 0;
      totals.forEach((total, i) => { if (total + noise[i] > totals[pick] + noise[pick]) pick = i; });
      const ids = plan.choices[pick], text = decoders[b].feed(ids, true);
      const scores = plan.logprobs === null ? [] : ids.slice(0, [...text].length).map((id, j) => this.charScore(id, steps[pick][j], plan.logprobs));
      return { text, scores, finishReason: decoders[b].finishReason };
    });
  }

  /** A character's score (Python's CharScore): its log-probability under the model's logits and the `top`
   * likeliest characters, most likely first. */
  charScore(id, logits, top) {
    const logP = logSoftmax(logits);
    const ranked = Array.from(logP.keys()).sort((a, b) => logP[b] - logP[a] || a - b).slice(0, top);
    if (!ranked.includes(id)) ranked.push(id); // the alternatives hold the character itself (vLLM's rule)
    return { char: this.vocab.chars[id], logprob: logP[id], top: ranked.map(i => [this.vocab.chars[i], logP[i]]) };
  }

  /**
   * The `length` characters after `seedText` (null: the model's stored seed). Options as Python's
   * generate: temperature (0: greedy; an array: n samples per temperature), topK, topP, stop, seed (same
   * seed, same text), n, mode ("stateful" or "window"), onUnknown ("error" or "skip"). Returns a string,
   * or an array for n > 1 or an array of temperatures.
   */
  async generate(seedText = null, options = {}) {
    const plan = await this.plan(seedText, options);
    const samples = plan.options.map(() => ({ text: "", scores: [], finishReason: "length" }));
    for await (const pieces of this.texts(plan)) {
      pieces.forEach((p, b) => {
        samples[b].text += p.text;
        samples[b].scores.push(...p.scores);
        samples[b].finishReason = p.finishReason ?? samples[b].finishReason;
      });
    }
    const out = plan.logprobs === null ? samples.map(s => s.text) : samples;
    return plan.many ? out : out[0];
  }

  /** The generated characters of one sample, as they are produced (options as generate, n = 1). */
  async *stream(seedText = null, options = {}) {
    if (Array.isArray(options.temperature) || (options.n ?? 1) !== 1) {
      throw new CharsdkError("stream gives one sample: one temperature, n = 1", "n");
    }
    const plan = await this.plan(seedText, options);
    for await (const [piece] of this.texts(plan)) yield* (plan.logprobs === null ? piece.text : piece.scores);
  }

  /** What an item is drawn after: the stored seed text's whole lines (a list model's are held-out items),
   * else a newline (Python's Generator.item_prompt). */
  get itemPrompt() {
    const seed = this.vocab.defaultSeedText;
    return seed.includes("\n") ? seed.slice(0, seed.lastIndexOf("\n") + 1) : "\n";
  }

  /**
   * `count` complete items of a list model (Python's Generator.items, the same items for a seed): each drawn
   * after `itemPrompt` until the model draws the newline; one longer than maxLength is dropped. newOnly:
   * only items not in the training list (the model's record). Returns {items, inTraining, new, known}.
   */
  async items(count = 20, { temperature = 1.0, newOnly = false, seed = null, maxLength = 200, mode = "stateful" } = {}) {
    if (!this.vocab.index.has("\n")) throw new CharsdkError("this model has no newline: items need a model trained on one item per line");
    if (newOnly && !this.trainingItems) {
      throw new CharsdkError("newOnly needs a record of the training items, which this model has none of (an export " +
                             "of a one-item-per-line corpus writes one)", "newOnly");
    }
    if (!Number.isInteger(count) || count < 1) throw new CharsdkError(`count must be an integer >= 1, got ${count}`, "count");
    const record = this.trainingItems, found = [];
    let inTraining = 0, fresh = 0;
    for (let round = 0; round < ITEM_ROUNDS && found.length < count; round++) {
      const plan = await this.plan(this.itemPrompt, { length: maxLength, temperature, n: 2 * (count - found.length),
                                                      seed: seed === null ? null : seed + round, mode, regex: "[^\n]+" });
      const texts = plan.options.map(() => ""), finishes = plan.options.map(() => null);
      for await (const pieces of this.texts(plan)) {
        pieces.forEach((p, b) => { texts[b] += p.text; finishes[b] = p.finishReason; });
      }
      for (const [b, item] of texts.entries()) {
        if (finishes[b] !== "stop") continue; // longer than maxLength: not a complete item
        const known = record !== null && record.has(item);
        inTraining += known ? 1 : 0;
        fresh += record !== null && !known ? 1 : 0;
        if (!(newOnly && known)) found.push(item);
        if (found.length === count) break;
      }
    }
    return { items: found.slice(0, count), inTraining, new: fresh, known: record !== null };
  }

  /**
   * The distribution of the character after `text`: [[character, probability], ...], most likely first
   * (ml5.js charRNN's predict; Python's Generator.predict). topK > 0 keeps the k likeliest.
   */
  async predict(text = "", { topK = 0, mode = "stateful", onUnknown = "error" } = {}) {
    if (!MODES.includes(mode)) throw new CharsdkError(`mode must be one of ${MODES.join(", ")}, got ${JSON.stringify(mode)}`, "mode");
    if (!Number.isInteger(topK) || topK < 0) throw new CharsdkError(`topK must be an integer >= 0 (0 = every character), got ${topK}`, "topK");
    const ids = this.vocab.encode(text, onUnknown);
    const logits = this.drawnFrom((await this.prime(ids, 1, mode)).logits, [ids.slice(-ORDER)]);
    let top = -Infinity;
    for (const v of logits) top = Math.max(top, v);
    const weights = Array.from(logits, v => Math.exp(v - top));
    const total = weights.reduce((a, b) => a + b, 0);
    const ranked = weights.map((w, i) => [i, w / total]).sort((a, b) => b[1] - a[1] || a[0] - b[0]);
    return ranked.slice(0, topK || undefined).map(([i, p]) => [this.vocab.chars[i], p]);
  }

  /** Bits per character on `text`, scoring every position with maxlen characters before it. */
  async evaluate(text, { mode = "stateful", onUnknown = "error" } = {}) {
    if (!MODES.includes(mode)) throw new CharsdkError(`mode must be one of ${MODES.join(", ")}, got ${JSON.stringify(mode)}`, "mode");
    const ids = this.vocab.encode(text, onUnknown), maxlen = this.vocab.maxlen, size = this.vocab.size;
    if (ids.length <= maxlen) throw new CharsdkError(`the text needs more than ${maxlen} characters to be scored, it has ${ids.length}`);
    const window = mode === "window" ? maxlen : 0;
    let state = this.zeroState(window ? maxlen : 1), total = 0, read = 0;
    while (read < ids.length - 1) {
      const chunk = ids.slice(read, Math.min(read + SCORE_CHUNK, ids.length - 1));
      const out = await this.run([chunk], state, { window, start: read });
      state = out.state;
      for (let t = 0; t < chunk.length; t++) {
        const target = read + 1 + t;
        if (target < maxlen) continue;
        const row = this.drawnFrom(out.read.data.subarray(t * size, (t + 1) * size),
                                   [ids.slice(Math.max(0, target - ORDER), target)]);
        let top = -Infinity;
        for (const v of row) top = Math.max(top, v);
        let sum = 0;
        for (const v of row) sum += Math.exp(v - top);
        total += row[ids[target]] - top - Math.log(sum);
      }
      read += chunk.length;
    }
    const scored = ids.length - maxlen, bits = -total / scored / Math.LN2;
    return { mode, chars_scored: scored, bits_per_char: bits, perplexity: 2 ** bits };
  }
}
