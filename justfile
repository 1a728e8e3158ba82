# tokenward: every recipe creates .venv (Python >= 3.12) and installs the project when missing.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
py := venv / "bin" / "python"

# Run the test suite (hypothesis profile from HYPOTHESIS_PROFILE, default "fast").
test *args: _env
    {{py}} -m pytest {{args}}

# Ruff and mypy over the whole project.
lint: _env
    {{venv}}/bin/ruff check .
    {{venv}}/bin/ruff format --check .
    {{venv}}/bin/mypy

# Start the fixture upstream and the proxy on a fresh demo store, send examples, print a table.
demo: _env
    {{py}} -m tokenward.fixtures.demo

# Run the proxy in the foreground on the default store (tokenward.db or $TOKENWARD_DB).
proxy *args: _env
    {{venv}}/bin/tokenward proxy {{args}}

# Benchmarks: core, store, addon hook, in-process conformance, throughput, memory, fleet. Figures to stdout.
bench *args: _env
    {{py}} -m bench {{args}}

# The conformance suite against a proxy it starts itself.
conformance *args: _env
    {{venv}}/bin/tokenward conformance --self {{args}}

# FILES are core file names (default: all); the work (a copy of the tree, cosmic-ray's session)
# stays in the printed folder. Hours for the whole core: never part of `just test`.
# Mutation testing of tokenward/core with the conformance harness alone as the test.
mutation *files: _env
    #!/usr/bin/env bash
    set -euo pipefail
    files="{{files}}"
    [ -n "$files" ] || files="hosts.py layouts.py lifetimes.py placement.py tokens.py verdicts.py"
    work=$(mktemp -d -t tokenward-mutation-XXXXXX)
    echo "mutation work in $work" >&2
    mkdir "$work/tree"
    git ls-files -z --cached --others --exclude-standard | xargs -0 cp -P --parents -t "$work/tree"
    paths=$(for f in $files; do printf '"tokenward/core/%s", ' "$f"; done)
    printf '%s\n' '[cosmic-ray]' "module-path = [${paths%, }]" 'timeout = 120.0' \
        'excluded-modules = []' 'test-command = "{{py}} -m tokenward.harness.mutation_check"' \
        '[cosmic-ray.distributor]' 'name = "local"' > "$work/cosmic-ray.toml"
    cd "$work/tree"
    {{venv}}/bin/cosmic-ray init "$work/cosmic-ray.toml" "$work/session.sqlite"
    {{py}} -m tokenward.harness.mutation_check --skip-annotations "$work/session.sqlite"
    # no bytecode: a mutant of the same size written within a second could reuse a stale .pyc
    PYTHONDONTWRITEBYTECODE=1 {{venv}}/bin/cosmic-ray exec "$work/cosmic-ray.toml" "$work/session.sqlite"
    {{py}} -m tokenward.harness.mutation_check --report "$work/session.sqlite"

# Longer load and fault run (minutes), see README "Reliability".
soak *args: _env
    {{py}} -m bench.soak {{args}}

# Create .venv with a Python >= 3.12 and install the project with its dev extras.
_env:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="{{venv}}"
    stamp="$venv/.installed"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
        exit 0
    fi
    if [ ! -x "$venv/bin/python" ]; then
        python=$(bash .ci/find-python) || exit 1
        echo "creating .venv with $python ($("$python" --version 2>&1))" >&2
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -e ".[dev]" >&2
    touch "$stamp"
