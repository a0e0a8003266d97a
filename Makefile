# convpipe: `make demo` sets up .venv/ and runs the main job; `make test` sets up and runs the whole test suite.
.PHONY: setup demo test arm-board clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/convpipe demo

test: setup
	bash scripts/test.sh

clean:
	rm -rf out .pytest_cache .hypothesis
