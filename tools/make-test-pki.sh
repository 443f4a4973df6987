#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# A throwaway PKI for tests and the demo, with certtool (gnutls-bin). NOT for production: the CA
# key lies next to the certificates, unencrypted.
#
#   make-test-pki.sh [OPTIONS] DIR HOST...
#
# Makes DIR/ca-cert.pem and DIR/ca-key.pem (a CA; kept when they exist, so several runs share one
# CA), and for each HOST the directory DIR/HOST laid out like /etc/pki/vfiomigd/:
#   DIR/HOST/ca-cert.pem       the CA to trust
#   DIR/HOST/server-cert.pem   the host's certificate (CN and DNS name HOST; server and client use)
#   DIR/HOST/server-key.pem    its key
# Options:
#   --ca-name NAME     the CA's common name (default "vfiomigd test CA")
#   --ip ADDR          add an IP address SAN to the hosts' certificates (repeatable)
#   --expired          the hosts' certificates expired (valid 2020-01-01 .. 2020-12-31)
#   --not-yet-valid    the hosts' certificates become valid in 2099
#   --psk IDENTITY     also write DIR/HOST/psk.txt with a fresh key for IDENTITY (psktool format);
#                      every HOST of this run gets the same key
set -euo pipefail

CA_NAME="vfiomigd test CA"
IPS=()
DATES=""
PSK_ID=""
while [ $# -gt 0 ]; do
        case "$1" in
        --ca-name) CA_NAME="$2"; shift 2 ;;
        --ip) IPS+=("$2"); shift 2 ;;
        --expired) DATES=$'activation_date = "2020-01-01 00:00:00 UTC"\nexpiration_date = "2020-12-31 00:00:00 UTC"'; shift ;;
        --not-yet-valid) DATES=$'activation_date = "2099-01-01 00:00:00 UTC"\nexpiration_date = "2099-12-31 00:00:00 UTC"'; shift ;;
        --psk) PSK_ID="$2"; shift 2 ;;
        -h|--help) sed -n '3,21p' "$0"; exit 0 ;;
        --) shift; break ;;
        -*) echo "make-test-pki: unknown option $1" >&2; exit 2 ;;
        *) break ;;
        esac
done
[ $# -ge 2 ] || { echo "usage: make-test-pki.sh [OPTIONS] DIR HOST..." >&2; exit 2; }
command -v certtool >/dev/null || { echo "make-test-pki: certtool is missing (apt-get install gnutls-bin)" >&2; exit 1; }
DIR="$1"
shift
mkdir -p "$DIR"
umask 077

if [ ! -s "$DIR/ca-cert.pem" ] || [ ! -s "$DIR/ca-key.pem" ]; then
        certtool --generate-privkey --key-type=ecdsa --outfile "$DIR/ca-key.pem" >/dev/null 2>&1
        printf 'cn = "%s"\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 30\n' "$CA_NAME" >"$DIR/ca.tmpl"
        certtool --generate-self-signed --load-privkey "$DIR/ca-key.pem" --template "$DIR/ca.tmpl" \
                --outfile "$DIR/ca-cert.pem" >/dev/null 2>&1
        rm -f "$DIR/ca.tmpl"
fi

PSK_KEY=""
if [ -n "$PSK_ID" ]; then
        PSK_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
fi

for HOST in "$@"; do
        H="$DIR/$HOST"
        mkdir -p "$H"
        cp "$DIR/ca-cert.pem" "$H/ca-cert.pem"
        certtool --generate-privkey --key-type=ecdsa --outfile "$H/server-key.pem" >/dev/null 2>&1
        {
                printf 'cn = "%s"\norganization = "vfiomigd tests"\ndns_name = "%s"\n' "$HOST" "$HOST"
                for ip in "${IPS[@]}"; do printf 'ip_address = "%s"\n' "$ip"; done
                printf 'tls_www_server\ntls_www_client\nsigning_key\nencryption_key\n'
                if [ -n "$DATES" ]; then printf '%s\n' "$DATES"; else printf 'expiration_days = 30\n'; fi
        } >"$H/host.tmpl"
        certtool --generate-certificate --load-privkey "$H/server-key.pem" --load-ca-certificate "$DIR/ca-cert.pem" \
                --load-ca-privkey "$DIR/ca-key.pem" --template "$H/host.tmpl" --outfile "$H/server-cert.pem" >/dev/null 2>&1
        rm -f "$H/host.tmpl"
        if [ -n "$PSK_ID" ]; then
                printf '%s:%s\n' "$PSK_ID" "$PSK_KEY" >"$H/psk.txt"
        fi
done
