#!/usr/bin/env bash
# scripts/make-certs.sh DIR [NAME...]: a CA and certificates for a TLS
# cluster, with the openssl command-line tool.
#
#   DIR/ca.pem, DIR/ca.key        the CA (made once; kept if present)
#   DIR/NAME.pem, DIR/NAME.key    one certificate per NAME (default: "node"),
#                                 signed by the CA, for both ends of a link
#                                 (serverAuth and clientAuth)
#
# Each certificate names localhost and 127.0.0.1; SANS adds more, as openssl
# writes them ("DNS:db1.example,IP:10.0.0.5"): every host name or address
# that clients and members use to reach the process must be there. Keys are
# EC P-256, mode 600. DAYS (default 825) sets the validity; EXPIRED=1 makes
# certificates that expired in 2020 (for tests). One certificate can serve
# every process of a test cluster; on several hosts, give each its own.
set -euo pipefail
dir=${1:?usage: scripts/make-certs.sh DIR [NAME...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(node)
if ! command -v openssl >/dev/null; then
  # As the project's other set-up does: installed when missing, as root.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    echo "openssl is needed: apt-get install openssl (as root)" >&2
    exit 1
  fi
fi
mkdir -p "$dir"
umask 077
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 \
    -subj "/CN=DKV test CA $(date +%s)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

sans="DNS:localhost,IP:127.0.0.1${SANS:+,$SANS}"
for name in "${names[@]}"; do
  ext=$(mktemp)
  printf '%s\n' \
    "subjectAltName=$sans" \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" >"$ext"
  openssl req "${ec[@]}" -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name" 2>/dev/null
  if [ -n "${EXPIRED:-}" ]; then
    # `openssl x509` cannot date a certificate in the past; `openssl ca` can.
    db=$(mktemp -d)
    : >"$db/index.txt"
    echo 01 >"$db/serial"
    cat >"$db/ca.cnf" <<EOF
[ca]
default_ca = d
[d]
database = $db/index.txt
new_certs_dir = $db
serial = $db/serial
default_md = sha256
policy = p
[p]
commonName = supplied
EOF
    openssl ca -batch -config "$db/ca.cnf" -cert "$dir/ca.pem" -keyfile "$dir/ca.key" \
      -startdate 20200101000000Z -enddate 20200102000000Z -extfile "$ext" \
      -in "$dir/$name.csr" -out "$dir/$name.pem" -notext 2>/dev/null
    rm -rf "$db"
  else
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -CAcreateserial -out "$dir/$name.pem" -days "${DAYS:-825}" -extfile "$ext" 2>/dev/null
  fi
  rm -f "$dir/$name.csr" "$ext"
  chmod 600 "$dir/$name.key"
  chmod 644 "$dir/$name.pem"
done
chmod 644 "$dir/ca.pem"
rm -f "$dir/ca.srl"
