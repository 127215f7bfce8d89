# Every target installs what it needs into .venv first, so a fresh clone needs nothing else.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser test test-fast lint demo teacher student-tokenizer bench bench-quick bench-gpu\
	mutation clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch 2.13.0 is on disk here; an open range would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch<=2.14.1"
	$(BIN)/pip install -q -e ".[test]"
	# The peer trainer the axolotl-kd export is checked with: pinned, without its dependencies
	# (it pins older transformers/datasets and a GPU torch its KD collator and loss do not need).
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))\
	['project']['optional-dependencies']['peers'])" | xargs $(BIN)/pip install -q --no-deps
	touch $(STAMP)

install: $(STAMP)

# The viewer's browser test (tests/pipeline/sharing/test_view_browser.py) drives Debian's
# chromium through its chromedriver: installed here when missing (sudo when not root), so a
# fresh CI machine runs it; nothing is downloaded at test time.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; }

# Two pytest workers (pytest-xdist): every test runs its processes at the tool's one thread
# (tests/conftest.py), so two at a time use both cores of a 2-core machine; most tests also
# wait on subprocesses and storage. Each worker builds its own session fixtures in its own
# temp folders, and the moto servers take free ports. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: $(STAMP) browser
	$(BIN)/pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP) browser
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not slow"

# ruff, then the layer contracts (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md):
# a cycle or an upward import fails here.
lint: $(STAMP)
	$(BIN)/ruff check pipeline stages tests benchmarks
	$(BIN)/lint-imports

# Mutation testing of the core (pyproject.toml [tool.mutmut]; README "Development"): not part of
# `make test`. Each mutant runs only the tests without a teacher that reach its function,
# cheapest first; the score, every survivor and the run's wall time go to MUTATION.md.
mutation: $(STAMP)
	rm -rf mutants
	start=$$(date +%s); $(BIN)/mutmut run --max-children 2 \
	  && echo $$(( $$(date +%s) - start )) > mutants/wall-seconds
	$(BIN)/python -m tests.mutation_report

demo: $(STAMP)
	$(BIN)/pipeline run data/jobs/demo.toml

# Performance figures, each a ratio measured side by side (benchmarks/run.py → BENCHMARKS.md and
# benchmarks/results.json). bench-quick: a smoke run with tiny sizes, written to outputs/bench-quick.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

# The GPU check (benchmarks/gpu_check.py): a 151,936-logit Qwen2-shaped teacher built locally
# labels in bf16 and a student trains, on CUDA, offline, < 8 min → outputs/gpu-check/.
bench-gpu: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_check

# The bundled teacher's recipe, with this repo's own commands (README: "The bundled teacher").
TEACHER_BUILD := outputs/teacher-build
teacher: $(STAMP)
	$(BIN)/pipeline tokenizer train --corpus builtin:bbc-news --vocab-size 4096 \
		--out $(TEACHER_BUILD)/tokenizer.json
	$(BIN)/pipeline label --top-k 0 --tokenizer $(TEACHER_BUILD)/tokenizer.json \
		--corpus builtin:bbc-news --seq-len 128 --validation-fraction 0.05 \
		--out $(TEACHER_BUILD)/tokens --overwrite
	$(BIN)/pipeline train --labels $(TEACHER_BUILD)/tokens --student data/students/teacher.toml \
		--out $(TEACHER_BUILD)/runs --resume
	$(BIN)/pipeline bigram --labels $(TEACHER_BUILD)/tokens
	$(BIN)/pipeline evaluate --labels $(TEACHER_BUILD)/tokens --run $(TEACHER_BUILD)/runs/teacher \
		--out $(TEACHER_BUILD)/report
	mkdir -p data/teacher
	cp $(TEACHER_BUILD)/runs/teacher/config.json $(TEACHER_BUILD)/runs/teacher/model.safetensors \
		$(TEACHER_BUILD)/runs/teacher/tokenizer.json data/teacher/
	cp $(TEACHER_BUILD)/runs/teacher/metrics.jsonl data/teacher/training-metrics.jsonl

# The demo's own-tokenizer students' vocabulary (README "Students with their own tokenizer"): a
# 2,048-token byte-level BPE on the teacher's corpus, deterministic, shipped in data/tokenizers/.
student-tokenizer: $(STAMP)
	$(BIN)/pipeline tokenizer train --corpus builtin:bbc-news --vocab-size 2048 \
		--out data/tokenizers/bbc-bpe-2048.json

clean:
	rm -rf outputs .pytest_cache mutants
