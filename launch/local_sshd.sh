#!/usr/bin/env bash
# An sshd on 127.0.0.1:22 for `ray up launch/cluster.local.yaml` on the local machine, with a fresh
# host key and a fresh client key, in private PID and mount namespaces:
#
#   launch/local_sshd.sh start DIR    # prints nothing on success; DIR/id_ed25519 is the client key
#   launch/local_sshd.sh stop DIR     # ends sshd and everything started through it
#
# Why namespaces: the cluster launcher runs `ray stop` on the head (`ray down` always does), and
# `ray stop` kills every Ray process of the machine it runs on. Through this sshd it only sees
# the processes started through this sshd (private PID namespace), so other Ray clusters on the
# machine live on. Its home directory is STATE/home (with sshd's own files beside it)
# bind-mounted over the user's home, so what the launcher and the setup commands write there
# (~/.bashrc lines, ~/bst-search, the bootstrap config and key) never touches the real one; the
# Python installation (pyenv), pip's cache and configuration are bind-mounted back in from the
# real home.
#
# STATE holds the authorized_keys of the user (root, usually) that sshd accepts, so it is a
# folder this script made itself: `mktemp -d` (mode 0700, owned by the caller, an unguessable
# name), or BST_E2E_SSHD_STATE, created new with mode 0700. It is recorded in DIR/state-dir and
# reused by the next start only while it is owned by the caller, mode 0700 and marked; any other
# existing folder is refused (a folder someone else made first could hold their key). DIR must
# be owned by the caller and writable by nobody else. sshd runs with StrictModes yes.
set -euo pipefail

cmd=${1:?usage: local_sshd.sh start|stop|running DIR}
dir=$(mkdir -p "${2:?usage: local_sshd.sh start|stop|running DIR}" && cd "$2" && pwd)
pidfile=$dir/sshd.pid
port=${BST_E2E_SSH_PORT:-22}
record=$dir/state-dir
marker=.made-by-local-sshd
uid=$(id -u)

running() { test -f "$pidfile" && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

if [ "$cmd" = running ]; then
    running
    exit
fi
if [ "$cmd" = stop ]; then
    if running; then
        # the namespace's init is unshare's child: killing it ends every process in the namespace
        pid=$(cat "$pidfile")
        init=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null | awk '{print $1}')
        kill -9 ${init:-} "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
    exit 0
fi
[ "$cmd" = start ] || { echo "usage: local_sshd.sh start|stop DIR" >&2; exit 2; }
if running; then exit 0; fi

# $1 is a real directory owned by the caller, with no permission bits in $2 for group and others
owned() { [ -d "$1" ] && [ ! -L "$1" ] && [ "$(stat -c %u "$1")" = "$uid" ] && [ $((0$(stat -c %a "$1") & $2)) -eq 0 ]; }
if ! owned "$dir" 022; then
    echo "error: $dir must be owned by uid $uid and writable by nobody else (it keeps the client key)" >&2
    exit 5
fi
# sshd's own files and the head's home: outside the real home, which the namespace covers
state=${BST_E2E_SSHD_STATE:-$(cat "$record" 2>/dev/null || true)}
if [ -n "$state" ] && { [ -e "$state" ] || [ -L "$state" ]; }; then
    if [ "$(cat "$record" 2>/dev/null)" != "$state" ] || ! owned "$state" 077 || [ ! -f "$state/$marker" ]; then
        echo "error: $state exists and is not a folder local_sshd.sh created (recorded in $record," \
             "owned by uid $uid, mode 0700): refusing it, since a folder someone else made first" \
             "could hold a key sshd would accept; remove it, or name a new one in BST_E2E_SSHD_STATE" >&2
        exit 5
    fi
elif [ -n "${BST_E2E_SSHD_STATE:-}" ]; then
    mkdir -m 700 "$state"   # not -p: a new folder, in a parent that exists
else
    state=$(mktemp -d "${TMPDIR:-/tmp}/bst-local-sshd.XXXXXXXX")
fi
touch "$state/$marker"
echo "$state" > "$record"

sshd=$(command -v sshd || echo /usr/sbin/sshd)
if [ ! -x "$sshd" ]; then
    echo "error: no sshd: install it with 'apt-get install -y openssh-server'" >&2
    exit 3
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: something already listens on 127.0.0.1:$port (another sshd?); stop it or set" \
         "BST_E2E_SSH_PORT (then also auth.ssh_port is not supported by Ray: use port 22)" >&2
    exit 4
fi
command -v unshare >/dev/null || { echo "error: unshare (util-linux) is needed" >&2; exit 3; }

# the head's home persists between runs, as a real node's does (its venv is reused; removing
# the folder named in DIR/state-dir starts from nothing); the keys are new every time
rm -f "$state"/ssh_host_ed25519_key*
rm -f "$dir"/id_ed25519*
ssh-keygen -q -t ed25519 -N '' -f "$state/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519" -C bst-local-e2e
home=$state/home
mkdir -p "$home/.ssh" /run/sshd
cp "$dir/id_ed25519.pub" "$home/.ssh/authorized_keys"
chmod 700 "$home" "$home/.ssh"; chmod 600 "$home/.ssh/authorized_keys"
# The node's own login environment: the local machine's PATH and pip settings (as an on-premise
# node has its Python installed); the setup commands append the cluster's lines after it.
{
    echo "# written by launch/local_sshd.sh: the node's Python and pip"
    echo "export PATH=$(printf %q "$PATH")"
    env | grep -E '^(PIP_[A-Z_]+|PYENV_ROOT)=' | sed 's/^/export /' || true
} > "$home/.bashrc"
cp "$home/.bashrc" "$home/.profile"
echo '[ -f ~/.bashrc ] && . ~/.bashrc' > "$home/.bash_profile"
cat > "$state/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $state/ssh_host_ed25519_key
PidFile $state/sshd.inner.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
AuthorizedKeysFile .ssh/authorized_keys
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
EOF

real_home=$HOME
# bind back what the node's Python needs from the real home, then cover the home
binds=""
for d in .pyenv .cache/pip .config/pip .cargo; do
    if [ -d "$real_home/$d" ]; then
        mkdir -p "$home/$d"
        binds="$binds mount --bind $(printf %q "$real_home/$d") $(printf %q "$home/$d");"
    fi
done
setsid unshare --pid --fork --mount-proc --propagation private bash -c \
    "$binds mount --rbind $(printf %q "$home") $(printf %q "$real_home"); exec $sshd -D -e -f $(printf %q "$state/sshd_config")" \
    > "$dir/sshd.log" 2>&1 < /dev/null &
echo $! > "$pidfile"
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
    running || break
    sleep 0.1
done
echo "error: sshd did not start:" >&2
cat "$dir/sshd.log" >&2
exit 1
