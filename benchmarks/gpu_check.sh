#!/usr/bin/env bash
# The GPU check: the CUDA tests and the GPU benchmarks in one command, with a results file.
#
#   benchmarks/gpu_check.sh               # on a card (H100/H200): about 6 minutes, under 8
#   benchmarks/gpu_check.sh --dry-run     # the same steps on the CPU, small (CI: tests/test_gpu_check.py)
#   benchmarks/gpu_check.sh --prepare-wheels   # here, with pip and a network: fill .whl/ (below)
#
# Without a visible CUDA device it runs the dry run whatever it was asked.
#
# Steps: (1) install the carried wheels, if the science's imports are missing; (2) record
# the card (nvidia-smi); (3) the CUDA tests: tests/science/test_gpu_paths.py, every test on
# both devices (on the dry run only the card-only tests, which skip: CI runs the whole file
# on the CPU anyway); (4) benchmarks/bench_gpu.py: bandwidth, visibilities/s per agent
# stage, streaming, mixed precision, and 1e9 visibilities under a 16 GB limit (the page is
# rendered by benchmarks/gpu_check_report.py, which can also re-render a fetched JSON). Results:
# $OUT/gpu_check.{md,json} (+ gpu_check_tests.xml, gpu_check.log) when OUT is set (the device
# tool's folder), else benchmarks/results/. The exit status is non-zero if a test failed or a
# benchmark section raised; the results file is written either way.
#
# What the device machine has (/work/.library/device/KINDS.md, nvidia-h200): Python 3.12 at
# /opt/torch/.venv/bin/python3 ("python3"), torch 2.11 with CUDA 13 (seen working), numpy,
# scipy, numba, h5py, psutil, pyyaml, pytest, pytest-timeout. This script uses that torch:
# no torch wheel travels. Missing there, and needed by the science (the simulator behind the
# benchmark's observations): pyuvdata, astropy and theirs. They travel as wheels in .whl/
# at the repository root, about 21 MiB (the whole tree must stay under 64 MiB):
#
#   echo /.whl/ >> .git/info/exclude           # once: never committed, carried explicitly
#   benchmarks/gpu_check.sh --prepare-wheels   # = the pip download below
#
# which downloads, for CPython 3.12 manylinux x86-64, with --no-deps (each need named):
#   pyuvdata==3.2.8 astropy==8.0.2 pyerfa==2.0.1.5 astropy-iers-data==0.2026.11.2.0.34.55
#   docstring-parser==0.18.0 setuptools-scm==10.3.4 vcs-versioning==2.6.0 packaging==26.2
# (ducc0 stays behind: GPL, a CPU reference only; the precision section then compares the
# 16-bit images with the complex64 one instead.)
#
# On a lent GPU, the device tool's call (timeout 540 s leaves the tool's other limits room):
#   run(command="PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
DRY=0
WHEELS=(pyuvdata==3.2.8 astropy==8.0.2 pyerfa==2.0.1.5 astropy-iers-data==0.2026.11.2.0.34.55
        docstring-parser==0.18.0 setuptools-scm==10.3.4 vcs-versioning==2.6.0 packaging==26.2)

for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --prepare-wheels)
      mkdir -p .whl
      exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

RESULTS="${OUT:-$REPO/benchmarks/results}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
say() { echo "gpu_check: $*" | tee -a "$LOG"; }
START=$(date +%s)

# (1) the carried wheels, only where the science's imports are missing (never over this
# machine's own packages: the wheels are CPython 3.12 builds for the device machine)
if ! "$PY" -c "import pyuvdata, astropy" 2>/dev/null; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    SITE=/tmp/gpu-check-site
    say "installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl 2>&1 | tee -a "$LOG" || say "wheel install failed"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    say "pyuvdata/astropy missing and no .whl/ carried: the benchmark's observations will fail"
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# one interpreter start (torch's import takes seconds): the versions, and whether a card is visible
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 3)" 2>&1 | tee -a "$LOG"
if [ "${PIPESTATUS[0]}" != 0 ] && [ "$DRY" = 0 ]; then
  say "no CUDA device visible (or no torch): running the dry run on the CPU"
  DRY=1
fi

# (2) the card as the driver sees it (clocks and settings are read, never changed)
if [ "$DRY" = 0 ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.mem,power.limit \
    --format=csv 2>&1 | tee -a "$LOG"
fi

# (3) the CUDA tests (conftest.py files above tests/science need the server's packages, which
# the device machine lacks: --confcutdir keeps pytest from loading them). The dry run keeps
# the card's tests (they skip without one) and the 16 GB plan: CI runs the rest anyway.
PYTEST_ARGS=(-q -p no:cacheprovider --confcutdir=tests/science --junitxml="$RESULTS/gpu_check_tests.xml"
             tests/science/test_gpu_paths.py)
if [ "$DRY" = 1 ]; then
  PYTEST_ARGS+=(-k "cuda or card or fraction")
fi
say "tests: pytest ${PYTEST_ARGS[*]}"
timeout 240 "$PY" -m pytest "${PYTEST_ARGS[@]}" 2>&1 | tee -a "$LOG"
TESTS_RC=${PIPESTATUS[0]}
# pytest's 5 is "no tests collected": the dry run's selection on a machine without a card
if [ "$TESTS_RC" = 5 ]; then TESTS_RC=0; fi
say "tests exit status $TESTS_RC"

# (4) the benchmarks, inside what is left of 7.5 minutes (GPU_CHECK_SECONDS: the whole run's
# target, default 450), the results file growing section by section
LEFT=$(( ${GPU_CHECK_SECONDS:-450} - ($(date +%s) - START) ))
BENCH_ARGS=(--out "$RESULTS" --junit "$RESULTS/gpu_check_tests.xml" --tests-rc "$TESTS_RC")
if [ "$DRY" = 1 ]; then
  BENCH_ARGS+=(--dry-run)
else
  BENCH_ARGS+=(--time-budget $(( LEFT > 120 ? LEFT - 60 : 60 )))
fi
say "benchmarks: bench_gpu.py ${BENCH_ARGS[*]}"
timeout $(( LEFT > 60 ? LEFT : 60 )) "$PY" benchmarks/bench_gpu.py "${BENCH_ARGS[@]}" 2>&1 | tee -a "$LOG"
BENCH_RC=${PIPESTATUS[0]}
say "benchmarks exit status $BENCH_RC; $(( $(date +%s) - START )) s in all; results in $RESULTS/gpu_check.md"
if [ "$TESTS_RC" != 0 ] || [ "$BENCH_RC" != 0 ]; then
  exit 1
fi
