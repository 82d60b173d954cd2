#!/usr/bin/env bash
# A real AArch64 Ray node on an x86_64 development machine, for mgdist's mixed-architecture
# runs: a Debian arm64 root run under qemu-user emulation, joined to a local x86_64 Ray head.
#
#   cluster/local-arm64.sh build        # once, needs the network: Debian arm64 root, wheels, venvs
#   cluster/local-arm64.sh up           # head (arch_x86_64) + arm64 node (arch_aarch64) on 127.0.0.1
#   cluster/local-arm64.sh exec CMD...  # run CMD against them: python jobs/quantile.py ...
#   cluster/local-arm64.sh status
#   cluster/local-arm64.sh down         # stops exactly the processes `up` started, by pid
#
# Why it is built this way:
# - Ray requires the same Python (major.minor.micro) and Ray version on every node and driver.
#   Debian bookworm's python3 is 3.11.2 on amd64 and arm64 alike, so both sides run Debian's
#   python3: the head from a venv on /usr/bin/python3, the node from a venv in the arm64 root.
#   Drivers must use the head venv's python too (`exec` puts it first on PATH).
# - The arm64 root has no working network of its own (pip's TLS fails under emulation), so the
#   aarch64 wheels are downloaded on the host, pinned to exactly the head venv's versions, and
#   installed in the root with `pip --no-index`.
# - Everything talking to this Ray stays on 127.0.0.1 by running in a network namespace that has
#   only loopback (Ray otherwise swaps 127.0.0.1 for the default route's address and binds on
#   all interfaces). Such a namespace has no network, so every download happens in `build`,
#   outside it. `up` run outside a loopback-only namespace builds if needed, then re-runs itself
#   inside ours ($MGDIST_ARM64_NETNS, default mgarm); run inside one (e.g. `ip netns exec mgarm
#   ...` after `build`), it starts the pair right there.
# - The chroot runs in a private mount namespace: the bind mounts it needs (/proc, /sys, /dev
#   with /dev/shm for the object store, /tmp, the checkout) exist only for its processes and
#   vanish with them, so nothing is left mounted under the root and deleting it is always safe.
# - The chroot shares the host's process table, so `ray stop` anywhere would kill both nodes and
#   every other Ray on the machine. `down` kills only this pair's processes, by pid: found by
#   their unique temp dirs, by being chrooted into our root, or by naming the pair's GCS address
#   inside its namespace, plus all their children.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SELF")")           # the checkout both nodes run (mounted read-only)
# Absolute, without symlinks: processes are recognised by their root directory's path.
CACHE=$(readlink -m "${MGDIST_ARM64_CACHE:-/var/cache/mgdist}")
ROOT=$(readlink -m "${MGDIST_ARM64_ROOT:-$CACHE/arm64-root}")   # Debian arm64 root, built once
HEAD_VENV=$(readlink -m "${MGDIST_HEAD_VENV:-$CACHE/head-venv}")  # x86_64 venv on Debian's /usr/bin/python3
NETNS=${MGDIST_ARM64_NETNS:-mgarm}
STATE=${MGDIST_ARM64_STATE:-/run/mgdist-arm64.env}  # what `up` started, for exec/status/down
MIRROR=${MGDIST_ARM64_MIRROR:-}                # Debian mirror; default: the one apt uses here
HEAD_CPUS=${MGDIST_HEAD_CPUS:-1}
ARM_CPUS=${MGDIST_ARM64_CPUS:-1}
SUITE=bookworm                                 # python3 3.11.2 on both architectures
ARM_VENV=/opt/mgdist/venv                      # inside the root
ARM_WHEELS=/opt/mgdist/wheels                  # inside the root
# With qemu's default CPU model OpenBLAS picks SME kernels, and float32 matmuls inside Ray
# workers were seen to return NaN or wrong values now and then; a Neoverse-N1 (Graviton2) has
# no SME.
QEMU_CPU_MODEL=${MGDIST_QEMU_CPU:-neoverse-n1}
# aarch64 wheel tags to accept: glibc 2.36 is bookworm's; without the newer tags pip silently
# falls back to old manylinux2014 releases of numpy and pyarrow.
PLATFORMS=(manylinux_2_36_aarch64 manylinux_2_28_aarch64 manylinux2014_aarch64)

log() { printf '[local-arm64] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
seconds_since() { echo $(( $(date +%s) - $1 )); }

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts, network namespaces)"
  local missing=()
  for tool in debootstrap update-binfmts unshare chroot ip flock; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ -e /usr/bin/qemu-aarch64-static ] || missing+=(qemu-aarch64-static)
  [ ${#missing[@]} = 0 ] || die "missing ${missing[*]}: apt-get install qemu-user-static binfmt-support debootstrap"
}

# One build/up/down at a time on this machine. The lock is on fd 9, inherited by the copy of
# this script that `up` re-runs inside the namespace; Ray's daemons must not inherit it.
lock() {
  [ -n "${MGDIST_ARM64_LOCKED:-}" ] && return
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock -w 1800 9 || die "another local-arm64.sh has held $CACHE/.lock for 30 min"
  export MGDIST_ARM64_LOCKED=1
}

# The kernel runs aarch64 ELF files through qemu once binfmt_misc knows it. The F flag (set by
# Debian's qemu-user-static) opens the interpreter at registration, so the root needs no copy.
ensure_binfmt() {
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    update-binfmts --enable qemu-aarch64
  fi
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt_misc: qemu-aarch64 not enabled"
}

# True when this network namespace has no address beyond loopback: Ray then stays on 127.0.0.1.
loopback_only() { [ -z "$(ip -o addr show scope global 2>/dev/null)" ]; }

ensure_netns() {
  [ -e "/run/netns/$NETNS" ] || ip netns add "$NETNS"
  ip netns exec "$NETNS" ip link set lo up
}

netns_id() { stat -L -c %i "${1:-/proc/self/ns/net}"; }

# "$NETNS" when this process runs in it, else nothing (e.g. a CI job's own namespace).
our_netns_name() {
  if [ -e "/run/netns/$NETNS" ] && [ "$(netns_id)" = "$(netns_id "/run/netns/$NETNS")" ]; then echo "$NETNS"; fi
}

site_packages() { echo "$1/lib/python3.11/site-packages"; }

# The project's runtime dependencies, read from pyproject.toml (the one list to keep).
project_deps() {
  /usr/bin/python3 -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$REPO/pyproject.toml"
}

# Both nodes import mgdist straight from this checkout (the root sees it at the same path), so
# they always run the code being worked on. A .pth line does what `pip install -e` would,
# without writing egg-info into a checkout that the root mounts read-only.
link_checkout() {
  echo "$REPO" >"$(site_packages "$HEAD_VENV")/mgdist-checkout.pth"
  echo "$REPO" >"$(site_packages "$ROOT$ARM_VENV")/mgdist-checkout.pth"
}

# Ray 2.60's raylet gives its dashboard agent 15 s to report the HTTP port it listens on (a
# file in the session dir), then aborts. Under emulation on a busy machine the agent's imports
# alone take longer (25 s measured), so the node died at random. `up` passes that port
# explicitly, so a hook in the node's venv reports it the moment the agent's interpreter starts;
# the agent writes the same file again once it listens. Tied to Ray's file naming, which is why
# pyproject.toml pins Ray: a rename makes the raylet abort with "Timed out waiting for file".
install_agent_port_hook() {
  local sp
  sp=$(site_packages "$ROOT$ARM_VENV")
  cat >"$sp/_mgdist_agent_port.py" <<'PY'
"""Written by cluster/local-arm64.sh: report the dashboard agent's listen port early (see there)."""
import os


def report():
    with open("/proc/self/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace").split("\0")
    if not any(a.endswith("/ray/dashboard/agent.py") for a in argv):
        return
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    port, session, node = opts.get("listen-port", "0"), opts.get("session-dir"), opts.get("node-id")
    if port == "0" or not session or not node:
        return
    path = os.path.join(session, f"dashboard_agent_listen_port_{node}")
    with open(f"{path}.early", "w") as f:
        f.write(port)
    os.replace(f"{path}.early", path)  # whole, or not at all: the raylet polls for it


try:
    report()
except Exception:
    pass  # never in the way of starting Python
PY
  echo "import _mgdist_agent_port" >"$sp/mgdist-agent-port.pth"
}

# ---------------------------------------------------------------- running inside the root
# in_root CMD...: run CMD (a path inside the root) as an aarch64 process, chrooted, with a
# clean environment, in a private mount namespace that holds the root's bind mounts.
in_root() { unshare --mount --propagation private -- "$SELF" _chroot "$@"; }

_chroot() {  # runs in the private mount namespace made by in_root
  mount --rbind /proc "$ROOT/proc"
  mount --rbind /sys "$ROOT/sys"
  mount --rbind /dev "$ROOT/dev"           # with /dev/shm: Ray's object store lives there
  mount --rbind /tmp "$ROOT/tmp"           # same /tmp on both nodes: data, checkpoints, Ray temp dirs
  mkdir -p "$ROOT$REPO"
  mount --bind "$REPO" "$ROOT$REPO"        # the checkout, at the same path as on the host
  mount -o remount,bind,ro "$ROOT$REPO"
  local share
  for share in ${MGDIST_ARM64_SHARE:-}; do  # more host dirs at the same path, e.g. a data dir
    mkdir -p "$ROOT$share"
    mount --rbind "$share" "$ROOT$share"
  done
  exec chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
    PATH="$ARM_VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    QEMU_CPU="$QEMU_CPU_MODEL" RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# ------------------------------------------------------------------------------ build
# Refuse to delete a tree with something mounted in it (rm -rf would reach into /dev or /tmp).
no_mounts_under() {
  ! findmnt -rn -o TARGET | grep -q "^$1\(/\|$\)" || die "something is mounted under $1: unmount it first"
}

build_head_venv() {
  local deps stamp="$HEAD_VENV/.mgdist-deps"
  deps=$(project_deps)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$deps" ]; then return; fi
  local t0
  t0=$(date +%s)
  log "head venv: $HEAD_VENV on $(/usr/bin/python3 --version) with ${deps//$'\n'/ }"
  [ -x "$HEAD_VENV/bin/python" ] || /usr/bin/python3 -m venv "$HEAD_VENV"
  mapfile -t reqs <<<"$deps"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$HEAD_VENV/bin/pip" install -q "${reqs[@]}"
  # The exact versions of everything the head runs: the arm64 root gets the very same ones.
  "$HEAD_VENV/bin/pip" freeze --exclude-editable | grep -v '^-e ' >"$HEAD_VENV/.mgdist-lock.txt"
  echo "$deps" >"$stamp"
  log "head venv ready in $(seconds_since "$t0") s"
}

debootstrap_root() {
  [ -f "$ROOT/.mgdist-debootstrap" ] && return
  local partial="$ROOT.partial" mirror=$MIRROR t0
  t0=$(date +%s)
  if [ -z "$mirror" ]; then  # the Debian mirror apt uses here (deb822 or one-line sources)
    mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null \
             | head -n1 | tr -d ' ') || true
    mirror=${mirror:-http://deb.debian.org/debian}
  fi
  log "debootstrap $SUITE arm64 from $mirror into $ROOT (~2.5 min)"
  no_mounts_under "$partial"
  rm -rf "$partial"
  # In a private mount namespace too: the /proc and /sys that debootstrap mounts into the
  # target vanish with it, even when it is interrupted.
  unshare --mount --propagation private -- debootstrap --arch=arm64 --variant=minbase \
      --include=python3,python3-venv "$SUITE" "$partial" "$mirror" >/dev/null \
    || die "debootstrap failed: see $partial/debootstrap/debootstrap.log"
  touch "$partial/.mgdist-debootstrap"
  no_mounts_under "$ROOT"
  rm -rf "$ROOT"
  mv "$partial" "$ROOT"
  log "debootstrap done in $(seconds_since "$t0") s"
}

install_root_venv() {
  local lock="$HEAD_VENV/.mgdist-lock.txt" stamp="$ROOT/opt/mgdist/.installed-lock.txt"
  if [ -f "$stamp" ] && cmp -s "$lock" "$stamp"; then return; fi
  local t0 t1
  t0=$(date +%s)
  mkdir -p "$ROOT$ARM_WHEELS"
  log "aarch64 wheels of the head venv's exact versions -> $ROOT$ARM_WHEELS"
  local platform_args=()
  for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$HEAD_VENV/bin/pip" download -q --only-binary=:all: "${platform_args[@]}" \
    --python-version 3.11 --implementation cp -d "$ROOT$ARM_WHEELS" -r "$lock"
  cp "$lock" "$ROOT/opt/mgdist/requirements.txt"
  t1=$(date +%s)
  log "downloaded in $(( t1 - t0 )) s; installing them in $ARM_VENV inside the root, under emulation (several minutes)"
  [ -x "$ROOT$ARM_VENV/bin/python" ] || in_root /usr/bin/python3 -m venv "$ARM_VENV"
  in_root "$ARM_VENV/bin/pip" install -q --no-index --find-links "$ARM_WHEELS" -r /opt/mgdist/requirements.txt
  cp "$lock" "$stamp"
  log "installed in $(seconds_since "$t1") s"
}

# Same Python and Ray on both sides, or Ray refuses the node: check now rather than at `up`.
check_versions() {
  local probe='import platform, sys, numpy, ray
print(platform.machine(), sys.version.split()[0], "ray", ray.__version__, "numpy", numpy.__version__)'
  local head arm
  head=$("$HEAD_VENV/bin/python" -c "$probe")
  arm=$(in_root "$ARM_VENV/bin/python" -c "$probe")
  log "head: $head"
  log "node: $arm"
  [ "${head#* }" = "${arm#* }" ] || die "Python/Ray/NumPy versions differ between the head and the arm64 node"
  [ "${arm%% *}" = aarch64 ] || die "the root does not run as aarch64"
}

cmd_build() {
  need_root
  lock
  loopback_only && die "build downloads packages: run it outside the loopback-only network namespace"
  local t0
  t0=$(date +%s)
  ensure_binfmt
  build_head_venv
  debootstrap_root
  install_root_venv
  link_checkout
  install_agent_port_hook
  check_versions
  ensure_netns
  log "built in $(seconds_since "$t0") s (root $ROOT, head venv $HEAD_VENV, namespace $NETNS)"
}

built() {
  [ -f "$ROOT/.mgdist-debootstrap" ] && [ -f "$HEAD_VENV/.mgdist-deps" ] \
    && [ "$(cat "$HEAD_VENV/.mgdist-deps")" = "$(project_deps)" ] \
    && cmp -s "$HEAD_VENV/.mgdist-lock.txt" "$ROOT/opt/mgdist/.installed-lock.txt"
}

# ------------------------------------------------------------------------- processes
# Every process of the running pair, by pid: those whose command line names one of its temp
# dirs, those chrooted into its root, those in its network namespace that name its GCS address
# (`ray start` leaves some daemons without the temp dir in their arguments), and all their
# descendants (Ray retitles native workers "ray::...", hiding their arguments).
pair_pids() {
  local seeds=() proc args
  # An empty marker would match every process on the machine: refuse a damaged state file.
  [[ "$HEAD_TEMP" == /tmp/mgarm-head-?* && "$NODE_TEMP" == /tmp/mgarm-node-?* && "$RAY_GCS" == 127.0.0.1:?* \
     && -n "$NETNS_INODE" ]] || die "$STATE is damaged; stop the pair's processes by hand"
  for proc in /proc/[0-9]*; do
    args=$(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null) || continue
    if [ "$(readlink "$proc/root" 2>/dev/null)" = "$ROOT" ] \
        || [[ "$args" == *"$HEAD_TEMP"* || "$args" == *"$NODE_TEMP"* ]] \
        || { [[ "$args" =~ ${RAY_GCS//./\\.}([^0-9]|$) ]] \
             && [ "$(netns_id "$proc/ns/net" 2>/dev/null)" = "$NETNS_INODE" ]; }; then
      seeds+=("${proc#/proc/}")
    fi
  done
  ps -e -o pid=,ppid= | SEEDS="${seeds[*]}" awk '
    { pid[NR] = $1; ppid[NR] = $2 }
    END {
      split(ENVIRON["SEEDS"], seeds, " "); for (i in seeds) ours[seeds[i]] = 1
      do {  # add children until nothing changes
        grew = 0
        for (r = 1; r <= NR; r++) if ((ppid[r] in ours) && !(pid[r] in ours)) { ours[pid[r]] = 1; grew = 1 }
      } while (grew)
      for (p in ours) print p
    }'
}

# Alive while the head's GCS and the node's raylet, recorded by `up`, still run.
pair_alive() {
  [ -f "$STATE" ] || return 1
  # shellcheck disable=SC1090
  . "$STATE"
  local pid
  for pid in "$HEAD_GCS_PID" "$NODE_RAYLET_PID"; do
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  done
}

stop_pair() {
  [ -f "$STATE" ] || { log "nothing to stop (no $STATE)"; return; }
  # shellcheck disable=SC1090
  . "$STATE"
  local pids left pid
  mapfile -t pids < <(pair_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping ${#pids[@]} processes of the pair (head $HEAD_TEMP, node $NODE_TEMP)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 30); do  # emulated processes can take a few seconds to exit
      left=()
      for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && left+=("$pid"); done
      [ ${#left[@]} = 0 ] && break
      sleep 0.5
    done
    if [ ${#left[@]} -gt 0 ]; then
      log "killing what is left after SIGTERM: $(ps -o pid=,comm= -p "$(IFS=,; echo "${left[*]}")" | tr -s ' \n' ' ')"
      kill -KILL "${left[@]}" 2>/dev/null || true
    fi
  fi
  rm -rf "$HEAD_TEMP" "$NODE_TEMP"
  rm -f "$STATE"
}

# Free TCP ports on 127.0.0.1 in this namespace, one a line. Both nodes share one address, so
# every port Ray would take at a fixed default (GCS, dashboard, client server, each node's
# dashboard agent) is chosen here, and their worker port ranges are kept apart. So are the
# ports Ray otherwise learns from files its agents write once started: the raylet waits 15 s
# for those, and under emulation the dashboard agent alone takes longer to import.
free_ports() {
  "$HEAD_VENV/bin/python" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# One node's agent ports, as `ray start` options: dashboard agent HTTP and gRPC, metrics
# export, runtime env agent.
agent_ports() {
  echo "--dashboard-agent-listen-port=$1 --dashboard-agent-grpc-port=$2" \
       "--metrics-export-port=$3 --runtime-env-agent-port=$4"
}

# ------------------------------------------------------------------------------ up
# fail_up MESSAGE LOG: keep both nodes' Ray logs for a look, stop what started, exit.
fail_up() {
  tail -n 20 "$2" >&2
  rm -rf "$CACHE/failed-logs"
  mkdir -p "$CACHE/failed-logs"
  cp -r "$HEAD_TEMP/session_latest/logs" "$CACHE/failed-logs/head" 2>/dev/null || true
  cp -r "$NODE_TEMP/session_latest/logs" "$CACHE/failed-logs/node" 2>/dev/null || true
  stop_pair
  die "$1 (Ray logs of both nodes: $CACHE/failed-logs)"
}

cmd_up() {
  need_root
  lock
  if ! loopback_only; then
    # Outside: the one place with network, so build what is missing, then enter our namespace.
    built || cmd_build
    ensure_netns
    exec ip netns exec "$NETNS" "$SELF" up
  fi
  built || die "not built for this checkout's dependencies: run '$SELF build' outside the network namespace first"
  if pair_alive; then
    log "already up"
    print_usage
    return
  fi
  stop_pair  # leftovers of a pair that died
  ensure_binfmt
  link_checkout
  install_agent_port_hook

  local t0 id ports gcs dash
  t0=$(date +%s)
  id=$(date +%s)-$$
  HEAD_TEMP=/tmp/mgarm-head-$id  # short: Ray's socket paths are length-limited
  NODE_TEMP=/tmp/mgarm-node-$id  # /tmp is the same directory inside the root
  mapfile -t ports < <(free_ports 11)
  gcs=${ports[0]} dash=${ports[1]}
  # Written before starting anything, so that `down` can clean up a half-started pair.
  cat >"$STATE" <<EOF
RAY_GCS=127.0.0.1:$gcs
RAY_DASHBOARD=http://127.0.0.1:$dash
NETNS_NAME=$(our_netns_name)
NETNS_INODE=$(netns_id)
HEAD_TEMP=$HEAD_TEMP
NODE_TEMP=$NODE_TEMP
HEAD_GCS_PID=
NODE_RAYLET_PID=
EOF
  local common=(--node-ip-address=127.0.0.1 --disable-usage-stats)
  log "starting the x86_64 head on 127.0.0.1:$gcs"
  # shellcheck disable=SC2046  # agent_ports prints four separate options
  env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 \
    "$HEAD_VENV/bin/ray" start --head "${common[@]}" --port="$gcs" --num-cpus="$HEAD_CPUS" \
      --resources='{"arch_x86_64": 1}' --object-store-memory=200000000 --temp-dir="$HEAD_TEMP" \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dash" \
      --ray-client-server-port="${ports[10]}" $(agent_ports "${ports[@]:2:4}") \
      --min-worker-port=20000 --max-worker-port=20999 \
      >"$CACHE/head-start.log" 2>&1 9>&- \
    || fail_up "the head did not start" "$CACHE/head-start.log"

  log "starting the aarch64 node under qemu ($QEMU_CPU_MODEL)"
  # Emulated workers can take longer than Ray's 60 s to start and register on a busy machine.
  # shellcheck disable=SC2046
  in_root /usr/bin/env RAY_worker_register_timeout_seconds=600 \
    "$ARM_VENV/bin/ray" start --address="127.0.0.1:$gcs" "${common[@]}" --num-cpus="$ARM_CPUS" \
      --resources='{"arch_aarch64": 1}' --object-store-memory=100000000 --temp-dir="$NODE_TEMP" \
      $(agent_ports "${ports[@]:6:4}") --min-worker-port=21000 --max-worker-port=21999 \
      >"$CACHE/node-start.log" 2>&1 9>&- \
    || fail_up "the aarch64 node did not start" "$CACHE/node-start.log"

  # Joined once the head's GCS lists the node's resource.
  local deadline=$((SECONDS + 240))
  until env RAY_AUTH_MODE=disabled timeout 30 "$HEAD_VENV/bin/ray" status --address="127.0.0.1:$gcs" 2>/dev/null \
      | grep -q arch_aarch64; do
    [ "$SECONDS" -lt "$deadline" ] || fail_up "the aarch64 node did not join within 4 min" "$CACHE/node-start.log"
    sleep 2
  done
  local gcs_pid raylet_pid
  gcs_pid=$(pgrep -f -- "gcs_server.*$HEAD_TEMP" | head -n1) || true
  raylet_pid=$(pgrep -f -- "raylet.*$NODE_TEMP" | head -n1) || true
  sed -i "s/^HEAD_GCS_PID=.*/HEAD_GCS_PID=$gcs_pid/; s/^NODE_RAYLET_PID=.*/NODE_RAYLET_PID=$raylet_pid/" "$STATE"
  pair_alive || fail_up "could not find the head's gcs_server or the node's raylet" "$CACHE/node-start.log"
  log "up in $(seconds_since "$t0") s"
  print_usage
}

print_usage() {
  # shellcheck disable=SC1090
  . "$STATE"
  cat <<EOF
Ray head (x86_64, arch_x86_64) and AArch64 node (arch_aarch64) on 127.0.0.1,
in network namespace ${NETNS_NAME:-where up ran}:
  RAY_ADDRESS=$RAY_GCS          (drivers: ray.init, jobs/quantile.py)
  dashboard / job API: $RAY_DASHBOARD
Drivers must run there with the head venv's Python 3.11.2 and RAY_AUTH_MODE=disabled; exec does both:
  $SELF exec python jobs/quantile.py --data /tmp/DATA --arch-workers x86_64=1,aarch64=1 ...
EOF
}

# ------------------------------------------------------------------- exec, status, down
cmd_exec() {
  [ $# -gt 0 ] || die "usage: $SELF exec CMD [ARGS...]"
  pair_alive || die "not up: run '$SELF up' first"
  local run=(env -u PYTHONHOME -u PYTHONPATH VIRTUAL_ENV="$HEAD_VENV" PATH="$HEAD_VENV/bin:$PATH"
             RAY_ADDRESS="$RAY_GCS" RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 "$@")
  if [ "$(netns_id)" = "$NETNS_INODE" ]; then
    exec "${run[@]}"
  elif [ -n "$NETNS_NAME" ]; then
    exec ip netns exec "$NETNS_NAME" "${run[@]}"
  else
    die "the pair runs in another network namespace (the one 'up' ran in): run this there"
  fi
}

cmd_status() {
  if ! pair_alive; then echo "down"; return 1; fi
  print_usage
  cmd_exec ray status --address="$RAY_GCS"
}

cmd_down() {
  need_root
  lock
  stop_pair
  log "down (namespace $NETNS kept; 'ip netns delete $NETNS' removes it)"
}

case "${1:-}" in
  build) cmd_build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  exec) shift; cmd_exec "$@" ;;
  _chroot) shift; _chroot "$@" ;;
  *) sed -n '2,9p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
