#!/usr/bin/env bash
# scripts/gpu_wheels.sh: fetch into .whl/ the Python packages that the GPU machine lacks for
# scripts/gpu_check.sh (the list, with the reasons: scripts/gpu_wheels.txt), and check them.
#
#   bash scripts/gpu_wheels.sh            # here, with PyPI: (re)make .whl/, then --check it
#   bash scripts/gpu_wheels.sh --check    # the list, and .whl/ when it exists (no network)
#
# .whl/ holds exactly one file per listed package: wheels (py3-none-any, or cp312 manylinux
# x86_64) at its top, the sdists that must be compiled there in .whl/src/. Nothing is
# downloaded with its dependencies (--no-deps): each dependency a package declares for
# Python 3.12 on Linux must be listed too or be on the machine already (the list's
# `device-has` lines), which --check verifies, with the versions the machine is known to have
# (`device-version`: torch 2.11 must satisfy every package, and is never carried). The folder
# is git-ignored (.git/info/exclude) and travels with the device tool's `carry: [".whl"]`; its
# total must stay well under the 64 MiB a carried tree may have (--check fails over 50 MiB).
#
# Environment: PYTHON (default python3: the interpreter whose pip downloads, and whose
# setuptools builds the pure-Python wheels; it needs `packaging`, which pip has anyway).

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
LIST=$ROOT/scripts/gpu_wheels.txt
DEST=$ROOT/.whl
MAX_MIB=50

check() { # [folder]
    "$PY" - "$LIST" "${1:-}" "$MAX_MIB" <<'EOF'
import os, re, sys, zipfile, tarfile

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pip vendors it
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

list_path, folder, max_mib = sys.argv[1], sys.argv[2], float(sys.argv[3])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
KINDS = ("wheel", "build", "sdist")
ENV = dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux", platform_system="Linux",
           platform_machine="x86_64", os_name="posix", implementation_name="cpython",
           platform_python_implementation="CPython", extra="")
errors = []
entries, has, versions = {}, set(), {}
for n, line in enumerate(open(list_path), 1):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    words = line.split()
    if words[0] == "device-has":
        has.update(norm(w) for w in words[1:])
    elif words[0] == "device-version":
        for w in words[1:]:
            name, _, v = w.partition("==")
            versions[norm(name)] = Version(v)
    else:
        if "==" not in words[0] or len(words) < 2 or words[1] not in KINDS:
            errors.append(f"{list_path}:{n}: expected 'NAME==VERSION KIND why', KIND one of {KINDS}: {line}")
            continue
        name, _, version = words[0].partition("==")
        if norm(name) in entries:
            errors.append(f"{list_path}:{n}: {name} listed twice")
        entries[norm(name)] = dict(name=name, version=version, kind=words[1])
for key in entries:
    if key in has:
        errors.append(f"{entries[key]['name']} is on the machine already (device-has): do not carry it")
if "torch" not in has:
    errors.append("the list must name torch as device-has (it must never be carried)")
print(f"{list_path}: {len(entries)} packages to carry ({', '.join(e['name'] + '==' + e['version'] for e in entries.values())}); "
      f"{len(has)} on the machine")

def parse_file(path):
    base = os.path.basename(path)
    if base.endswith(".whl"):
        parts = base[:-4].split("-")
        if len(parts) not in (5, 6):
            return None
        return dict(name=norm(parts[0]), version=parts[1], py=parts[-3], abi=parts[-2], plat=parts[-1], wheel=True)
    if base.endswith(".tar.gz"):
        stem = base[:-7]
        name, _, version = stem.rpartition("-")
        return dict(name=norm(name), version=version, wheel=False)
    return None

def requires(path, wheel):
    if wheel:
        with zipfile.ZipFile(path) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(meta).decode()
    else:
        with tarfile.open(path) as t:
            members = [m for m in t.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
            text = t.extractfile(members[0]).read().decode() if members else ""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]

if folder and os.path.isdir(folder):
    found, total = {}, 0
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    src = os.path.join(folder, "src")
    files += [os.path.join(src, f) for f in sorted(os.listdir(src))] if os.path.isdir(src) else []
    for path in files:
        if os.path.isdir(path):
            continue
        info = parse_file(path)
        rel = os.path.relpath(path, folder)
        size = os.path.getsize(path)
        total += size
        if info is None or info["name"] not in entries:
            errors.append(f"{rel}: not in the list (remove it: one file per listed package)")
            continue
        entry = entries[info["name"]]
        if info["name"] in found:
            errors.append(f"{rel}: a second file for {entry['name']} (one version each)")
        found[info["name"]] = path
        if info["version"] != entry["version"]:
            errors.append(f"{rel}: version {info['version']}, the list says {entry['version']}")
        in_src = os.path.dirname(path) == src
        if entry["kind"] == "sdist" and (info["wheel"] or not in_src):
            errors.append(f"{rel}: {entry['name']} must be an sdist in src/")
        if entry["kind"] != "sdist" and (not info["wheel"] or in_src):
            errors.append(f"{rel}: {entry['name']} must be a wheel at the top of the folder")
        if info["wheel"]:
            pys = info["py"].split(".")
            ok_py = any(p in ("py3", "cp312") for p in pys) and info["abi"] in ("none", "cp312", "abi3")
            ok_plat = info["plat"] == "any" or ("manylinux" in info["plat"] and info["plat"].endswith("x86_64"))
            if not (ok_py and ok_plat):
                errors.append(f"{rel}: tags {info['py']}-{info['abi']}-{info['plat']} do not run on cp312 Linux x86_64")
        for req in requires(path, info["wheel"]):
            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate(ENV):
                continue
            key = norm(r.name)
            if key in entries:
                if r.specifier and Version(entries[key]["version"]) not in r.specifier:
                    errors.append(f"{rel}: needs {req}, the list carries {entries[key]['version']}")
            elif key in has:
                if key in versions and r.specifier and versions[key] not in r.specifier:
                    errors.append(f"{rel}: needs {req}, the machine has {versions[key]}")
            else:
                errors.append(f"{rel}: needs {req}, neither carried nor on the machine")
        print(f"  {rel:<52} {size / 2**20:7.2f} MiB  {entry['kind']}")
    for key, entry in entries.items():
        if key not in found:
            errors.append(f"{entry['name']}=={entry['version']}: no file in {folder}")
    print(f"  total {total / 2**20:.2f} MiB in {len(found)} files (limit {max_mib:.0f} MiB)")
    if total > max_mib * 2**20:
        errors.append(f"{folder}: {total / 2**20:.1f} MiB, over {max_mib:.0f} MiB")
elif folder:
    print(f"{folder}: absent (make it with scripts/gpu_wheels.sh); the list alone was checked")
for e in errors:
    print("ERROR:", e)
sys.exit(1 if errors else 0)
EOF
}

entries() { # NAME VERSION KIND per line
    awk '!/^[[:space:]]*#/ && NF >= 2 && $1 ~ /==/ { split($1, a, "=="); print a[1], a[2], $2 }' "$LIST"
}

case ${1:-} in
    --check) check "$DEST"; exit $? ;;
    "") ;;
    -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_wheels: unknown argument $1 (--check, or none)" >&2; exit 2 ;;
esac

check "" || exit 1  # the list itself, before downloading anything

# the folder is git-ignored, so that it travels only where `carry` names it
exclude=$(git -C "$ROOT" rev-parse --git-path info/exclude 2>/dev/null) && {
    [[ $exclude == /* ]] || exclude=$ROOT/$exclude
    mkdir -p "$(dirname "$exclude")"
    grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
}

NEW=$(mktemp -d /tmp/gpu_wheels.XXXXXX)
trap 'rm -rf "$NEW"' EXIT
mkdir -p "$NEW/whl/src" "$NEW/build"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
fail=0
while read -r name version kind; do
    spec="$name==$version"
    echo "== $spec ($kind)"
    case $kind in
        wheel)
            "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                "${PLATFORMS[@]}" -d "$NEW/whl" "$spec" || fail=1 ;;
        build)  # pure Python, sdist only: a py3-none-any wheel built here
            "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-binary "$name" -w "$NEW/build" "$spec" &&
                mv "$NEW"/build/*.whl "$NEW/whl/" || fail=1 ;;
        sdist)  # compiled on the GPU machine; the metadata is read with this environment's torch
            "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary "$name" -d "$NEW/whl/src" "$spec" ||
                fail=1 ;;
    esac
done < <(entries)
if ((fail)); then
    echo "gpu_wheels: a download failed; .whl/ left as it was" >&2
    exit 1
fi
rm -rf "$DEST"
mv "$NEW/whl" "$DEST"
check "$DEST"
