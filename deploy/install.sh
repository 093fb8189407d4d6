#!/usr/bin/env bash
# Install the edgewatch edge agent as a systemd service on Raspberry Pi OS or Debian 11/12.
#
# Usage: sudo deploy/install.sh [options]
#   --accelerator coral|ncs2|cpu  the detector hardware (default: detected from the USB ids of a
#                                 Coral USB / NCS2 and /dev/apex_0; cpu when none is found)
#   --config FILE                 the agent config to install when /etc/edge-agent/config.yaml does
#                                 not exist yet (default: deploy/config/ACCELERATOR.yaml). An
#                                 existing config is never overwritten.
#   --source DIR|WHEEL            the edgewatch checkout or a built wheel (default: this checkout)
#   --python PYTHON               the interpreter for the virtualenv (default: /usr/bin/python3,
#                                 the distribution's, which sees apt's picamera2)
#   --with-mqtt-clients           also install mosquitto-clients (mosquitto_sub for debugging)
#   --dry-run                     print the commands that would change the system, change nothing
#   -h, --help                    this text
#
# Idempotent: every step looks at the system first and acts only where it differs, so a second run
# changes nothing (and restarts nothing). Re-run it after `git pull` to upgrade: the package is
# reinstalled and the service restarted only when the source changed.
#
# Result: user edge-agent (system, no login, groups video and plugdev), virtualenv
# /opt/edge-agent/venv (with the system site packages, so picamera2 and systemd-python from apt are
# importable), udev rules for the accelerators, /etc/edge-agent/config.yaml, and
# edge-agent.service enabled and running.
set -euo pipefail

readonly SERVICE=edge-agent.service
readonly SERVICE_USER=edge-agent
readonly PREFIX=/opt/edge-agent
readonly VENV=$PREFIX/venv
readonly STAMP=$PREFIX/.install-stamp
readonly CONFIG_DIR=/etc/edge-agent
readonly CONFIG_FILE=$CONFIG_DIR/config.yaml
readonly STATE_DIR=/var/lib/edge-agent
readonly UNIT_FILE=/etc/systemd/system/$SERVICE
readonly UDEV_RULES=/etc/udev/rules.d/99-edgewatch.rules
# The Coral package repository (libedgetpu); its key goes to a keyring that only this source uses.
readonly CORAL_KEYRING=/usr/share/keyrings/coral-edgetpu-archive-keyring.gpg
readonly CORAL_LIST=/etc/apt/sources.list.d/coral-edgetpu.list
readonly CORAL_KEY_URL=https://packages.cloud.google.com/apt/doc/apt-key.gpg
readonly CORAL_REPO="deb [signed-by=$CORAL_KEYRING] https://packages.cloud.google.com/apt coral-edgetpu-stable main"
# The NCS2 (MYRIAD plugin) ended with OpenVINO 2022.3 LTS, whose wheels exist for CPython <= 3.10.
readonly OPENVINO_NCS2="openvino==2022.3.*"

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly DEPLOY_DIR
readonly REPO_DIR=${DEPLOY_DIR%/*}

accelerator=""
config_src=""
source_path=$REPO_DIR
python=/usr/bin/python3
with_mqtt_clients=0
dry_run=0
apt_updated=0
warnings=()

say() { printf '==> %s\n' "$*"; }
warn() {
    warnings+=("$*")
    printf 'WARNING: %s\n' "$*" >&2
}
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,24s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

# A command line as a shell would read it back (for --dry-run output).
quoted() {
    local arg out=()
    for arg in "$@"; do
        if [[ $arg =~ ^[][A-Za-z0-9_./:=@%+,*-]+$ ]]; then
            out+=("$arg")
        else
            out+=("'${arg//\'/\'\\\'\'}'")
        fi
    done
    printf '%s\n' "${out[*]}"
}

# Every command that changes the system goes through run: printed (so a run that prints no "+"
# line changed nothing), and executed unless --dry-run.
run() {
    printf '+ %s\n' "$(quoted "$@")"
    ((dry_run)) || "$@"
}

# install_file MODE OWNER GROUP SRC DEST: copy unless DEST already has that content, mode and
# owner. Returns 0 when it changed DEST, 1 when DEST was already right.
install_file() {
    local mode=$1 owner=$2 group=$3 src=$4 dest=$5
    if [[ -f $dest ]] && cmp -s "$src" "$dest" &&
        [[ $(stat -c '%a %U %G' "$dest") == "${mode#0} $owner $group" ]]; then
        return 1
    fi
    run install -D -m "$mode" -o "$owner" -g "$group" "$src" "$dest"
}

# install_dir MODE OWNER GROUP DIR
install_dir() {
    local mode=$1 owner=$2 group=$3 dir=$4
    if [[ -d $dir && $(stat -c '%a %U %G' "$dir") == "${mode#0} $owner $group" ]]; then
        return 1
    fi
    run install -d -m "$mode" -o "$owner" -g "$group" "$dir"
}

# write_file MODE DEST LINE: a one-line file, written only when its content differs.
write_file() {
    local mode=$1 dest=$2 line=$3
    if [[ -f $dest && $(<"$dest") == "$line" ]]; then
        return 1
    fi
    printf '+ %s > %s\n' "$(quoted printf '%s\n' "$line")" "$dest"
    if ((!dry_run)); then
        printf '%s\n' "$line" >"$dest"
        chmod "$mode" "$dest"
    fi
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

apt_install() {
    local pkg missing=()
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if ((!apt_updated)); then
        run apt-get update
        apt_updated=1
    fi
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# usb_present VENDOR PRODUCT: a USB device with these ids is plugged in (what lsusb -d shows;
# read from sysfs so that usbutils need not be installed).
usb_present() {
    local dev
    if command -v lsusb >/dev/null 2>&1; then
        lsusb -d "$1:$2" >/dev/null 2>&1 && return 0
    fi
    for dev in /sys/bus/usb/devices/*; do
        [[ -r $dev/idVendor && -r $dev/idProduct ]] || continue
        if [[ $(<"$dev/idVendor") == "$1" && $(<"$dev/idProduct") == "$2" ]]; then
            return 0
        fi
    done
    return 1
}

detect_accelerator() {
    if [[ -e /dev/apex_0 ]] || usb_present 1a6e 089a || usb_present 18d1 9302; then
        echo coral
    elif usb_present 03e7 2485 || usb_present 03e7 f63b || usb_present 03e7 2150; then
        echo ncs2
    else
        echo cpu
    fi
}

is_raspberry_pi() {
    grep -qas "Raspberry Pi" /proc/device-tree/model
}

# What the installed package was built from: the wheel's hash, or a hash of the files that go
# into it. Decides whether pip has anything to do.
source_fingerprint() {
    if [[ -f $source_path ]]; then
        sha256sum <"$source_path" | cut -d' ' -f1
        return
    fi
    (
        cd "$source_path"
        local inputs=() input
        for input in setup.cfg setup.py pyproject.toml README.md edge_agent cloud_trainer; do
            [[ -e $input ]] && inputs+=("$input")
        done
        find "${inputs[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
    )
}

while (($#)); do
    case "$1" in
        --accelerator)
            accelerator=${2:-}
            shift 2 || die "--accelerator needs a value"
            ;;
        --accelerator=*) accelerator=${1#*=}; shift ;;
        --config)
            config_src=${2:-}
            shift 2 || die "--config needs a file"
            ;;
        --config=*) config_src=${1#*=}; shift ;;
        --source)
            source_path=${2:-}
            shift 2 || die "--source needs a directory or wheel"
            ;;
        --source=*) source_path=${1#*=}; shift ;;
        --python)
            python=${2:-}
            shift 2 || die "--python needs an interpreter"
            ;;
        --python=*) python=${1#*=}; shift ;;
        --with-mqtt-clients) with_mqtt_clients=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# --- checks ---------------------------------------------------------------------------------
if ((!dry_run)) && ((EUID != 0)); then
    die "needs root: run it with sudo (or --dry-run to see what it would do)"
fi
command -v systemctl >/dev/null 2>&1 || die "systemd is needed: the agent runs as a systemd service"
case "$accelerator" in
    "") accelerator=$(detect_accelerator); say "accelerator: $accelerator (detected)" ;;
    coral | ncs2 | cpu) say "accelerator: $accelerator" ;;
    *) die "--accelerator must be coral, ncs2 or cpu, not '$accelerator'" ;;
esac
[[ -z $config_src ]] && config_src=$DEPLOY_DIR/config/$accelerator.yaml
[[ -f $config_src ]] || die "no such config file: $config_src"
if [[ -f $source_path ]]; then
    [[ $source_path == *.whl ]] || die "--source must be a directory or a .whl file: $source_path"
elif [[ -d $source_path ]]; then
    [[ -f $source_path/setup.cfg || -f $source_path/pyproject.toml ]] ||
        die "--source $source_path is not an edgewatch checkout (no setup.cfg)"
else
    die "no such source: $source_path"
fi
source_path=$(realpath "$source_path")
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091  # the system's, not ours
    os_id=$(. /etc/os-release && echo "${ID:-?} ${VERSION_CODENAME:-?}")
    case "$os_id" in
        "debian bullseye" | "debian bookworm" | "raspbian bullseye" | "raspbian bookworm") ;;
        *) warn "tested on Raspberry Pi OS / Debian bullseye and bookworm, this is $os_id" ;;
    esac
fi
raspberry_pi=0
is_raspberry_pi && raspberry_pi=1

# --- 1. packages ----------------------------------------------------------------------------
say "system packages"
# python3-systemd is systemd-python: the [pi] extra is then satisfied from apt, no compiler needed.
packages=(python3 python3-venv python3-systemd ca-certificates)
((raspberry_pi)) && packages+=(python3-picamera2)
((with_mqtt_clients)) && packages+=(mosquitto-clients)
if [[ $accelerator == coral ]]; then
    if [[ ! -f $CORAL_KEYRING ]]; then
        apt_install curl gpg
        run curl -fsSL -o "$CORAL_KEYRING.download" "$CORAL_KEY_URL"
        # --dearmor passes a binary key through unchanged and unpacks an armored one.
        run gpg --batch --yes --dearmor -o "$CORAL_KEYRING" "$CORAL_KEYRING.download"
        run rm -f "$CORAL_KEYRING.download"
    fi
    if write_file 0644 "$CORAL_LIST" "$CORAL_REPO"; then
        apt_updated=0 # the new source needs an update before its packages can be found
    fi
    # std: the EdgeTPU at its default clock; -max runs hotter than a passive Pi case allows.
    packages+=(libedgetpu1-std)
fi
apt_install "${packages[@]}"

# --- 2. service user ------------------------------------------------------------------------
say "service user $SERVICE_USER"
for group in video plugdev; do
    getent group "$group" >/dev/null || run groupadd --system "$group"
done
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "edgewatch edge agent" --groups video,plugdev "$SERVICE_USER"
else
    for group in video plugdev; do
        if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$group"; then
            run usermod -a -G "$group" "$SERVICE_USER"
        fi
    done
fi

# --- 3. virtualenv and the package ----------------------------------------------------------
say "virtualenv $VENV"
if command -v "$python" >/dev/null 2>&1; then
    py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    py_path=$(realpath "$(command -v "$python")")
else
    ((dry_run)) || die "no Python interpreter '$python'"
    py_version=unknown
    py_path=unknown
fi
extras=tflite,s3
[[ $accelerator == coral ]] && extras+=,coral
system_python=0
[[ $py_path == "$(realpath /usr/bin/python3 2>/dev/null || true)" ]] && system_python=1
if ((system_python)); then
    extras+=,pi
else
    # Another interpreter cannot import apt's python3-systemd / python3-picamera2, and building
    # systemd-python needs a compiler and headers: the agent then speaks sd_notify itself.
    warn "$python is not the system python3: apt's picamera2 is not importable (use camera.source usb:N)"
fi
install_openvino=0
if [[ $accelerator == ncs2 ]]; then
    arch=$(uname -m)
    manual="install Intel's OpenVINO 2022.3 runtime (its archive, or a source build with the MYRIAD"
    manual+=" plugin) and put the PYTHONPATH and LD_LIBRARY_PATH its setupvars.sh sets into"
    manual+=" $CONFIG_DIR/environment"
    if [[ $arch != x86_64 ]]; then
        warn "the NCS2 needs OpenVINO 2022.3 LTS (the last release with the MYRIAD plugin), which has" \
            "no PyPI wheel for $arch: $manual. Installing without OpenVINO for now."
    elif [[ $py_version == 3.9 || $py_version == 3.10 ]]; then
        install_openvino=1
    else
        warn "the NCS2 needs OpenVINO 2022.3 LTS (the last release with the MYRIAD plugin), whose" \
            "wheels exist for Python 3.7-3.10 only; $python is Python $py_version. Re-run with" \
            "--python /path/to/python3.10 (from pyenv or uv, say), or $manual." \
            "Installing without OpenVINO for now."
    fi
fi
install_dir 0755 root root "$PREFIX" || true
if [[ ! -x $VENV/bin/python ]]; then
    run "$python" -m venv --system-site-packages "$VENV"
    # The distribution's pip may predate the wheels and build backends we need.
    run "$VENV/bin/python" -m pip install --quiet --upgrade pip
elif ! grep -qs '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
    warn "$VENV exists without --system-site-packages: picamera2 from apt is not importable;" \
        "remove $VENV and re-run"
fi
stamp="source=$(source_fingerprint) extras=$extras openvino=$install_openvino python=$py_version"
package_changed=0
if [[ ! -f $STAMP || $(<"$STAMP") != "$stamp" ]]; then
    package_changed=1
    run "$VENV/bin/python" -m pip install --quiet "${source_path}[$extras]"
    if ((install_openvino)); then
        if ! run "$VENV/bin/python" -m pip install --quiet "$OPENVINO_NCS2"; then
            warn "pip could not install $OPENVINO_NCS2: $manual"
        fi
    fi
    write_file 0644 "$STAMP" "$stamp" || true
fi

# --- 4. udev rules --------------------------------------------------------------------------
say "udev rules"
if install_file 0644 root root "$DEPLOY_DIR/udev/99-edgewatch.rules" "$UDEV_RULES"; then
    if [[ -S /run/udev/control ]]; then
        run udevadm control --reload
        # Re-apply the rules to accelerators that are already plugged in.
        run udevadm trigger --subsystem-match=usb --subsystem-match=apex
    else
        say "udev is not running here (a chroot or container): the rules apply from the next boot"
    fi
fi

# --- 5. configuration -----------------------------------------------------------------------
say "configuration $CONFIG_DIR"
# Group edge-agent reads the config, its TLS key and the trusted command keys; nobody else.
install_dir 0750 root "$SERVICE_USER" "$CONFIG_DIR" || true
config_installed=0
if [[ -e $CONFIG_FILE ]]; then
    if ! cmp -s "$config_src" "$CONFIG_FILE"; then
        say "keeping the existing $CONFIG_FILE (not overwritten with $config_src)"
    fi
else
    install_file 0640 root "$SERVICE_USER" "$config_src" "$CONFIG_FILE"
    config_installed=1
fi
if ((!dry_run)); then
    "$VENV/bin/edge-agent" check-config -c "$CONFIG_FILE" >/dev/null ||
        die "$CONFIG_FILE is not a valid configuration (see above)"
fi

# --- 6. the service -------------------------------------------------------------------------
say "systemd unit $SERVICE"
unit_changed=0
# systemd is running (sd_booted): not so in a chroot that prepares an image, or a container.
systemd_running=0
[[ -d /run/systemd/system ]] && systemd_running=1
if install_file 0644 root root "$REPO_DIR/systemd/$SERVICE" "$UNIT_FILE"; then
    unit_changed=1
    ((systemd_running)) && run systemctl daemon-reload
fi
if [[ -f $REPO_DIR/deploy/README.md ]]; then
    install_file 0644 root root "$REPO_DIR/deploy/README.md" "$PREFIX/README.md" || true
fi
if ((!systemd_running)); then
    # Enable only: the service starts at the next boot.
    systemctl is-enabled --quiet "$SERVICE" 2>/dev/null || run systemctl enable "$SERVICE"
elif ! systemctl is-enabled --quiet "$SERVICE" 2>/dev/null; then
    run systemctl enable --now "$SERVICE"
elif ! systemctl is-active --quiet "$SERVICE"; then
    run systemctl start "$SERVICE"
elif ((unit_changed || package_changed || config_installed)); then
    run systemctl restart "$SERVICE"
fi

say "done"
if ((${#warnings[@]})); then
    printf 'WARNING: %s\n' "${warnings[@]}" >&2
fi
cat <<EOF
Next steps:
  - the device's TLS files (deploy/mosquitto/make-certs.sh): $CONFIG_DIR/tls/{ca.crt,client.crt,client.key}
  - the operators' public command keys (edge-ctl keygen): $CONFIG_DIR/keys/*.pub
  - S3 credentials (deploy/iam/device-policy.json): AWS_SHARED_CREDENTIALS_FILE=... in $CONFIG_DIR/environment
  - files in $CONFIG_DIR: owner root, group $SERVICE_USER, mode 0640; then: systemctl restart $SERVICE
  - logs: journalctl -u $SERVICE -f        state: systemctl status $SERVICE
EOF
