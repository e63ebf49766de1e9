# Targets a newcomer can guess. `make up` and `make test` install what they need first.
.PHONY: install up demo test lint bench

# uv from PATH, or the copy `install` puts into the user's site-packages.
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --user uv || \
		python3 -m pip install --user --break-system-packages uv
	$(UV) sync --frozen

up: install
	$(UV) run python -m deployments.up

demo: install
	$(UV) run python -m deployments.up --demo

test: install
	@test -x /usr/sbin/sshd || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends openssh-server; }
	$(UV) run pytest

lint:
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

bench:
	@echo "make bench: not yet; see FACTS.md for the measurements so far"
