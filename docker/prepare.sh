#!/usr/bin/env bash
# Prepare what docker/compose.tls.yml (and compose.yml) mount, on one host:
#
#   docker/prepare.sh [--san SANS] [--hospitals N] [--no-data]
#
#   certificates/out/ca.crt, server.pem, server.key   CA + SuperLink certificate whose SANs
#       cover `superlink` (the name containers dial) and localhost/127.0.0.1 (the flwr CLI
#       on this host); add more with --san "DNS:link.example.org,IP:10.0.0.5".
#   certificates/out/node-keys/hospital-1..N(.pub)    one SuperNode key pair per hospital.
#   certificates/out/superexec-secret                 shared secret of the SuperLink and
#       the ServerApp SuperExec (32 random bytes, hex).
#   docker/data/hospital-1..N/hospital.csv            demo data: the breast-cancer split.
#
# Existing certificates, keys and secret are kept (delete them to start over). The
# Flower containers run as uid 49999: run as root to hand the private files to that uid,
# otherwise the script prints the `sudo chown` to run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
OUT="$REPO/certificates/out"
SAN="DNS:superlink,DNS:localhost,IP:127.0.0.1"
HOSPITALS=3
DATA=1
PYTHON="${PYTHON:-python3}"
FLOWER_UID=49999

die() { echo "prepare.sh: error: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --san) [[ $# -ge 2 ]] || die "--san needs a value"; SAN="$SAN,$2"; shift 2 ;;
        --hospitals) [[ $# -ge 2 ]] || die "--hospitals needs a number"; HOSPITALS="$2"; shift 2 ;;
        --no-data) DATA=0; shift ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$HOSPITALS" =~ ^[1-9][0-9]*$ ]] || die "--hospitals must be a positive integer"

if [[ -e "$OUT/ca.crt" ]]; then
    echo "keeping the existing CA and SuperLink certificate in $OUT"
else
    "$REPO/certificates/generate.sh" --out "$OUT" --san "$SAN"
fi

names=()
for n in $(seq 1 "$HOSPITALS"); do
    [[ -e "$OUT/node-keys/hospital-$n" ]] || names+=("hospital-$n")
done
if [[ ${#names[@]} -gt 0 ]]; then
    "$REPO/certificates/generate-node-keys.sh" --out "$OUT/node-keys" "${names[@]}"
fi

if [[ ! -e "$OUT/superexec-secret" ]]; then
    (umask 077 && openssl rand -hex 32 | tr -d '\n' > "$OUT/superexec-secret")
    echo "wrote $OUT/superexec-secret"
fi

if [[ $DATA -eq 1 ]]; then
    split="$(mktemp -d)"
    trap 'rm -rf "$split"' EXIT
    (cd "$REPO" && "$PYTHON" -m fedapp.data split --dataset breast-cancer \
        --hospitals "$HOSPITALS" --out "$split")
    for n in $(seq 1 "$HOSPITALS"); do
        mkdir -p "$HERE/data/hospital-$n"
        cp "$split/hospital-$((n - 1)).csv" "$HERE/data/hospital-$n/hospital.csv"
    done
    echo "wrote $HERE/data/hospital-1..$HOSPITALS/hospital.csv"
fi

private=("$OUT/server.key" "$OUT/superexec-secret")
for n in $(seq 1 "$HOSPITALS"); do private+=("$OUT/node-keys/hospital-$n"); done
if [[ $(id -u) -eq 0 ]]; then
    chown "$FLOWER_UID:$FLOWER_UID" "${private[@]}"
    echo "handed the private files to uid $FLOWER_UID (the Flower containers' user)"
else
    echo "The Flower containers run as uid $FLOWER_UID; let them read the private files:"
    echo "  sudo chown $FLOWER_UID:$FLOWER_UID ${private[*]}"
fi
