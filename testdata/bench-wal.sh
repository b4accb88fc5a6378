#!/usr/bin/env bash
# WAL archiving benchmark, side by side with pgBackRest, as `make bench` runs
# it: 100 real 16 MiB segments from pgbench, pushed one process call at a
# time (as archive_command does) to a TLS MinIO, by `cellar wal-push` (zstd
# at its fastest level) and `pgbackrest archive-push` (zst level 1),
# interleaved run by run with the page cache dropped before each batch;
# then the same with cellar's parallel push; then fetched back one call at
# a time by `cellar wal-fetch` and `pgbackrest archive-get`.
#
#   testdata/bench-wal.sh TOOLS_DIR CELLAR_BIN WALBENCH_BIN [SEGMENTS] [RUNS]
#
# With CELLAR_BASELINE=PATH, another cellar binary is timed alongside in
# the push comparison (an A/B of two builds).
set -euo pipefail
tools=$1
cellar=$(realpath "$2")
walbench=$(realpath "$3")
nseg=${4:-100}
runs=${5:-3}
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
. "$(dirname "$0")/bench-lib.sh"
bench_setup cellar-bench

# MinIO over TLS: pgBackRest speaks only HTTPS to S3.
start_minio "$tools" tls

# PostgreSQL, and real WAL from pgbench.
pgport=$(free_port)
init_pg "$pgport" <<CONF
wal_keep_size = '8GB'
max_wal_size = '8GB'
archive_mode = on
archive_command = '/bin/true'
CONF
echo "== generating $nseg WAL segments with pgbench"
scale=10
while :; do
	"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s "$scale" -q postgres >/dev/null 2>&1
	"${as[@]}" "$pgbin/psql" -h "$dir" -p "$pgport" -qAt -c "SELECT pg_switch_wal()" postgres >/dev/null
	have=$(ls "$dir/pg/pg_wal" | grep -cE '^[0-9A-F]{24}$' || true)
	[ "$have" -gt $((nseg + 2)) ] && break
done
mkdir -p "$dir/wal/archive_status" "$dir/walpar/archive_status" "$dir/fetch"
ls "$dir/pg/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort | head -n "$nseg" | while read -r s; do
	cp "$dir/pg/pg_wal/$s" "$dir/wal/$s"
	cp "$dir/pg/pg_wal/$s" "$dir/walpar/$s"
done
chown -R "$user" "$dir"
segs=("$dir"/wal/[0-9A-F]*)

# Configurations: a fresh server (cellar) or stanza (pgBackRest) per run,
# so that every run archives into an empty place.
{
	echo "[cellar]"
	echo "repository = s3://bench/cellar"
	echo "s3_endpoint = https://127.0.0.1:$s3port"
	echo "s3_region = us-east-1"
	echo "s3_force_path_style = on"
	echo "compression = zstd"
	echo "wal_push_parallel = 1"
	for r in $(seq 1 "$runs"); do
		echo "[bench$r]"
		echo "[par$r]"
		echo "wal_push_parallel = 4"
	done
} >"$dir/cellar.conf"
{
	echo "[global]"
	echo "repo1-type=s3"
	echo "repo1-s3-endpoint=127.0.0.1"
	echo "repo1-storage-port=$s3port"
	echo "repo1-storage-verify-tls=n"
	echo "repo1-s3-uri-style=path"
	echo "repo1-s3-bucket=bench"
	echo "repo1-s3-region=us-east-1"
	echo "repo1-s3-key=minioadmin"
	echo "repo1-s3-key-secret=minioadmin"
	echo "repo1-path=/pgbackrest"
	echo "compress-type=zst"
	echo "compress-level=1"
	echo "archive-async=n"
	echo "log-path=$dir/pgbr-log"
	echo "lock-path=$dir/pgbr-lock"
	echo "spool-path=$dir/pgbr-spool"
	echo "log-level-console=warn"
	echo "log-level-file=off"
	for r in $(seq 1 "$runs"); do
		echo "[bench$r]"
		echo "pg1-path=$dir/pg"
		echo "pg1-port=$pgport"
		echo "pg1-socket-path=$dir"
	done
} >"$dir/pgbackrest.conf"
chmod 644 "$dir/cellar.conf" "$dir/pgbackrest.conf"
for r in $(seq 1 "$runs"); do
	"${as[@]}" pgbackrest --config="$dir/pgbackrest.conf" --stanza="bench$r" stanza-create >/dev/null
done

export AWS_ACCESS_KEY_ID=minioadmin AWS_SECRET_ACCESS_KEY=minioadmin AWS_CA_BUNDLE="$dir/certs/public.crt"
asuser=()
[ -n "${as[*]}" ] && asuser=(-as "$user")

echo
echo "== wal-push, one call per segment ($nseg segments of 16 MiB, MinIO over TLS)"
base=()
if [ -n "${CELLAR_BASELINE:-}" ]; then
	# Another build of cellar to compare with (A/B), into servers of its own.
	base=(-tool "cellar-base=$(realpath "$CELLAR_BASELINE") --config $dir/cellar.conf wal-push base{run} {path}")
	for r in $(seq 1 "$runs"); do echo "[base$r]" >>"$dir/cellar.conf"; done
fi
"$walbench" "${asuser[@]}" -runs "$runs" \
	-tool "cellar=$cellar --config $dir/cellar.conf wal-push bench{run} {path}" \
	-tool "pgbackrest=pgbackrest --config=$dir/pgbackrest.conf --stanza=bench{run} archive-push {path}" \
	"${base[@]}" "${segs[@]}"

echo
echo "== wal-push with wal_push_parallel = 4 (PostgreSQL's .ready files present, .done written after each call)"
"$walbench" "${asuser[@]}" -runs "$runs" -done \
	-setup "cd $dir/walpar && rm -rf archive_status cellar && mkdir archive_status && for s in [0-9A-F]*; do touch archive_status/\$s.ready; done && chown -R $user $dir/walpar" \
	-tool "cellar-par=$cellar --config $dir/cellar.conf wal-push par{run} {path}" \
	"$dir"/walpar/[0-9A-F]*

echo
echo "== wal-fetch, one call per segment"
"$walbench" "${asuser[@]}" -runs "$runs" \
	-setup "rm -rf $dir/fetch && mkdir -p $dir/fetch && chown $user $dir/fetch" \
	-tool "cellar=$cellar --config $dir/cellar.conf wal-fetch bench{run} {name} $dir/fetch/{name}" \
	-tool "pgbackrest=pgbackrest --config=$dir/pgbackrest.conf --stanza=bench{run} archive-get {name} $dir/fetch/{name}" \
	"${segs[@]}"

echo
echo "== compression"
"$cellar" --config "$dir/cellar.conf" list-wal bench1

# Recovery: PostgreSQL replays RECOVERY_MB (default 1024) MiB of WAL from
# a base backup, with restore_command = cellar wal-fetch (prefetching
# `parallel` segments ahead) against restore_command = cp from a local
# directory, the physical limit; runs interleaved, page cache dropped
# before each. The time is from `pg_ctl start` until the server, promoted
# at the end of the archive, accepts connections.
rec_mb=${RECOVERY_MB:-1024}
echo
echo "== recovery of $rec_mb MiB of WAL: restore_command = cellar wal-fetch, against cp from a local directory"
psql() { "${as[@]}" "$pgbin/psql" -h "$dir" -p "$pgport" -qAtX "$@" postgres; }
mkdir -p "$dir/rarch"
chown "$user" "$dir/rarch"
psql -c "ALTER SYSTEM SET archive_command = 'cp %p $dir/rarch/%f'" -c "SELECT pg_reload_conf()" >/dev/null
"${as[@]}" "$pgbin/pg_basebackup" -h "$dir" -p "$pgport" -D "$dir/rbase" -X none -c fast 2>/dev/null
while [ "$(ls "$dir/rarch" | grep -cE '^[0-9A-F]{24}$')" -lt $((rec_mb / 16)) ]; do
	"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s 10 -q postgres >/dev/null 2>&1
	psql -c "SELECT pg_switch_wal()" >/dev/null
	sleep 1
done
while ls "$dir/pg/pg_wal/archive_status" | grep -q '\.ready$'; do sleep 0.5; done
"${as[@]}" "$pgbin/pg_ctl" -D "$dir/pg" stop -m fast >/dev/null
nrec=$(ls "$dir/rarch" | grep -cE '^[0-9A-F]{24}$')
echo "[rec]" >>"$dir/cellar.conf"
for f in "$dir"/rarch/*; do
	"${as[@]}" "$cellar" --config "$dir/cellar.conf" wal-push rec "$f"
done
echo "$nrec segments ($((nrec * 16)) MiB) archived after the base backup"
rport=$(free_port)
declare -A took
for r in $(seq 1 "$runs"); do
	for tool in cp cellar ${CELLAR_BASELINE:+cellar-base}; do
		rm -rf "$dir/rdata"
		cp -a "$dir/rbase" "$dir/rdata"
		case $tool in
		cp) rc="cp $dir/rarch/%f %p" ;;
		cellar) rc="$cellar --config $dir/cellar.conf wal-fetch rec %f %p" ;;
		cellar-base) rc="$(realpath "$CELLAR_BASELINE") --config $dir/cellar.conf wal-fetch rec %f %p" ;;
		esac
		cat >>"$dir/rdata/postgresql.auto.conf" <<CONF
port = $rport
unix_socket_directories = '$dir'
archive_mode = off
hot_standby = off
restore_command = '$rc'
CONF
		touch "$dir/rdata/recovery.signal"
		chown -R "$user" "$dir/rdata"
		chmod 700 "$dir/rdata"
		drop_caches
		timed_recovery "$dir/rdata" "$dir/rec-$tool-$r.log" "$nrec"
		restored=$recovery_restored
		s=$recovery_seconds
		took[$tool]+="$s "
		printf 'run %d %-7s %6.2f s  (%d segments restored)\n' "$r" "$tool" "$s" "$restored"
	done
done
mcp=$(echo "${took[cp]}" | median)
mcellar=$(echo "${took[cellar]}" | median)
printf '\nrecovery, medians of %d runs: cp %.2f s, cellar wal-fetch %.2f s (%.2fx cp)\n' "$runs" "$mcp" "$mcellar" "$(awk -v a="$mcellar" -v b="$mcp" 'BEGIN {print a / b}')"
if [ -n "${CELLAR_BASELINE:-}" ]; then
	mbase=$(echo "${took[cellar-base]}" | median)
	printf 'cellar-base wal-fetch %.2f s (%.2fx cp)\n' "$mbase" "$(awk -v a="$mbase" -v b="$mcp" 'BEGIN {print a / b}')"
fi
