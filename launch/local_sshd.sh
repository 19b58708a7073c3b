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
# machine live on. Its home directory is /tmp/bst-local-sshd/home (with sshd's own files beside
# it; BST_E2E_SSHD_STATE moves them) bind-mounted over the user's home, so what the
# launcher and the setup commands write there (~/.bashrc lines, ~/bst-search, the bootstrap
# config and key) never touches the real one; the Python installation (pyenv), pip's cache and
# configuration are bind-mounted back in from the real home.
set -euo pipefail

cmd=${1:?usage: local_sshd.sh start|stop|running DIR}
dir=$(mkdir -p "${2:?usage: local_sshd.sh start|stop|running DIR}" && cd "$2" && pwd)
pidfile=$dir/sshd.pid
port=${BST_E2E_SSH_PORT:-22}
# sshd's own files and the head's home: outside the real home, which the namespace covers
state=${BST_E2E_SSHD_STATE:-/tmp/bst-local-sshd}

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

# the head's home persists between runs, as a real node's does (its venv is reused; `rm -rf
# /tmp/bst-local-sshd` starts from nothing); the keys are new every time
mkdir -p "$state"
chmod 700 "$state"
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
StrictModes no
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
