#!/usr/bin/env bash
# Runs the `sanitize` subset of the emulated-CUDA tests (`-m "cuda_emu and sanitize"`) under
# ThreadSanitizer and/or AddressSanitizer: a missing barrier or a race in shared memory
# shows as a data race, an out-of-bounds access to global, shared or dynamic shared memory
# as a buffer overflow (csrc/emu/README.md). Needs the sanitizer builds:
#
#   FASTWARP_CUDA_EMU=1,thread,address pip install --no-build-isolation -e .
#   scripts/emu_sanitize.sh [thread] [address] [-- EXTRA PYTEST ARGS]
#
# The first report fails the run (halt_on_error); pytest captures only Python's streams
# (--capture=sys), so the sanitizer's report reaches the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."

variants=()
while [[ $# -gt 0 && "$1" != "--" ]]; do variants+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
[[ ${#variants[@]} -eq 0 ]] && variants=(thread address)

for variant in "${variants[@]}"; do
  echo "== cuda_emu tests under the ${variant} sanitizer"
  start=$SECONDS
  python -m fastwarp._emu "$variant" -- python -m pytest -m "cuda_emu and sanitize" -q --capture=sys \
    -p no:cacheprovider -p no:randomly "$@"
  echo "== ${variant}: clean, $((SECONDS - start)) s"
done
