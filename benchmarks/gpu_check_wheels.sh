#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.py on a GPU machine that has no network and only torch,
# transformers, accelerate and peft (with their own dependencies) installed.
#
#   bash benchmarks/gpu_check_wheels.sh [--dest shared/wheels] [--python-version 3.12] [--skip NAME ...]
#                                       [--with NAME ...] [--oldest pyarrow] [--limit-mib 64]
#
# Run it where PyPI can be reached, in the project's environment
# (`make env`: the list is read from what is installed there). Which packages: everything that
# `trl` and `datasets` need (their requirements, followed to the end, markers evaluated for
# Linux x86-64 and the target Python) minus everything that torch, transformers, accelerate and
# peft already bring. The versions are the ones installed here, i.e. constraints.txt's, except
# for the packages named by --oldest (comma-separated, default pyarrow; `none` for none): those
# get the oldest version their dependents accept (the highest lower bound among their
# requirements), since pyarrow's current wheel alone is over 50 MiB. Each is fetched without
# its dependencies as a binary wheel for the target Python (--python-version, default this
# interpreter's; the GPU machine's may differ) and manylinux x86-64.
# `--skip NAME` leaves out a package the target machine is known to have already; `--with NAME`
# adds one it has in a version too old (e.g. `--with transformers`: the stages need 5.23 or later).
#
# The folder's old wheels are removed first (two versions of one package break the install).
# At the end the script prints the total and fails if the wheels, plus the files that travel
# with the repository (tracked and untracked-not-ignored, and the rest of shared/), exceed
# --limit-mib (default 64). Then, on the GPU machine, from the repository root:
#
#   pip install --no-index --no-deps shared/wheels/*.whl && PYTHONPATH=src python benchmarks/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: relative paths (--dest) are taken from there

DEST=shared/wheels
PYVER=""
LIMIT_MIB=64
SKIP=()
OLDEST=pyarrow
WITH=()
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dest) DEST="$2"; shift 2 ;;
    --python-version) PYVER="$2"; shift 2 ;;
    --skip) SKIP+=("$2"); shift 2 ;;
    --oldest) OLDEST="$2"; shift 2 ;;
    --with) WITH+=("$2"); shift 2 ;;
    --limit-mib) LIMIT_MIB="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$PYVER" ]] || PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

# name==version of each package to fetch, one a line.
REQS=$("$PYTHON" - "$PYVER" "$OLDEST" "${WITH[*]+"${WITH[*]}"}" "${SKIP[@]+"${SKIP[@]}"}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

py, oldest = sys.argv[1], {canonicalize_name(s) for s in sys.argv[2].split(",") if s and s != "none"}
extra = {canonicalize_name(s) for s in sys.argv[3].split()}
skip = {canonicalize_name(s) for s in sys.argv[4:]}
env = {
    "python_version": py,
    "python_full_version": py + ".0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


lower = {}  # package -> the highest lower bound its dependents declare


def closure(names):
    """Installed version of each package that ``names`` need, transitively (None: not installed here)."""
    found, todo = {}, [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            found[name] = None
            continue
        found[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                name = canonicalize_name(req.name)
                todo.append(name)
                for spec in req.specifier:
                    if spec.operator in (">=", "==", "~=") and "*" not in spec.version:
                        lower[name] = max(lower.get(name, Version("0")), Version(spec.version))
    return found


bare = closure(["torch", "transformers", "accelerate", "peft"])
need = closure(["trl", "datasets", *extra])
bare = {n: v for n, v in bare.items() if n not in extra}
missing = sorted(n for n, v in need.items() if v is None)
if missing:
    sys.exit(f"not installed in this environment, so their versions are unknown: {', '.join(missing)} (run `make env`)")
for name in sorted(set(need) - set(bare) - skip):
    if name in oldest and name not in lower:
        sys.exit(f"--oldest {name}: no requirement gives {name} a lower bound")
    print(f"{name}=={lower[name] if name in oldest else need[name]}")
EOF
)

echo "packages the bare machine lacks (Python $PYVER, manylinux x86-64):"
sed 's/^/  /' <<<"$REQS"
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
# shellcheck disable=SC2086
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" \
  --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  $REQS

ls -l "$DEST"/*.whl | awk '{printf "  %8.1f MiB  %s\n", $5 / 1048576, $NF}'
wheels=$(cat "$DEST"/*.whl | wc -c)
repo=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
shared=0
if [[ -d shared ]]; then
  shared=$(du -sb shared | cut -f1)
  case "$(realpath "$DEST")/" in "$(realpath shared)"/*) shared=$((shared - $(du -sb "$DEST" | cut -f1))) ;; esac
fi
total=$((wheels + repo + shared))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "wheels $(mib "$wheels") + repository files $(mib "$repo") + rest of shared/ $(mib "$shared") = $(mib "$total")" \
  "(limit ${LIMIT_MIB} MiB)"
if (( total > LIMIT_MIB * 1048576 )); then
  echo "too large: over ${LIMIT_MIB} MiB; leave out what the GPU machine already has with --skip NAME" >&2
  exit 1
fi
