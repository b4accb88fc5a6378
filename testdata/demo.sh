#!/usr/bin/env bash
# The first-run demo, on a local file:// repository: no cloud account
# needed. It makes a throwaway PostgreSQL 15 cluster that archives its WAL
# with cellar, runs pgbench, takes a backup, writes rows before and after a
# moment it notes, restores to that moment into a new directory, starts
# PostgreSQL there and shows which rows came back; then proves the latest
# backup with a restore drill, and shows the server's status. Every cellar
# command is
# printed before it runs, so you can copy it. Everything is removed at
# the end.
#
#   testdata/demo.sh CELLAR_BIN
set -euo pipefail
# PostgreSQL refuses to run as root: as root, the demo runs PostgreSQL and
# cellar as an ordinary user, as a DBA runs cellar as postgres.
. "$(dirname "$0")/bench-lib.sh"
bench_setup cellar-demo
chown "$user" "$dir"
cp "$1" "$dir/cellar"
cellar=$dir/cellar
conf=$dir/cellar.conf
run() { "${as[@]}" "$@"; }
# show prints a cellar command as you would type it, then runs it.
show() {
	local shown=cellar
	for a in "${@:2}"; do shown+=" $(printf %q "$a")"; done
	echo "\$ $shown"
	run "$@"
}

cleanup() {
	run "$pgbin/pg_ctl" -D "$dir/pg" stop -m immediate >/dev/null 2>&1 || true
	run "$pgbin/pg_ctl" -D "$dir/restored" stop -m immediate >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT

port=$(free_port)
port2=$(free_port)
start=$(date +%s)

run tee "$conf" >/dev/null <<CONF
[cellar]
repository = file://$dir/repository
compression = zstd
lock_directory = $dir
drill_directory = $dir
drill_query = select count(*) from demo_rows

[demo]
description = "Demo server"
pgdata = $dir/pg
conninfo = host=$dir port=$port user=$user dbname=postgres
CONF
echo "== the configuration, $conf"
cat "$conf"

echo
echo "== a PostgreSQL 15 cluster that archives its WAL with cellar wal-push"
run "$pgbin/initdb" -D "$dir/pg" -A trust -U "$user" --no-instructions >/dev/null
run tee -a "$dir/pg/postgresql.conf" >/dev/null <<PGCONF
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
wal_level = replica
archive_mode = on
archive_command = '$cellar --config $conf wal-push demo %p'
PGCONF
echo "archive_command = 'cellar --config $conf wal-push demo %p'"
run "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start >/dev/null
psql() { run "$pgbin/psql" -X -q -h "$dir" -p "$1" -U "$user" -d postgres -At -c "$2"; }

echo
show "$cellar" --config "$conf" check demo

echo
echo "== pgbench data"
run "$pgbin/pgbench" -h "$dir" -p "$port" -U "$user" -i -s 5 -q postgres 2>&1 | tail -1

echo
show "$cellar" --config "$conf" backup demo --fast
show "$cellar" --config "$conf" list-backups demo

echo
echo "== rows 1-5, then the moment to return to, then rows 6-10"
psql "$port" "CREATE TABLE demo_rows (id int primary key, at timestamptz default clock_timestamp())"
for i in 1 2 3 4 5; do psql "$port" "INSERT INTO demo_rows (id) VALUES ($i)"; done
sleep 1
target=$(psql "$port" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
echo "target time: $target"
sleep 1
for i in 6 7 8 9 10; do psql "$port" "INSERT INTO demo_rows (id) VALUES ($i)"; done
show "$cellar" --config "$conf" switch-wal demo --archive

echo
show "$cellar" --config "$conf" restore demo latest "$dir/restored" --target-time "$target"
run tee -a "$dir/restored/postgresql.conf" >/dev/null <<PGCONF
port = $port2
archive_mode = off
PGCONF
echo "\$ pg_ctl -D $dir/restored start    # on port $port2: it recovers to the target and promotes"
run "$pgbin/pg_ctl" -D "$dir/restored" -l "$dir/restored.log" -w start >/dev/null
for _ in $(seq 1 600); do
	[ "$(psql "$port2" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && break
	sleep 0.1
done

echo
echo "== what the restored server has"
before=$(psql "$port2" "SELECT count(*) FROM demo_rows WHERE id <= 5")
after=$(psql "$port2" "SELECT count(*) FROM demo_rows WHERE id > 5")
accounts=$(psql "$port2" "SELECT count(*) FROM pgbench_accounts")
echo "rows written before the target: $before of 5"
echo "rows written after the target:  $after of 5"
echo "pgbench_accounts rows:          $accounts"
show "$cellar" --config "$conf" verify demo latest

echo
echo "== a restore drill: the latest backup restored into a scratch directory, started, recovered"
echo "== to the end of the archived WAL and asked drill_query; the outcome is recorded"
drill=$(show "$cellar" --config "$conf" drill demo) || { echo "$drill"; echo "FAILED: the drill failed." >&2; exit 1; }
echo "$drill"
show "$cellar" --config "$conf" list-drills demo
echo
show "$cellar" --config "$conf" status demo

echo
if ! grep -q "Query answered: 10$" <<<"$drill"; then
	echo "FAILED: the drill did not find the 10 rows." >&2
	exit 1
fi
if [ "$before" = 5 ] && [ "$after" = 0 ] && [ "$accounts" = 500000 ]; then
	echo "PROVEN: the restore reached exactly the target time, and the drill recovered every row, in $(($(date +%s) - start)) s."
else
	echo "FAILED: the restored server does not hold exactly the rows written before the target." >&2
	tail -20 "$dir/restored.log" >&2
	exit 1
fi
