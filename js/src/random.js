// The uniform numbers charsdk draws from, exactly as numpy makes them (charsdk/generator.py's
// stream_generators): numpy.random.SeedSequence(seed).spawn(count), one SFC64 per child, and
// Generator.random(dtype=float32). So a seed gives the same text in Python, Node and the browser.

import { webcrypto } from "./crypto.js";

const MASK32 = 0xffffffffn;
const MASK64 = 0xffffffffffffffffn;
const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const POOL_SIZE = 4;

const mul32 = (a, b) => Math.imul(a, b) >>> 0;

/** numpy's _coerce_to_uint32_array for a non-negative integer: its 32-bit words, least significant first. */
function words(value) {
  let x = BigInt(value);
  if (x === 0n) return [0];
  const out = [];
  while (x > 0n) {
    out.push(Number(x & MASK32));
    x >>= 32n;
  }
  return out;
}

/** numpy.random.SeedSequence: the entropy pool, mixed as numpy mixes it. */
export class SeedSequence {
  /**
   * @param {bigint | number | null} entropy a non-negative integer; null: 128 random bits (crypto)
   * @param {number[]} spawnKey the child's path from its root
   */
  constructor(entropy = null, spawnKey = []) {
    if (entropy === null) {
      const random = new Uint32Array(4);
      webcrypto.getRandomValues(random);
      entropy = random.reduceRight((acc, word) => (acc << 32n) | BigInt(word), 0n);
    }
    this.entropy = BigInt(entropy);
    this.spawnKey = spawnKey;
    this.childrenSpawned = 0;
    this.pool = this.#mix();
  }

  #mix() {
    let run = words(this.entropy);
    const spawn = this.spawnKey.flatMap(words);
    if (spawn.length > 0 && run.length < POOL_SIZE) run = run.concat(new Array(POOL_SIZE - run.length).fill(0));
    const entropy = run.concat(spawn);
    let hashConst = INIT_A;
    const hashmix = value => {
      value = (value ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_A);
      value = mul32(value, hashConst);
      return (value ^ (value >>> 16)) >>> 0;
    };
    const mix = (x, y) => {
      const result = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
      return (result ^ (result >>> 16)) >>> 0;
    };
    const pool = [];
    for (let i = 0; i < POOL_SIZE; i++) pool.push(hashmix(i < entropy.length ? entropy[i] : 0));
    for (let src = 0; src < POOL_SIZE; src++) {
      for (let dst = 0; dst < POOL_SIZE; dst++) {
        if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
      }
    }
    for (let src = POOL_SIZE; src < entropy.length; src++) {
      for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
    }
    return pool;
  }

  /** `count` 64-bit words of state (numpy's generate_state(count, np.uint64)), as BigInts. */
  generateState64(count) {
    let hashConst = INIT_B;
    const state = [];
    for (let i = 0; i < 2 * count; i++) {
      let value = (this.pool[i % POOL_SIZE] ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_B);
      value = mul32(value, hashConst);
      state.push((value ^ (value >>> 16)) >>> 0);
    }
    return Array.from({ length: count }, (_, i) => (BigInt(state[2 * i + 1]) << 32n) | BigInt(state[2 * i]));
  }

  /** numpy's spawn(count): children keyed by their index after the ones spawned before. */
  spawn(count) {
    const children = [];
    for (let i = this.childrenSpawned; i < this.childrenSpawned + count; i++) {
      children.push(new SeedSequence(this.entropy, [...this.spawnKey, i]));
    }
    this.childrenSpawned += count;
    return children;
  }
}

/** numpy's SFC64 (Chris Doty-Humphrey's Small Fast Chaotic generator), seeded from a SeedSequence. */
export class SFC64 {
  /** @param {SeedSequence} seedSequence */
  constructor(seedSequence) {
    const [a, b, c] = seedSequence.generateState64(3);
    this.s = [a, b, c, 1n];
    this.buffered = null; // numpy's next_uint32 keeps the upper half of a 64-bit output for next time
    for (let i = 0; i < 12; i++) this.next64();
  }

  next64() {
    const s = this.s;
    const tmp = (s[0] + s[1] + s[3]) & MASK64;
    s[3] = (s[3] + 1n) & MASK64;
    s[0] = s[1] ^ (s[1] >> 11n);
    s[1] = (s[2] + (s[2] << 3n)) & MASK64;
    s[2] = ((((s[2] << 24n) | (s[2] >> 40n)) & MASK64) + tmp) & MASK64;
    return tmp;
  }

  next32() {
    if (this.buffered !== null) {
      const value = this.buffered;
      this.buffered = null;
      return value;
    }
    const next = this.next64();
    this.buffered = Number(next >> 32n);
    return Number(next & MASK32);
  }

  /** Fill a Float32Array with numpy's Generator.random(dtype=float32) numbers: (u32 >> 8) / 2^24. */
  fillFloat32(out) {
    for (let i = 0; i < out.length; i++) out[i] = (this.next32() >>> 8) * (1 / 16777216);
    return out;
  }
}

/** One generator per stream, stream i's numbers depending on (seed, i) only (seed null: fresh entropy). */
export function streamGenerators(seed, count) {
  return new SeedSequence(seed).spawn(count).map(child => new SFC64(child));
}
