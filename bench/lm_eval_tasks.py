"""`python -m bench.lm_eval_tasks --corpus TEXT --out DIR`: two local lm-evaluation-harness tasks built from a
corpus's held-out 10% (the part no shipped model trained on), to score a `charsdk serve` model with
`lm_eval --model local-completions` offline (docs/serving.md):

- `<name>_rolling`: the held-out text in documents of DOC_CHARS characters, scored whole
  (loglikelihood_rolling: bits_per_byte is bits per character for ASCII text);
- `<name>_choice`: multiple choice: after CONTEXT_CHARS characters of held-out text, which of four
  CHOICE_CHARS-character strings comes next (the true one and three from elsewhere in the held-out text).

The corpus's text goes only into DIR (never into the repository).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HOLDOUT = 0.1  # the last 10%, as the training runs hold it out
DOC_CHARS = 3000
CONTEXT_CHARS, CHOICE_CHARS, CHOICES, QUESTIONS = 200, 30, 4, 200

ROLLING = """task: {name}_rolling
dataset_path: json
dataset_kwargs:
  data_files: {{test: {docs}}}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - {{metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
  - {{metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
  - {{metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}}
"""

CHOICE = """task: {name}_choice
dataset_path: json
dataset_kwargs:
  data_files: {{test: {docs}}}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
"""


def held_out(path: Path, lowercase: bool) -> str:
    text = path.read_text(encoding="utf-8")
    text = text.lower() if lowercase else text
    return text[int(len(text) * (1 - HOLDOUT)):]


def questions(text: str, rng: random.Random) -> list[dict]:
    """Multiple-choice documents: a context ending at a space, its true continuation and three others."""
    starts = [i for i in range(CONTEXT_CHARS, len(text) - CHOICE_CHARS) if text[i - 1] == " "]
    out = []
    for start in rng.sample(starts, QUESTIONS):
        true = text[start : start + CHOICE_CHARS]
        others = [text[s : s + CHOICE_CHARS] for s in rng.sample(starts, CHOICES * 3)
                  if abs(s - start) > CHOICE_CHARS and text[s : s + CHOICE_CHARS] != true][: CHOICES - 1]
        choices = [true, *others]
        rng.shuffle(choices)
        out.append({"context": text[start - CONTEXT_CHARS : start], "choices": choices,
                    "label": choices.index(true)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lm_eval_tasks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the tasks (lm_eval --include_path)")
    p.add_argument("--name", default="nietzsche_heldout")
    p.add_argument("--no-lowercase", action="store_true", help="keep the case (a model that keeps it)")
    args = p.parse_args(argv)
    text = held_out(args.corpus, not args.no_lowercase)
    args.out.mkdir(parents=True, exist_ok=True)
    docs = (args.out / f"{args.name}_rolling.jsonl").resolve()
    mc = (args.out / f"{args.name}_choice.jsonl").resolve()
    docs.write_text("".join(json.dumps({"text": text[i : i + DOC_CHARS]}) + "\n"
                            for i in range(0, len(text), DOC_CHARS)))
    mc.write_text("".join(json.dumps(q) + "\n" for q in questions(text, random.Random(0))))
    (args.out / f"{args.name}_rolling.yaml").write_text(ROLLING.format(name=args.name, docs=docs))
    (args.out / f"{args.name}_choice.yaml").write_text(CHOICE.format(name=args.name, docs=mc))
    print(f"wrote {args.name}_rolling ({len(text):,} characters in {DOC_CHARS}-character documents) and "
          f"{args.name}_choice ({QUESTIONS} questions) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
