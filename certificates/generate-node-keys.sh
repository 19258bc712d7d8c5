#!/usr/bin/env bash
# Make one SuperNode authentication key pair per hospital.
#
#   certificates/generate-node-keys.sh [--out DIR] [--force] NAME [NAME ...]
#
# For each NAME (letters, digits, '.', '_', '-'; e.g. hospital-a) writes into DIR
# (default: certificates/out/node-keys/, git-ignored):
#   NAME        private key: ECDSA P-384, unencrypted OpenSSH format. It stays at the
#               hospital: flower-supernode --auth-supernode-private-key NAME
#   NAME.pub    public key (OpenSSH format). The SuperLink operator registers it:
#               flwr supernode register NAME.pub CONNECTION --name NAME
#
# Flower 1.41 reads the private key with cryptography's load_ssh_private_key (no
# passphrase) and accepts only NIST curves (P-256/384/521) for registration.
# Uses ssh-keygen, else Python's `cryptography` package ($PYTHON, default python3).
# FEDAPP_NODE_KEYS_OUT sets DIR like --out; flags win. An existing key is never
# overwritten unless --force is given (a new key must be registered again).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${FEDAPP_NODE_KEYS_OUT:-$SCRIPT_DIR/out/node-keys}"
PYTHON="${PYTHON:-python3}"
FORCE=0
NAMES=()

usage() {
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "generate-node-keys.sh: error: $*" >&2
    exit 1
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT="$2"; shift 2 ;;
            --out=*) OUT="${1#*=}"; shift ;;
            --force) FORCE=1; shift ;;
            -h|--help) usage; exit 0 ;;
            --) shift; NAMES+=("$@"); break ;;
            -*) die "unknown option '$1' (see --help)" ;;
            *) NAMES+=("$1"); shift ;;
        esac
    done
}

check_inputs() {
    [[ ${#NAMES[@]} -gt 0 ]] || die "name at least one hospital, e.g. hospital-a (see --help)"
    local name seen=" "
    for name in "${NAMES[@]}"; do
        [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] \
            || die "bad name '$name' (letters, digits, '.', '_', '-'; at most 63 characters)"
        [[ "$name" != *.pub ]] || die "bad name '$name': must not end in .pub"
        [[ "$seen" != *" $name "* ]] || die "name '$name' given twice"
        seen+="$name "
    done
    if ! command -v ssh-keygen >/dev/null 2>&1; then
        "$PYTHON" -c 'import cryptography' >/dev/null 2>&1 \
            || die "neither ssh-keygen nor $PYTHON with the cryptography package is available"
    fi
}

check_existing() {
    local existing=() name
    for name in "${NAMES[@]}"; do
        [[ -e "$OUT/$name" || -e "$OUT/$name.pub" ]] && existing+=("$OUT/$name")
    done
    if [[ ${#existing[@]} -gt 0 && $FORCE -eq 0 ]]; then
        die "refusing to overwrite ${existing[*]}; use --force (then unregister the old" \
            "key and register the new NAME.pub)"
    fi
}

# Write $OUT/$1 (private) and $OUT/$1.pub (public) for hospital $1.
make_key() {
    local name="$1"
    rm -f "$OUT/$name" "$OUT/$name.pub"
    if command -v ssh-keygen >/dev/null 2>&1; then
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "$name" -f "$OUT/$name" </dev/null
    else
        "$PYTHON" - "$OUT/$name" "$name" <<'EOF'
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

path, comment = sys.argv[1], sys.argv[2]
key = ec.generate_private_key(ec.SECP384R1())
private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                       serialization.PublicFormat.OpenSSH)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "wb") as f:
    f.write(private)
with open(path + ".pub", "wb") as f:
    f.write(public + b" " + comment.encode() + b"\n")
EOF
    fi
    chmod 600 "$OUT/$name"
    chmod 644 "$OUT/$name.pub"
}

report() {
    local name
    echo "Wrote to $OUT (ECDSA P-384, OpenSSH format):"
    for name in "${NAMES[@]}"; do
        echo "  $name      private key: give it to $name only (--auth-supernode-private-key)"
        echo "  $name.pub  public key: flwr supernode register $OUT/$name.pub CONNECTION --name $name"
    done
}

main() {
    parse_args "$@"
    check_inputs
    mkdir -p "$OUT"
    OUT="$(cd "$OUT" && pwd)"
    check_existing
    umask 077
    local name
    for name in "${NAMES[@]}"; do
        make_key "$name"
    done
    # Keep keys out of git even when --out points inside a repository.
    printf '*\n' > "$OUT/.gitignore"
    chmod 644 "$OUT/.gitignore"
    report
}

main "$@"
