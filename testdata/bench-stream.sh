#!/usr/bin/env bash
# WAL streaming benchmark, as `make bench` runs it.
#
# 1. pgbench (-c 4 -j 2, BENCH_SECONDS = 60 s, a scale-10 database) against
#    a PostgreSQL 15 primary with synchronous_commit = on, three ways, runs
#    interleaved: no streaming; asynchronous `cellar receive-wal` to MinIO
#    (the segment in progress uploaded every 10 s); synchronous receive-wal
#    (synchronous_standby_names = 'cellar_receive_wal': every commit waits
#    until its WAL is in MinIO). Medians of TPS and of pgbench's average
#    commit latency. archive_command is /bin/true: only streaming is measured.
# 2. The base backup of pgbench scale BENCH_SCALE (100) by
#    backup_method = stream (BASE_BACKUP over the replication protocol)
#    against the local method (Cellar reads pgdata), to the same MinIO,
#    interleaved, the page cache dropped before each; medians of wall time.
#
#   testdata/bench-stream.sh TOOLS_DIR CELLAR_BIN [RUNS]
#
# BENCH_SCALE and BENCH_SECONDS shrink it for a trial. BENCH_RW_FLAGS=--debug
# runs receive-wal with debug logging and prints, after each streaming run,
# how long its .partial uploads took by stored size.
set -euo pipefail
tools=$1
runs=${3:-3}
secs=${BENCH_SECONDS:-60}
scale=${BENCH_SCALE:-100}
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }

. "$(dirname "$0")/bench-lib.sh"
bench_setup cellar-bench-stream
rw=
stop_receiver() { [ -z "$rw" ] || kill "$rw" 2>/dev/null || true; }
trap 'stop_receiver; bench_cleanup' EXIT
cp "$2" "$dir/cellar"
cellar=$dir/cellar

mkdir -p "$dir/lock" "$dir/log"
start_minio "$tools"
export AWS_ACCESS_KEY_ID=minioadmin AWS_SECRET_ACCESS_KEY=minioadmin
unset CELLAR_COMPRESSION CELLAR_REPOSITORY CELLAR_CONFIG

pgport=$(free_port)
{
	echo "[cellar]"
	echo "repository = s3://bench/cellar"
	echo "s3_endpoint = http://127.0.0.1:$s3port"
	echo "s3_region = us-east-1"
	echo "s3_force_path_style = on"
	echo "lock_directory = $dir/lock"
	echo "[main]"
	echo "pgdata = $dir/pg"
	echo "conninfo = host=$dir port=$pgport user=$user dbname=postgres"
	echo "streaming_conninfo = host=$dir port=$pgport user=$user"
} >"$dir/cellar.conf"
chmod 644 "$dir/cellar.conf"
chown "$user" "$dir" "$dir/lock" "$dir/log"
init_pg "$pgport" <<CONF
max_wal_size = '8GB'
checkpoint_timeout = '1h'
synchronous_commit = on
archive_mode = on
archive_command = '/bin/true'
CONF
psql() { "${as[@]}" "$pgbin/psql" -h "$dir" -p "$pgport" -qAtX -v ON_ERROR_STOP=1 "$@" postgres; }
set_conf() { psql -c "ALTER SYSTEM SET $1 = '$2'" -c "SELECT pg_reload_conf()" >/dev/null; sleep 0.5; }
"${as[@]}" "$cellar" --config "$dir/cellar.conf" --quiet receive-wal main --create-slot
"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s 10 -q postgres >/dev/null 2>&1

start_rw() {
	"${as[@]}" "$cellar" --config "$dir/cellar.conf" ${BENCH_RW_FLAGS:-} receive-wal main >>"$dir/log/receive-wal.log" 2>&1 &
	rw=$!
	for _ in $(seq 1 200); do
		grep -q "Streaming WAL" "$dir/log/receive-wal.log" 2>/dev/null && [ "$(psql -c "SELECT count(*) FROM pg_stat_replication")" = 1 ] && return
		sleep 0.1
	done
	echo "bench: receive-wal did not start" >&2
	cat "$dir/log/receive-wal.log" >&2
	exit 1
}
stop_rw() {
	# SIGTERM to cellar itself (under runuser, its child), which stores
	# what it received and exits.
	pkill -TERM -P "$rw" 2>/dev/null || kill -TERM "$rw"
	wait "$rw" || true
	rw=
	[ -z "${BENCH_RW_FLAGS:-}" ] || grep "partial segment stored" "$dir/log/receive-wal.log" | sed -n "s/.*bytes=\([0-9]*\) stored=\([0-9]*\) seconds=\([0-9.]*\)/\2 \3/p" | awk "{b=int(\$1/262144); n[b]++; s[b]+=\$2} END {for (k in n) printf \"stored %4d KiB+: %5d uploads, %.1f ms\\n\", k*256, n[k], 1000*s[k]/n[k]}" | sort -n -k2
	: >"$dir/log/receive-wal.log"
}
declare -A tps lat wall

echo "== pgbench -c 4 -j 2 -T $secs, scale 10, synchronous_commit = on; $runs runs of each, interleaved"
for r in $(seq 1 "$runs"); do
	for mode in none async sync; do
		case $mode in
		none) set_conf synchronous_standby_names '' ;;
		async) set_conf synchronous_standby_names ''; start_rw ;;
		sync) set_conf synchronous_standby_names 'cellar_receive_wal'; start_rw ;;
		esac
		out=$("${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -c 4 -j 2 -T "$secs" -n postgres 2>&1)
		t=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
		l=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
		[ "$mode" = none ] || stop_rw
		set_conf synchronous_standby_names ''
		tps[$mode]+="$t "
		lat[$mode]+="$l "
		printf 'run %d %-6s %9.1f TPS  latency %7.2f ms\n' "$r" "$mode" "$t" "$l"
	done
done
printf '\n%-28s %10s %12s\n' "pgbench, medians" TPS "latency ms"
for mode in none async sync; do
	case $mode in
	none) name="no streaming" ;;
	async) name="receive-wal asynchronous" ;;
	sync) name="receive-wal synchronous" ;;
	esac
	printf '%-28s %10.1f %12.2f\n' "$name" "$(echo "${tps[$mode]}" | median)" "$(echo "${lat[$mode]}" | median)"
done

echo
echo "== base backup of pgbench scale $scale: backup_method = stream against local; $runs runs of each, interleaved"
set_conf archive_command "$cellar --config $dir/cellar.conf wal-push main %p"
"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s "$scale" -q postgres >/dev/null 2>&1
psql -c "CHECKPOINT" -c "SELECT pg_switch_wal()" >/dev/null
for r in $(seq 1 "$runs"); do
	for method in local stream; do
		drop_caches
		tf=$dir/log/time-$method-$r
		if ! "${as[@]}" env CELLAR_BACKUP_METHOD=$method /usr/bin/time -f '%e %M' -o "$tf" \
			"$cellar" --config "$dir/cellar.conf" --quiet backup main --fast >"$dir/log/backup.log" 2>&1; then
			echo "bench: $method backup failed" >&2
			cat "$dir/log/backup.log" >&2
			exit 1
		fi
		read -r e m <"$tf"
		wall[$method]+="$e "
		printf 'run %d %-6s %7.2f s  peak RSS %6.1f MiB\n' "$r" "$method" "$e" "$(awk -v m="$m" 'BEGIN {print m / 1024}')"
	done
done
size=$("$cellar" --config "$dir/cellar.conf" --format json show-backup main latest | sed -n 's/.*"data_size": \([0-9]*\).*/\1/p')
printf '\n%-28s %8s %8s\n' "backup, medians" "wall s" "MiB/s"
for method in local stream; do
	w=$(echo "${wall[$method]}" | median)
	printf '%-28s %8.2f %8.1f\n' "backup_method = $method" "$w" "$(awk -v d="$size" -v w="$w" 'BEGIN {print d / 1048576 / w}')"
done
