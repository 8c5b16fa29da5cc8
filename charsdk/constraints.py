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
