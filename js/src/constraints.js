// Generation that obeys a pattern, as charsdk/constraints.py defines it: a regular expression (JavaScript's
// syntax, with the u flag) compiled by refa into an automaton over the model's own characters, which masks
// each draw; or a choice among strings, one drawn per stream from their probabilities after the seed text.
// refa is imported when a pattern is first compiled, so that the rest of the runtime loads without it.

import { CharsdkError } from "./vocab.js";

export const DEAD = -1; // no transition: the character leaves the pattern (or can no longer reach acceptance)

/** The automaton of `regex` over the vocabulary's characters (charsdk/constraints.py's Pattern). */
export class Pattern {
  constructor(source, table, accepting, start, distance, size) {
    Object.assign(this, { source, table, accepting, start, distance, size });
  }

  /** The next state after character `id` from `state`, or DEAD. */
  next(state, id) {
    return this.table[state * this.size + id];
  }

  /** Whether character `id` keeps `state` able to accept within the `left` characters it may still draw
   * (this one included). */
  allows(state, id, left) {
    const after = this.next(state, id);
    return after >= 0 && this.distance[after] <= left - 1;
  }

  /** The fewest characters left (this one included) at which `allows` is every character the automaton
   * allows from each state: 1 + the largest distance a character leads to (charsdk/constraints.py's room). */
  get room() {
    if (!this._room) {
      this._room = Float64Array.from(this.accepting, (_, state) => {
        let most = 0;
        for (let v = 0; v < this.size; v++) {
          const after = this.next(state, v);
          if (after >= 0) most = Math.max(most, this.distance[after] + 1);
        }
        return most;
      });
    }
    return this._room;
  }

  /**
   * The automaton over characters drawn in one call, `left` characters left before the first, up to the
   * first that does not stand (charsdk/constraints.py's walk, for draws the graph masked): where the
   * pattern accepts, one it does not allow ends the sample; where it does not, the draw stands wherever
   * the room left does not narrow the graph's mask. Returns {at, ends, states}.
   */
  walk(state, chars, left) {
    const states = [state];
    for (let at = 0; at < chars.length; at++) {
      const allowed = this.allows(state, chars[at], left - at);
      if (this.accepting[state] && !allowed) return { at, ends: true, states };
      if (!this.accepting[state] && this.room[state] > left - at) return { at, ends: false, states };
      state = this.next(state, chars[at]);
      states.push(state);
    }
    return { at: chars.length, ends: false, states };
  }

  /** The automaton as the graph masks with it: additive masks [states * V] (0 where a character is allowed
   * or the state accepts, -inf elsewhere) and next states, each + 1 + offset (0: every character allowed). */
  graphTables(offset) {
    const mask = new Float32Array(this.table.length), next = new BigInt64Array(this.table.length);
    for (let i = 0; i < this.table.length; i++) {
      const live = this.table[i] >= 0;
      mask[i] = live || this.accepting[Math.floor(i / this.size)] ? 0 : -Infinity;
      next[i] = live ? BigInt(this.table[i] + 1 + offset) : 0n;
    }
    return { mask, next };
  }

  static async compile(regex, vocab) {
    if (typeof regex !== "string" || !regex) throw new CharsdkError("regex must be a non-empty string", "regex");
    const { DFA, NFA, JS } = await import("refa");
    let dfa;
    try {
      const { expression, maxCharacter } = JS.Parser.fromLiteral({ source: regex, flags: "u" }).parse();
      dfa = DFA.fromFA(NFA.fromRegex(expression, { maxCharacter }));
    } catch (error) {
      throw new CharsdkError(`regex ${JSON.stringify(regex)} cannot be used: ${error.message} (plain regular ` +
                             "expressions only: no lookarounds, anchors or backreferences)", "regex");
    }
    const nodes = [...dfa.nodes()], index = new Map(nodes.map((node, i) => [node, i])), size = vocab.size;
    const codes = vocab.chars.map(c => c.codePointAt(0));
    const table = new Int32Array(nodes.length * size).fill(DEAD);
    nodes.forEach((node, s) => codes.forEach((code, v) => {
      const after = node.out.get(code);
      if (after !== undefined) table[s * size + v] = index.get(after);
    }));
    const accepting = Uint8Array.from(nodes, node => (dfa.finals.has(node) ? 1 : 0));
    const distance = distancesToAccept(table, accepting, size);
    for (let i = 0; i < table.length; i++) if (table[i] >= 0 && distance[table[i]] === Infinity) table[i] = DEAD;
    const start = index.get(dfa.initial);
    if (distance[start] === Infinity) {
      throw new CharsdkError(`regex ${JSON.stringify(regex)}: no text of this model's characters matches it` +
                             (vocab.lowercase ? " (the model is lower-case)" : ""), "regex");
    }
    return new Pattern(regex, table, accepting, start, distance, size);
  }
}

/** The fewest characters from each state to an accepting one (Infinity where none is): a breadth-first
 * search back from the accepting states. */
function distancesToAccept(table, accepting, size) {
  const states = accepting.length, before = Array.from({ length: states }, () => []);
  for (let i = 0; i < table.length; i++) if (table[i] >= 0) before[table[i]].push(Math.floor(i / size));
  const distance = Float64Array.from(accepting, a => (a ? 0 : Infinity));
  const frontier = [];
  accepting.forEach((a, s) => { if (a) frontier.push(s); });
  for (let head = 0; head < frontier.length; head++) {
    const state = frontier[head];
    for (const earlier of before[state]) {
      if (distance[earlier] === Infinity) {
        distance[earlier] = distance[state] + 1;
        frontier.push(earlier);
      }
    }
  }
  return distance;
}

/** The choices as the model's character ids, checked (charsdk/constraints.py's choice_ids). */
export function choiceIds(choices, vocab) {
  if (!Array.isArray(choices) || !choices.length) throw new CharsdkError("choice must be a non-empty array of strings", "choice");
  if (choices.some(c => typeof c !== "string" || !c)) throw new CharsdkError("choice must be an array of non-empty strings", "choice");
  if (new Set(choices).size !== choices.length) throw new CharsdkError("choice has a string twice: give each once", "choice");
  return choices.map(c => {
    try {
      return vocab.encode(c, "error");
    } catch (error) {
      throw new CharsdkError(`choice ${JSON.stringify(c)}: ${error.message}`, "choice");
    }
  });
}
