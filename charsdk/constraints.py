"""Generation that obeys a pattern: a regular expression compiled (by interegular) into an automaton over
the model's own characters, which masks each draw.

Where the automaton has not yet accepted, the characters it allows are drawn from the model's
distribution restricted to them (the free characters follow the model). Where it accepts, the draw is the
model's over every character: a character the pattern allows goes on; any other ends the sample there
(`finish_reason` "stop"), so the end is the model's choice; with nothing left to follow it ends at once.
Near the end of `length`, only the characters that can still reach an accepting state in the
characters left are allowed, so every sample matches the pattern (`re.fullmatch`); a pattern that needs
more characters than `length` is an error.

A choice among strings is exact instead: each choice's probability after the prompt, read character by
character, and one drawn per stream from them (to the power 1/temperature; temperature 0 takes the likeliest).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .vocab import Vocab

DEAD = -1  # no transition: the character leaves the pattern (or can no longer reach an accepting state)


@dataclass(frozen=True, eq=False)
class Pattern:
    source: str
    table: np.ndarray  # [states, V] the next state after each character, or DEAD
    accepting: np.ndarray  # [states] bool
    start: int
    distance: np.ndarray  # [states] the fewest characters that reach an accepting state from each

    def allowed(self, state: int, left: int) -> np.ndarray:
        """[V] the characters that keep `state` able to accept within the `left` characters it may still
        draw (this one included)."""
        after = self.table[state]
        return (after >= 0) & (self.distance[np.maximum(after, 0)] <= left - 1)

    def walk(self, state: int, chars: np.ndarray, left: int, masked: bool) -> tuple[int, bool, list[int]]:
        """The automaton over characters drawn in one call (`left` characters left before the first), up to
        the first that does not stand: where the pattern accepts, one it does not allow ends the sample
        there; where it does not accept, one drawn from the whole distribution (a guess) stands if the
        pattern allows it, one drawn `masked` (the graph's left-blind mask, `graph_tables`) wherever the
        room left does not narrow the mask (`room`). Returns (that position, or len(chars); whether the
        sample ends there; the states before each character and after the last one followed)."""
        states, table, distance = [state], self.table, self.distance
        accepting, room = self.accepting, self.room
        for at, char in enumerate(chars.tolist()):
            after = int(table[state, char])
            allowed = after >= 0 and distance[after] <= left - at - 1
            if accepting[state] and not allowed:
                return at, True, states
            if not accepting[state] and (room[state] > left - at if masked else not allowed):
                return at, False, states
            state = after
            states.append(state)
        return len(chars), False, states

    @functools.cached_property
    def room(self) -> np.ndarray:
        """[states] the fewest characters left (this one included) at which `allowed` is every character
        the automaton allows: 1 + the largest distance a character leads to."""
        live = self.table >= 0
        return np.where(live, self.distance[np.maximum(self.table, 0)] + 1, 0).max(axis=1)

    @functools.cached_property
    def graph_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The automaton as the graph masks with it (train/graph.py): [states, V] additive masks (0 where a
        character is allowed or the state accepts, -inf elsewhere) and next states, each +1 (state 0 is
        Automaton's: every character allowed; where a sample ended, its stream goes there)."""
        live = self.table >= 0
        mask = np.where(live | self.accepting[:, None], 0.0, -np.inf).astype(np.float32)
        return mask, np.where(live, self.table + 1, 0)

    @classmethod
    def compile(cls, regex: str, vocab: Vocab) -> Pattern:
        """The automaton of `regex` over `vocab`'s characters, or one InputError naming the problem."""
        if not isinstance(regex, str) or not regex:
            raise InputError("regex must be a non-empty string", "regex")
        try:
            import interegular
        except ImportError:
            raise InputError("regex needs the interegular package: pip install 'charsdk[regex]'",
                             "regex") from None
        try:
            fsm = interegular.parse_pattern(regex).to_fsm()
        except Exception as exc:  # interegular's own errors: a syntax error, an unsupported construct
            reason = str(exc).strip() or type(exc).__name__
            raise InputError(f"regex {regex!r} cannot be used: {reason} (plain regular expressions only: no "
                             "lookarounds or backreferences)", "regex") from None
        states = sorted(fsm.states)
        index = {state: i for i, state in enumerate(states)}
        keys = [fsm.alphabet[c] for c in vocab.chars]
        table = np.full((len(states), vocab.size), DEAD, np.int64)
        for state, moves in fsm.map.items():
            for v, key in enumerate(keys):
                if key in moves:
                    table[index[state], v] = index[moves[key]]
        accepting = np.array([s in fsm.finals for s in states])
        distance = distances_to_accept(table, accepting)
        live = distance < UNREACHABLE  # states from which an accepting one can be reached
        table[(table >= 0) & ~live[np.maximum(table, 0)]] = DEAD
        start = index[fsm.initial]
        if not live[start]:
            raise InputError(f"regex {regex!r}: no text of this model's characters matches it"
                             + (" (the model is lower-case)" if vocab.lowercase else ""), "regex")
        return cls(regex, table, accepting, start, distance)


UNREACHABLE = np.iinfo(np.int64).max


@dataclass(frozen=True, eq=False)
class Automaton:
    """What the graph masks a call's draws with: the patterns' automata stacked after a state 0 that
    allows every character (a stream without a pattern, or one that ended), and each stream's state."""

    mask: np.ndarray  # [S, V] float32: 0 or -inf, added to the logits
    next: np.ndarray  # [S, V] int64
    state: np.ndarray  # [B] int64

    def feed(self) -> dict[str, np.ndarray]:
        return {"pattern_mask": self.mask, "pattern_next": self.next, "pattern_state": self.state}

    def take(self, index: np.ndarray) -> Automaton:
        """The same automata, for the streams at `index`."""
        return Automaton(self.mask, self.next, self.state[index])

    @classmethod
    def everything(cls, size: int) -> Automaton:
        return cls(np.zeros((1, size), np.float32), np.zeros((1, size), np.int64), np.zeros(1, np.int64))

    @classmethod
    def of(cls, patterns: Sequence[Pattern | None], states: Sequence[int], size: int) -> Automaton:
        """Each stream's pattern (None: none, or it ended) in its state."""
        free = cls.everything(size)
        masks, nexts, offsets = [free.mask], [free.next], {}
        for pattern in patterns:
            if pattern is not None and id(pattern) not in offsets:
                offsets[id(pattern)] = sum(len(m) for m in masks) - 1
                mask, after = pattern.graph_tables
                masks.append(mask)
                nexts.append(np.where(after > 0, after + offsets[id(pattern)], 0))
        state = [0 if p is None else 1 + offsets[id(p)] + s for p, s in zip(patterns, states, strict=True)]
        return cls(np.concatenate(masks), np.concatenate(nexts), np.array(state, np.int64))


def distances_to_accept(table: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """[states] the fewest characters from each state to an accepting one (UNREACHABLE where none is):
    a breadth-first search back from the accepting states, O(states x characters)."""
    before: list[list[int]] = [[] for _ in range(len(table))]
    for state, after in zip(*np.nonzero(table >= 0), strict=True):
        before[table[state, after]].append(int(state))
    distance = np.where(accepting, 0, UNREACHABLE)
    frontier = deque(np.flatnonzero(accepting).tolist())
    while frontier:
        state = frontier.popleft()
        for earlier in before[state]:
            if distance[earlier] == UNREACHABLE:
                distance[earlier] = distance[state] + 1
                frontier.append(earlier)
    return distance


def choice_ids(choices: Sequence[str], vocab: Vocab) -> list[np.ndarray]:
    """The choices as the model's character ids, checked (InputError naming the problem)."""
    if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
        raise InputError("choice must be a non-empty list of strings", "choice")
    if any(not isinstance(c, str) or not c for c in choices):
        raise InputError("choice must be a list of non-empty strings", "choice")
    if len(set(choices)) != len(choices):
        raise InputError("choice has a string twice: give each once", "choice")
    ids = []
    for c in choices:
        try:
            ids.append(vocab.encode(c))
        except InputError as exc:
            raise InputError(f"choice {c!r}: {exc}", "choice") from None
    return ids
