#!/usr/bin/env bash
# devdb.sh makes the local PostgreSQL and MariaDB ready for dtx's tests and demo.
# Idempotent: installs from Debian's packages only what is missing, starts what is
# stopped, sets max_prepared_transactions only when it is 0 (the one restart), and
# creates the `test` databases. Takes well under a second when all is ready.
set -euo pipefail

say() { printf 'devdb: %s\n' "$*"; }
pg_ok() { psql -XAtqc 'select 1' "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable" >/dev/null 2>&1; }
my_ok() { mariadb -uroot -h127.0.0.1 -P3306 -e 'select 1' >/dev/null 2>&1; }
my_tls() { [ "$(mariadb -uroot -h127.0.0.1 -P3306 -N -e 'select @@have_ssl' 2>/dev/null)" = YES ]; }

if pg_ok && my_ok && [ "$(psql -XAtqc 'show max_prepared_transactions' "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")" != 0 ] &&
	psql -XAtqc 'select 1' "postgres://postgres@127.0.0.1:5432/test?sslmode=disable" >/dev/null 2>&1 &&
	mariadb -uroot -h127.0.0.1 -P3306 -e 'use test' >/dev/null 2>&1; then
	if my_tls; then
		say "PostgreSQL and MariaDB ready"
		exit 0
	fi
	if [ "$(id -u)" != 0 ]; then
		say "PostgreSQL and MariaDB ready; MariaDB has TLS off, so the TLS session tests skip (run this as root to turn it on)"
		exit 0
	fi
fi

if [ "$(id -u)" != 0 ]; then
	say "servers are not ready and this is not root: see docs/servers.md to set them up by hand" >&2
	exit 1
fi

# Install only where missing.
missing=()
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl) # MariaDB's TLS certificate, below
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]} from Debian's packages"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL: trust on loopback, running, prepared transactions on, database test.
PGVER=$(ls /etc/postgresql | sort -V | tail -1)
HBA=/etc/postgresql/$PGVER/main/pg_hba.conf
if ! grep -q '^host all all 127.0.0.1/32 trust' "$HBA"; then
	sed -i '1i host all all 127.0.0.1/32 trust' "$HBA"
	pg_ctlcluster --skip-systemctl-redirect "$PGVER" main reload 2>/dev/null || true
fi
if ! pg_ok; then
	say "starting PostgreSQL $PGVER"
	pg_ctlcluster --skip-systemctl-redirect "$PGVER" main start || [ $? = 2 ]
	for _ in $(seq 1 100); do pg_ok && break; sleep 0.1; done
fi
if [ "$(su postgres -c "psql -XAtqc 'show max_prepared_transactions'")" = 0 ]; then
	say "setting max_prepared_transactions = 100 (restarts PostgreSQL once)"
	su postgres -c "psql -XAtqc 'ALTER SYSTEM SET max_prepared_transactions = 100'"
	pg_ctlcluster --skip-systemctl-redirect "$PGVER" main restart
	for _ in $(seq 1 100); do pg_ok && break; sleep 0.1; done
fi
su postgres -c "psql -XAtqc \"select 1 from pg_database where datname='test'\"" | grep -q 1 ||
	su postgres -c "createdb test"

# MariaDB: running, root over TCP without a password, database test.
if ! my_ok && ! mariadb -e 'select 1' >/dev/null 2>&1; then
	say "starting MariaDB"
	mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
	start-stop-daemon --start --oknodo --background --pidfile /run/mysqld/mysqld.pid \
		--exec /usr/sbin/mariadbd -- --user=mysql
	for _ in $(seq 1 100); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
fi
if ! my_ok; then
	mariadb -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION"
fi
mariadb -uroot -h127.0.0.1 -e "CREATE DATABASE IF NOT EXISTS test"

# MariaDB: TLS on, with a self-signed certificate, for the tests of TLS
# sessions (Debian's server has it off: have_ssl DISABLED). The setting is
# read at start only, so this restarts MariaDB once; prepared XA branches
# survive a restart.
if ! my_tls; then
	say "turning TLS on in MariaDB (restarts it once)"
	tls=/etc/mysql/dtx-tls
	mkdir -p "$tls"
	[ -s "$tls/key.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
		-keyout "$tls/key.pem" -out "$tls/cert.pem" >/dev/null 2>&1
	chown -R mysql:mysql "$tls"
	conf=/etc/mysql/my.cnf
	[ -d /etc/mysql/mariadb.conf.d ] && conf=/etc/mysql/mariadb.conf.d/99-dtx-tls.cnf
	grep -q dtx-tls "$conf" 2>/dev/null ||
		printf '\n[mysqld]\nssl_cert = %s/cert.pem\nssl_key = %s/key.pem\n' "$tls" "$tls" >>"$conf"
	mariadb-admin shutdown
	for _ in $(seq 1 100); do [ -e /run/mysqld/mysqld.pid ] || break; sleep 0.1; done
	mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
	start-stop-daemon --start --oknodo --background --pidfile /run/mysqld/mysqld.pid \
		--exec /usr/sbin/mariadbd -- --user=mysql
	for _ in $(seq 1 100); do my_ok && break; sleep 0.2; done
	my_tls || say "MariaDB still has no TLS: the TLS session tests will fail under DTX_REQUIRE_DB" >&2
fi

pg_ok && my_ok || { say "servers still not reachable" >&2; exit 1; }
say "PostgreSQL and MariaDB ready"
