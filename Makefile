# charsdk: `make gen` · `make test` · `make train export` · `make ship` · `make bench` · `make plot` · `make lint`
PYTHON ?= $(shell command -v python3.11 || command -v python3)
RUNTIME_VENV := .venv-runtime# runtime dependencies only: what `pip install charsdk` gives users
DEV_VENV := .venv# runtime + training + test dependencies

SHARED_CORPUS := ../shared/corpora/nietzsche.txt
CORPUS ?= $(if $(wildcard $(SHARED_CORPUS)),$(SHARED_CORPUS))# empty: download the book's text
NAME ?= nietzsche# the run: artifacts/$(NAME)/
MODEL ?= nietzsche# a shipped model: charsdk/models/$(MODEL)/ (nietzsche is the default one)
RECIPE ?= default
ARTIFACTS ?= artifacts
EPOCHS ?=
FRESH ?=
GEN_ARGS ?= --length 400 --temperature 0.5

.PHONY: gen test train export ship bench plot lint clean

$(RUNTIME_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install --quiet --editable .
	touch $@

$(DEV_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install --quiet --editable '.[train,test]'
	touch $@

gen: $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/charsdk gen $(GEN_ARGS)

test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m pytest $(PYTEST_ARGS)

train: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m train.fit --name $(NAME) --recipe $(RECIPE) --artifacts $(ARTIFACTS) \
		$(if $(CORPUS),--corpus $(CORPUS)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(FRESH),--fresh)

export: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m train.export --name $(NAME) --artifacts $(ARTIFACTS)

# Copy the export of run $(NAME) into the package as charsdk/models/$(MODEL)/.
ship:
	rm -rf charsdk/models/$(MODEL) && mkdir -p charsdk/models/$(MODEL)
	cp $(ARTIFACTS)/$(NAME)/vocab.json $(ARTIFACTS)/$(NAME)/*.onnx charsdk/models/$(MODEL)/

# Generation speed: the book's Keras loop against charsdk on the book model's weights, then the
# default model (tables printed, JSON written beside each run's log).
bench: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m train.bench --model nietzsche-book --run $(ARTIFACTS)/book \
		--out $(ARTIFACTS)/book/bench.json
	$(DEV_VENV)/bin/python -m train.bench --model nietzsche --out $(ARTIFACTS)/nietzsche/bench.json

# Held-out bits/char against training time for the runs named in PLOT_RUNS, from their log.json.
PLOT_RUNS ?= book book60 nietzsche
plot: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m train.plot $(PLOT_RUNS) --artifacts $(ARTIFACTS) --out $(ARTIFACTS)/holdout.png

lint: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/ruff check charsdk train tests

clean:
	rm -rf $(RUNTIME_VENV) $(DEV_VENV) build dist *.egg-info
