#!/usr/bin/env bash
# Make the edgewatch MQTT PKI with openssl: a CA, the broker's certificate and one client
# certificate per name given (devices by their device.id, plus "operator" and "dashboard").
#
# Usage: make-certs.sh [-o DIR] [-b BROKER_NAME]... [-d DAYS] NAME...
#   -o DIR          where the files go (default ./edgewatch-pki); created with mode 0700
#   -b BROKER_NAME  a DNS name or IP address clients use to reach the broker (repeatable;
#                   default: this host's name); it goes into the broker certificate's SAN
#   -d DAYS         validity of the broker and client certificates (default 825)
#
# Writes ca.crt/ca.key, broker.crt/broker.key and NAME.crt/NAME.key. Existing files are kept, so
# running it again with new names only adds those names (never a new CA, which would lock every
# device out). Keep ca.key offline; copy ca.crt + broker.* to the broker, ca.crt + NAME.* to the
# device NAME (/etc/edge-agent/tls/), readable by the edge-agent group only.
#
# The CN of a client certificate is its MQTT username (use_identity_as_username in
# edgewatch.conf), which the ACL's %u patterns match, and its client id (use_username_as_clientid):
# one certificate per device, never shared, and one per operator or dashboard connected at once.
set -euo pipefail

out_dir=./edgewatch-pki
days=825
ca_days=3650
broker_names=()

usage() { sed -n '2,9s/^# \{0,1\}//p' "$0"; }

while getopts ":o:b:d:h" opt; do
    case "$opt" in
        o) out_dir=$OPTARG ;;
        b) broker_names+=("$OPTARG") ;;
        d) days=$OPTARG ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [[ ${#broker_names[@]} -eq 0 ]]; then
    broker_names=("$(hostname -f 2>/dev/null || hostname)")
fi

for name in "$@"; do
    # A CN becomes a topic level: no MQTT wildcards, separators or spaces.
    if [[ ! $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || [[ $name == broker || $name == ca ]]; then
        echo "make-certs.sh: $name: not a usable client name ([A-Za-z0-9._-], not broker or ca)" >&2
        exit 2
    fi
done

# Private keys are created readable by their owner only.
umask 077
mkdir -p "$out_dir"
cd "$out_dir"

new_key() {  # FILE: an ECDSA P-256 key (small and fast on a Pi; TLS 1.2 and 1.3 both take it)
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

serial() {  # random 128-bit serials: no ca.srl state file to keep in sync
    printf '0x%s' "$(openssl rand -hex 16)"
}

if [[ ! -f ca.key || ! -f ca.crt ]]; then
    new_key ca.key
    openssl req -x509 -new -key ca.key -sha256 -days "$ca_days" -subj "/CN=edgewatch CA" \
        -set_serial "$(serial)" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out ca.crt
    echo "created CA: $out_dir/ca.crt (keep ca.key offline)"
fi

sign() {  # NAME EXTENSIONS: a key and a CA-signed certificate with CN=NAME
    local name=$1 extensions=$2
    if [[ -f $name.crt && -f $name.key ]]; then
        echo "kept $out_dir/$name.crt"
        return
    fi
    [[ -f $name.key ]] || new_key "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
    printf '%s\n' "$extensions" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -set_serial "$(serial)" \
        -days "$days" -sha256 -extfile "$name.ext" -out "$name.crt"
    rm -f "$name.csr" "$name.ext"
    chmod 0644 "$name.crt"
    echo "created $out_dir/$name.crt"
}

san=""
for broker_name in "${broker_names[@]}"; do
    if [[ $broker_name =~ ^[0-9.]+$ || $broker_name == *:* ]]; then
        san+="${san:+,}IP:$broker_name"
    else
        san+="${san:+,}DNS:$broker_name"
    fi
done
chmod 0644 ca.crt

# serverAuth only: the broker certificate cannot be used to log in as a client.
sign broker "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san"

# clientAuth only: a client certificate cannot impersonate the broker.
for name in "$@"; do
    sign "$name" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
