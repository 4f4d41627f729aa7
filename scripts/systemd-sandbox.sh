#!/bin/sh
# systemd-sandbox.sh -- boots a real systemd as PID 1 in private namespaces, for
# the tests of obhostd's unit, its scopes and StartAgentService's systemd mode
# (systemd is not PID 1 on the machines the tests run on).
#
#   systemd-sandbox.sh start NAME SHARED...   boot; prints the host pid of its PID 1
#   systemd-sandbox.sh stop PID               power it off; SIGKILL what is left
#
# The host is never written: / is the lower dir of an overlay whose upper dir
# is a tmpfs. /proc/sys and /sys are read-only, /sys/fs/cgroup is a cgroup2 of
# the sandbox's own (a fresh folder of the host's cgroup2 mount, so it
# delegates nothing it does not own), /dev is a small tmpfs with its own
# devpts, /run and /tmp are tmpfs. Each SHARED dir is bind-mounted at the same
# path inside, read-write (the tests' temp dirs, the built binaries).
# systemd starts basic.target only: multi-user.target would start the host's
# own services. Commands reach it with `nsenter -t PID -a CMD`.
#
# Needs root, unshare/nsenter (util-linux), a cgroup2 mount (/sys/fs/cgroup or
# /sys/fs/cgroup/unified) and /lib/systemd/systemd.
set -eu

cg2() {
    for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
        if [ "$(stat -f -c %T "$d" 2>/dev/null)" = cgroup2fs ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

inside() {
    # Runs as PID 1 of the new pid namespace, in the new mount namespace.
    name=$1
    shift
    work=$(mktemp -d /tmp/obhost-sd-XXXXXX)
    mount -t tmpfs -o mode=0755 tmpfs "$work"
    mkdir -p "$work/upper" "$work/work" "$work/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
    r=$work/root
    mount -t proc proc "$r/proc"
    mount --bind -o ro "$r/proc/sys" "$r/proc/sys"
    mount -t sysfs -o ro sysfs "$r/sys"
    mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
    mount -t tmpfs -o mode=0755,size=4m tmpfs "$r/dev"
    for n in null zero full random urandom tty; do
        touch "$r/dev/$n"
        mount --bind "/dev/$n" "$r/dev/$n"
    done
    mkdir -p "$r/dev/pts" "$r/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts"
    ln -s pts/ptmx "$r/dev/ptmx"
    ln -s /proc/self/fd "$r/dev/fd"
    mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
    mount -t tmpfs -o mode=0755 tmpfs "$r/run"
    mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
    for d in "$@"; do
        mkdir -p "$r$d"
        mount --bind "$d" "$r$d"
    done
    mkdir -p "$r/.oldroot"
    cd "$r"
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot 2>/dev/null || :
    exec env -i container="$name" /lib/systemd/systemd --system --unit=basic.target
}

case ${1:-} in
start)
    name=$2
    shift 2
    [ "$(id -u)" = 0 ] || { echo "systemd-sandbox: needs root" >&2; exit 2; }
    [ -x /lib/systemd/systemd ] || { echo "systemd-sandbox: no /lib/systemd/systemd (apt install systemd)" >&2; exit 2; }
    root=$(cg2) || { echo "systemd-sandbox: no cgroup2 mount" >&2; exit 2; }
    cg="$root/obhost-sd-$name-$$"
    mkdir "$cg"
    # The sandbox's processes live under this folder: it is what the
    # sandbox's /sys/fs/cgroup shows, and what stop cleans up.
    log=$(mktemp /tmp/obhost-sd-log-XXXXXX)
    (
        echo $$ > "$cg/cgroup.procs" 2>/dev/null || echo "$(sh -c 'echo $PPID')" > "$cg/cgroup.procs"
        exec unshare --pid --fork --kill-child --mount --uts --ipc --cgroup --propagation private \
            sh "$0" inside "$name" "$@"
    ) >"$log" 2>&1 &
    # PID 1 of the sandbox: the child of unshare.
    i=0
    while :; do
        pid=$(pgrep -P "$!" 2>/dev/null | head -n1 || true)
        if [ -n "$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = systemd ]; then
            break
        fi
        i=$((i + 1))
        if [ $i -gt 200 ]; then
            echo "systemd-sandbox: systemd did not start; its output:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
    # Ready when the manager says so (basic.target reached); until its
    # private socket exists, systemctl cannot even ask.
    i=0
    while :; do
        state=$(nsenter -t "$pid" -a systemctl is-system-running 2>&1 || true)
        case $state in
        running|degraded) break ;;
        esac
        i=$((i + 1))
        if [ $i -gt 600 ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "systemd-sandbox: systemd did not come up (last: $state); its output:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
    echo "$pid $cg"
    ;;
inside)
    shift
    inside "$@"
    ;;
stop)
    pid=$2
    cg=${3:-}
    nsenter -t "$pid" -a systemctl poweroff --no-block >/dev/null 2>&1 || :
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 40 ]; do
        sleep 0.05
        i=$((i + 1))
    done
    kill -KILL "$pid" 2>/dev/null || :
    if [ -n "$cg" ] && [ -d "$cg" ]; then
        # Whatever is left in the sandbox's cgroup, then the folders.
        if [ -f "$cg/cgroup.kill" ]; then
            echo 1 > "$cg/cgroup.kill" 2>/dev/null || :
        fi
        for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || :; done
        i=0
        while [ $i -lt 40 ]; do
            find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || :
            [ -d "$cg" ] || break
            sleep 0.05
            i=$((i + 1))
        done
    fi
    ;;
*)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac
