# charsdk: `make gen` · `make test` · `make train export` · `make ship` · `make base` · `make bench`
#          `make bench-serve` · `make bench-train` · `make plot` · `make lint` · `make check-js`
#          `make eval-dynamic`
PYTHON ?= $(shell command -v python3.11 || command -v python3)
RUNTIME_VENV := .venv-runtime# runtime dependencies only: what `pip install charsdk` gives users
DEV_VENV := .venv# runtime + training + test dependencies

SHARED_CORPUS := $(wildcard ../shared/corpora/nietzsche.txt)# this workspace's copy of the book's text
CORPUS ?=# a new run: the text to train on (empty: the book's, downloaded); a run named again: its own
NAME ?= nietzsche# the run: artifacts/$(NAME)/
MODEL ?= nietzsche# a shipped model: charsdk/models/$(MODEL)/ (nietzsche is the default one)
RECIPE ?=# a new run: default, finetune, quality or book (empty: finetune from the base, else default)
BASE ?=# a new run's starting weights: empty (auto: the base, if it covers the corpus), none, or a run
BUDGET ?=# seconds of training not to pass (empty: the recipe's)
ARTIFACTS ?= artifacts
EPOCHS ?=
EPOCH_STEPS ?=# steps per epoch (checkpoint, log entry, samples); empty: one pass over the corpus
WORKERS ?= 1# >1: a cluster of that many workers on this machine (train/cluster.py)
FRESH ?=
LOWERCASE ?=# 1: a new run lower-cases its text (and generation its seeds); an exported KERAS model was so trained
PRECISION ?= int8# export: int8 weights (one scale per output channel) or fp32
GEN_ARGS ?= --length 400 --temperature 0.5

.PHONY: gen test train export memory ship base bench bench-memory bench-serve bench-train baselines plot lint clean check-js \
	eval-dynamic

$(RUNTIME_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install --quiet --editable .
	touch $@

$(DEV_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install --quiet --editable '.[train,test,serve]'
	touch $@

gen: $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/charsdk gen $(GEN_ARGS)

test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m pytest $(PYTEST_ARGS)

TRAIN_ARGS = --name $(NAME) --artifacts $(ARTIFACTS) $(if $(RECIPE),--recipe $(RECIPE)) \
	$(if $(CORPUS),--corpus $(CORPUS)) $(if $(SHARED_CORPUS),--fallback-corpus $(SHARED_CORPUS)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(EPOCH_STEPS),--steps-per-epoch $(EPOCH_STEPS)) $(if $(FRESH),--fresh) \
	$(if $(BASE),--base $(BASE)) $(if $(BUDGET),--time-budget-s $(BUDGET)) $(if $(LOWERCASE),--lowercase)
train: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m $(if $(filter-out 1,$(WORKERS)),train.cluster --workers $(WORKERS),train.fit) \
		$(TRAIN_ARGS)

# KERAS=model.keras (or .h5): export any Keras character model instead (train/convert.py), with the
# CORPUS it was trained on (default: the book's), LOWERCASE=1 if its training lower-cased, MAXLEN=.
KERAS ?=
MAXLEN ?=
MEMORY ?=# 1: export adds an n-gram memory of the training text (make memory)
export: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m train.export --name $(NAME) --artifacts $(ARTIFACTS) --precision $(PRECISION) \
		$(if $(KERAS),--keras $(KERAS) $(if $(CORPUS),--corpus $(CORPUS),$(if $(SHARED_CORPUS),--corpus \
		$(SHARED_CORPUS))) $(if $(LOWERCASE),--lowercase) $(if $(MAXLEN),--maxlen $(MAXLEN)))
	$(if $(MEMORY),$(DEV_VENV)/bin/python -m train.memory --name $(NAME) --artifacts $(ARTIFACTS))

# Give run $(NAME)'s export an n-gram memory of its training text, mixed into the model's distribution
# (charsdk/memory.py; its weights fitted on the held-out part): it prints the held-out figure without
# and with it. The memory holds the training text: make ship refuses it.
memory: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m train.memory --name $(NAME) --artifacts $(ARTIFACTS)

# The pretrained base: its corpus from Debian's packages (train/base_corpus.py; docs/base-model.md lists
# them, and a missing one is named), with the texts the docs score left out (the book's, and those of
# bench/text_corpus.py: apt-get install perl-doc python3-doc), trained (resumably: run it again to
# continue) and exported as artifacts/$(BASE_NAME); `make ship NAME=base MODEL=base` puts it in the package.
# BASE=run starts from that run's weights instead of new ones (a base trained on, on a new corpus).
BASE_NAME ?= base# the base's run: artifacts/$(BASE_NAME)/
SCORED_CORPORA := licences perl-faq python-tutorial python-whatsnew# bench/text_corpus.py's corpora, which the docs score
BASE_CORPUS := $(ARTIFACTS)/$(BASE_NAME)/corpus.txt
base: $(DEV_VENV)/.installed
	@test -f $(BASE_CORPUS) || { for c in $(SCORED_CORPORA); do $(DEV_VENV)/bin/python -m bench.text_corpus $$c \
		--out $(ARTIFACTS)/small/$$c.txt || exit 2; done && $(DEV_VENV)/bin/python -m train.base_corpus \
		--out $(BASE_CORPUS) $(if $(SHARED_CORPUS),--exclude $(SHARED_CORPUS)) \
		$(SCORED_CORPORA:%=--exclude $(ARTIFACTS)/small/%.txt); }
	$(DEV_VENV)/bin/python -m train.fit --name $(BASE_NAME) --artifacts $(ARTIFACTS) --recipe base \
		--base $(or $(BASE),none) --corpus $(BASE_CORPUS) $(if $(EPOCHS),--epochs $(EPOCHS))
	$(DEV_VENV)/bin/python -m train.export --name $(BASE_NAME) --artifacts $(ARTIFACTS) --precision $(PRECISION)

# Run $(NAME)'s held-out text scored static and adapted (dynamic evaluation, as PPMd adapts: each segment
# scored, then one SGD step on it; train/dynamic_eval.py, TensorFlow and the run's best.keras), written to
# artifacts/$(NAME)/dynamic_eval.json. DYNAMIC_ARGS: --lr, --segment, --decay, --chars.
DYNAMIC_ARGS ?=
eval-dynamic: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m train.dynamic_eval --name $(NAME) --artifacts $(ARTIFACTS) $(DYNAMIC_ARGS)

# Copy the export of run $(NAME) into the package as charsdk/models/$(MODEL)/ (checked, then swapped in).
ship: $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/python -m train.ship $(ARTIFACTS)/$(NAME) charsdk/models/$(MODEL)

# Generation speed: the book's Keras loop against charsdk on the book model's weights, then the
# default model (tables printed, JSON written beside each run's log).
bench: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m bench.generation --model nietzsche-book --run $(ARTIFACTS)/book \
		--out $(ARTIFACTS)/bench/nietzsche-book.json
	$(DEV_VENV)/bin/python -m bench.generation --model nietzsche --out $(ARTIFACTS)/bench/nietzsche.json
	$(MAKE) bench-serve

# What run $(NAME)'s n-gram memory costs in speed, beside its network alone (bench/memory.py).
bench-memory: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m bench.memory $(ARTIFACTS)/$(NAME) --out-dir $(ARTIFACTS)/bench

# charsdk serve under load on 127.0.0.1: 1-256 streaming clients, overload, a soak of SOAK seconds.
SOAK ?= 300
bench-serve: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m bench.bench_serve --model nietzsche --soak $(SOAK) \
		--out $(ARTIFACTS)/bench/nietzsche-serve.json

# Training cost as the corpus grows (the Nietzsche text, repeated to 100 MB and 1 GB) and on 2 workers;
# then a fine-tune step's multiply-adds per second beside the CPU's peak, in float32 and as train.fit
# computes here (artifacts/bench/train-rate-<precision>-<CPU kind>.json).
bench-train: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m bench.bench_train $(if $(CORPUS),--corpus $(CORPUS),$(if $(SHARED_CORPUS),--corpus $(SHARED_CORPUS)))
	$(DEV_VENV)/bin/python -m bench.train_rate --precision float32
	$(DEV_VENV)/bin/python -m bench.train_rate

# The shipped models in onnxruntime-node and onnxruntime-web (headless Chromium): ids as charsdk's.
check-js: $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/python -m bench.check_js

# Classic compressors on the same held-out text (artifacts/baselines.json; make plot draws PPMd). The book's
# text lower-cased, as its models read it; a CORPUS= as it is (LOWERCASE=1: lower-cased), into
# artifacts/baselines-<its name>.json.
baselines: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m bench.baselines $(if $(CORPUS),--corpus $(CORPUS) $(if $(LOWERCASE),,--no-lowercase) \
		--out $(ARTIFACTS)/baselines-$(basename $(notdir $(CORPUS))).json,$(if $(SHARED_CORPUS),--corpus $(SHARED_CORPUS)))

# Held-out bits/char against training time for the runs named in PLOT_RUNS, from their log.json.
PLOT_RUNS ?= book runs/book60 runs/nietzsche-v1 runs/default-loop runs/nietzsche-default
plot: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m bench.plot $(PLOT_RUNS) --artifacts $(ARTIFACTS) --out $(ARTIFACTS)/plots/holdout.png

lint: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/ruff check charsdk train bench tests

clean:
	rm -rf $(RUNTIME_VENV) $(DEV_VENV) build dist *.egg-info
