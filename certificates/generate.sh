#!/usr/bin/env bash
# Make a private CA and a TLS certificate for the Flower SuperLink.
#
#   certificates/generate.sh [--out DIR] [--san SANS] [--days N] [--force]
#
# Writes into DIR (default: certificates/out/, git-ignored):
#   ca.key      CA private key. Keep offline; it signs server certificates.
#   ca.crt      CA certificate. Give it to the SuperLink, every SuperNode and the flwr CLI.
#   server.key  SuperLink private key. Only the SuperLink reads it.
#   server.pem  SuperLink certificate, signed by the CA, valid for the SANs.
#
# SANS is a comma-separated list of DNS:name / IP:address entries, the names
# SuperNodes and the flwr CLI use to reach the SuperLink (default
# DNS:localhost,IP:127.0.0.1). Environment variables FEDAPP_CERT_OUT,
# FEDAPP_CERT_SAN and FEDAPP_CERT_DAYS set the same as the flags; flags win.
# An existing output is never overwritten unless --force is given.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${FEDAPP_CERT_OUT:-$SCRIPT_DIR/out}"
SAN="${FEDAPP_CERT_SAN:-DNS:localhost,IP:127.0.0.1}"
DAYS="${FEDAPP_CERT_DAYS:-365}"
FORCE=0
KEY_BITS=4096
WORK_DIR=""

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "generate.sh: error: $*" >&2
    exit 1
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT="$2"; shift 2 ;;
            --out=*) OUT="${1#*=}"; shift ;;
            --san) [[ $# -ge 2 ]] || die "--san needs a value"; SAN="$2"; shift 2 ;;
            --san=*) SAN="${1#*=}"; shift ;;
            --days) [[ $# -ge 2 ]] || die "--days needs a number"; DAYS="$2"; shift 2 ;;
            --days=*) DAYS="${1#*=}"; shift ;;
            --force) FORCE=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
    done
}

check_inputs() {
    command -v openssl >/dev/null 2>&1 || die "openssl not found on PATH"
    [[ "$DAYS" =~ ^[1-9][0-9]*$ ]] || die "--days must be a positive integer, got '$DAYS'"
    [[ -n "$SAN" ]] || die "--san must not be empty"
    local entry
    IFS=',' read -r -a entries <<< "$SAN"
    for entry in "${entries[@]}"; do
        [[ "$entry" =~ ^(DNS:[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?|IP:[0-9A-Fa-f.:]+)$ ]] \
            || die "bad SAN entry '$entry' in '$SAN' (expected DNS:name or IP:address)"
    done
}

# Refuse to replace an existing CA or server certificate unless --force.
check_existing() {
    local existing=() f
    for f in ca.key ca.crt server.key server.pem; do
        [[ -e "$OUT/$f" ]] && existing+=("$OUT/$f")
    done
    if [[ ${#existing[@]} -gt 0 && $FORCE -eq 0 ]]; then
        die "refusing to overwrite ${existing[*]}; use --force to replace the CA" \
            "(every SuperNode and flwr CLI then needs the new ca.crt)"
    fi
}

# The CN of the server certificate: its first DNS name, else "superlink".
server_cn() {
    local entry
    IFS=',' read -r -a entries <<< "$SAN"
    for entry in "${entries[@]}"; do
        if [[ "$entry" == DNS:* ]]; then
            echo "${entry#DNS:}"
            return
        fi
    done
    echo "superlink"
}

make_ca() {
    openssl genrsa -out "$OUT/ca.key" "$KEY_BITS" 2>/dev/null
    openssl req -x509 -new -sha256 -key "$OUT/ca.key" -days "$DAYS" \
        -subj "/O=fedapp/CN=fedapp SuperLink CA" -out "$OUT/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash"
}

make_server_cert() {
    local work="$1"
    openssl genrsa -out "$OUT/server.key" "$KEY_BITS" 2>/dev/null
    openssl req -new -sha256 -key "$OUT/server.key" \
        -subj "/O=fedapp/CN=$(server_cn)" -out "$work/server.csr"
    cat > "$work/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = $SAN
EOF
    openssl x509 -req -sha256 -in "$work/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" \
        -CAcreateserial -CAserial "$work/ca.srl" -days "$DAYS" \
        -extfile "$work/server.ext" -out "$OUT/server.pem" 2>/dev/null
    openssl verify -CAfile "$OUT/ca.crt" "$OUT/server.pem" >/dev/null \
        || die "server.pem does not verify against ca.crt"
}

report() {
    echo "Wrote to $OUT (valid $DAYS days):"
    echo "  ca.key      CA private key: keep it safe, it never leaves this machine"
    echo "  ca.crt      CA certificate: SuperLink (--ssl-ca-certfile), every SuperNode"
    echo "              (--root-certificates) and the flwr CLI (root-certificates)"
    echo "  server.key  SuperLink private key (--ssl-keyfile)"
    echo "  server.pem  SuperLink certificate (--ssl-certfile), SANs: $SAN"
}

main() {
    parse_args "$@"
    check_inputs
    check_existing
    mkdir -p "$OUT"
    OUT="$(cd "$OUT" && pwd)"
    umask 077
    WORK_DIR="$(mktemp -d)"
    trap 'rm -rf "$WORK_DIR"' EXIT
    make_ca
    make_server_cert "$WORK_DIR"
    chmod 600 "$OUT/ca.key" "$OUT/server.key"
    chmod 644 "$OUT/ca.crt" "$OUT/server.pem"
    # Keep certificates out of git even when --out points inside a repository.
    printf '*\n' > "$OUT/.gitignore"
    chmod 644 "$OUT/.gitignore"
    report
}

main "$@"
