#!/usr/bin/env bash
# Stand-ins, built from Debian packages with mmdebstrap, for the images CI cannot pull when
# no registry is reachable. Each is written as a tarball for `docker import` and cached:
# the file name carries a hash of this script, so editing a recipe rebuilds it.
#
#   tools/standin_images.sh python OUT_DIR   -> OUT_DIR/ubi9-python-311-standin-<hash>.tar
#   tools/standin_images.sh postgres OUT_DIR -> OUT_DIR/postgresql-15-standin-<hash>.tar
# (<hash>: of that image's recipe -- packages, hook, import changes -- alone).
# and prints the tarball's path. tools/image_check.sh imports them with the `docker import
# --change` lines printed by `tools/standin_images.sh changes python|postgres`.
#
# python: laid out like sclorg's registry.access.redhat.com/ubi9/python-311: Python 3.11
#   with venv, pip, gcc and the headers; the virtualenv /opt/app-root first on PATH; user
#   1001 in group 0; HOME and WORKDIR /opt/app-root/src; /opt/app-root group 0 with g=u.
#   The host's extra CA certificates (/usr/local/share/ca-certificates) are trusted, so
#   pip reaches PyPI through a TLS-inspecting proxy.
# postgres: PostgreSQL 15 answering the environment of sclorg's postgresql-15 image
#   (POSTGRESQL_USER, POSTGRESQL_PASSWORD, POSTGRESQL_DATABASE; port 5432; UID 26; data in
#   /var/lib/pgsql/data), which rhel9/postgresql-15 in k8s/ and compose.yaml also use.
set -euo pipefail

SUITE=${STANDIN_SUITE:-bookworm}

python_hook() {
  local root=$1
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" \
    2>/dev/null || true
  chroot "$root" sh -eu <<'SH'
update-ca-certificates >/dev/null
useradd --uid 1001 --gid 0 --home-dir /opt/app-root/src --no-create-home \
  --shell /sbin/nologin --comment "Default Application User" default
python3.11 -m venv /opt/app-root
mkdir -p /opt/app-root/src
chown -R 1001:0 /opt/app-root
chmod -R g=u /opt/app-root
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
SH
}

postgres_hook() {
  local root=$1
  install -m 0755 /dev/stdin "$root/usr/local/bin/run-postgresql" <<'SH'
#!/bin/sh
# sclorg's contract: initialise once from POSTGRESQL_* variables, then run in the
# foreground; any UID in group 0 may own the data directory.
set -eu
export PGDATA=/var/lib/pgsql/data/userdata
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRESQL_USER:?}" "${POSTGRESQL_PASSWORD:?}" "${POSTGRESQL_DATABASE:?}"
  mkdir -p "$PGDATA"
  /usr/lib/postgresql/15/bin/initdb -D "$PGDATA" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 >/dev/null
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  # /run is empty in an imported image: the socket goes to /tmp (PGHOST, below).
  echo "unix_socket_directories = '/tmp'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  /usr/lib/postgresql/15/bin/pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  psql -v ON_ERROR_STOP=1 -U postgres -d postgres -q \
    -c "CREATE USER \"$POSTGRESQL_USER\" PASSWORD '$POSTGRESQL_PASSWORD'" \
    -c "CREATE DATABASE \"$POSTGRESQL_DATABASE\" OWNER \"$POSTGRESQL_USER\""
  /usr/lib/postgresql/15/bin/pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec /usr/lib/postgresql/15/bin/postgres -D "$PGDATA"
SH
  chroot "$root" sh -eu <<'SH'
usermod --uid 26 --gid 0 --home /var/lib/pgsql postgres
mkdir -p /var/lib/pgsql/data /var/run/postgresql
chown -R 26:0 /var/lib/pgsql /var/run/postgresql
chmod -R g=u /var/lib/pgsql /var/run/postgresql
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
SH
}

changes() {
  case $1 in
    python) cat <<'EOF'
ENV PATH=/opt/app-root/src/.local/bin/:/opt/app-root/src/bin:/opt/app-root/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV HOME=/opt/app-root/src
ENV APP_ROOT=/opt/app-root
ENV VIRTUAL_ENV=/opt/app-root
ENV PYTHON_VERSION=3.11
ENV PYTHONUNBUFFERED=1
ENV PYTHONIOENCODING=UTF-8
ENV LANG=C.UTF-8
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /opt/app-root/src
USER 1001
CMD ["/bin/bash"]
EOF
    ;;
    postgres) cat <<'EOF'
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV HOME=/var/lib/pgsql
ENV PGHOST=/tmp
ENV LANG=C.UTF-8
EXPOSE 5432
USER 26
CMD ["run-postgresql"]
EOF
    ;;
  esac
}

build() {
  local kind=$1 out=$2 packages hook tarball
  case $kind in
    python)
      tarball="$out/ubi9-python-311-standin-HASH.tar"
      packages=python3.11,python3.11-venv,python3.11-dev,python3-pip-whl,gcc,libc6-dev,ca-certificates,passwd
      hook=python_hook ;;
    postgres)
      tarball="$out/postgresql-15-standin-HASH.tar"
      packages=postgresql-15,ca-certificates
      hook=postgres_hook ;;
    *) echo "unknown stand-in: $kind" >&2; exit 2 ;;
  esac
  local hash
  hash=$( { echo "$SUITE $packages"; declare -f "$hook"; changes "$kind"; } | sha256sum | cut -c1-12)
  tarball=${tarball/HASH/$hash}
  if [ ! -f "$tarball" ]; then
    mkdir -p "$out"
    command -v mmdebstrap >/dev/null || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap \
        >/dev/null; }
    # The hook runs under sh: call this script back rather than an exported function.
    mmdebstrap --quiet --variant=minbase --include="$packages" \
      --customize-hook="$(realpath "$0") $hook \"\$1\"" "$SUITE" "${tarball%.tar}.part.tar" >&2
    mv "${tarball%.tar}.part.tar" "$tarball"
  fi
  echo "$tarball"
}

case ${1:-} in
  changes) changes "$2" ;;
  python|postgres) build "$1" "$2" ;;
  python_hook|postgres_hook) "$1" "$2" ;;
  *) echo "usage: $0 python|postgres OUT_DIR | changes python|postgres" >&2; exit 2 ;;
esac
