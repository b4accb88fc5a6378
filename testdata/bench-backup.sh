#!/usr/bin/env bash
# Base backup benchmark, side by side with pgBackRest, as `make bench` runs
# it: full backups of a PostgreSQL 15 cluster to a TLS MinIO by
# `cellar backup --fast` (zstd, then s2; parallel = 4, the default) and `pgbackrest
# backup --type=full` (zst level 1, process-max = 2, start-fast), of two
# data sets: pgbench at scale 100 (about 1.5 GB) and a "mixed" table of
# 6 million rows of bigint, timestamp, int, md5 text and a short status
# (about 530 MB). The tools' runs are interleaved (cellar-zstd, cellar-s2,
# pgbackrest, cellar-zstd, ...) with the page cache dropped before each;
# every run is timed by /usr/bin/time (wall, user + sys CPU of the process
# tree, peak RSS of its largest process). The cluster archives WAL to both
# repositories (archive_command runs cellar wal-push, then pgbackrest
# archive-push), since both wait for the backup's WAL. Between runs each
# repository is emptied of its backups (untimed). Cellar's peak RSS is
# also measured on pgbench at scale 10, to show that it does not grow with
# the database.
#
#   testdata/bench-backup.sh TOOLS_DIR CELLAR_BIN [RUNS]
#
# Smaller data sets for a quick trial: BENCH_SCALE (pgbench scale, 100),
# BENCH_MIXED_ROWS (6000000), BENCH_RSS_SCALE (10; 0 skips that part).
set -euo pipefail
tools=$1
runs=${3:-3}
scale=${BENCH_SCALE:-100}
mixed_rows=${BENCH_MIXED_ROWS:-6000000}
rss_scale=${BENCH_RSS_SCALE:-10}
pgbin=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
started=$(date +%s)

user=$(id -un)
as=()
if [ "$(id -u)" = 0 ]; then
	user=cellartest
	id "$user" >/dev/null 2>&1 || useradd -m "$user"
	as=(runuser -u "$user" --)
fi
dir=$(mktemp -d /tmp/cellar-bench.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
	"${as[@]}" "$pgbin/pg_ctl" -D "$dir/pg" stop -m immediate >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
}

# A copy of the binary: PostgreSQL's archiver runs it during the whole
# benchmark, and a rebuild of the original must not change it midway.
cp "$2" "$dir/cellar"
cellar=$dir/cellar

# MinIO over TLS: pgBackRest speaks only HTTPS to S3.
mkdir -p "$dir/certs" "$dir/minio"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
	-addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
	-keyout "$dir/certs/private.key" -out "$dir/certs/public.crt" >/dev/null 2>&1
chmod 644 "$dir/certs/public.crt"
s3port=$(free_port)
MINIO_ROOT_USER=minioadmin MINIO_ROOT_PASSWORD=minioadmin MINIO_BROWSER=off MINIO_UPDATE=off \
	"$tools/bin/minio" server "$dir/minio" --quiet --address "127.0.0.1:$s3port" \
	--console-address "127.0.0.1:$(free_port)" --certs-dir "$dir/certs" >"$dir/minio.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
	curl -skf -o /dev/null "https://127.0.0.1:$s3port/minio/health/live" && break
	sleep 0.25
done
s3() { curl -sk --fail --aws-sigv4 "aws:amz:us-east-1:s3" --user minioadmin:minioadmin "$@"; }
s3 -X PUT "https://127.0.0.1:$s3port/bench" >/dev/null
# s3_delete PREFIX deletes every object of the bucket under PREFIX.
s3_delete() {
	local keys k
	while :; do
		keys=$(s3 "https://127.0.0.1:$s3port/bench?list-type=2&prefix=$1" | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g' || true)
		[ -n "$keys" ] || return 0
		for k in $keys; do s3 -X DELETE "https://127.0.0.1:$s3port/bench/$k" >/dev/null; done
	done
}

# The credentials and CA reach cellar in the archiver too: PostgreSQL
# inherits this environment.
export AWS_ACCESS_KEY_ID=minioadmin AWS_SECRET_ACCESS_KEY=minioadmin AWS_CA_BUNDLE="$dir/certs/public.crt"
unset CELLAR_COMPRESSION CELLAR_REPOSITORY CELLAR_CONFIG

pgport=$(free_port)
mkdir -p "$dir/lock" "$dir/time" "$dir/log"
{
	echo "[cellar]"
	echo "repository = s3://bench/cellar"
	echo "s3_endpoint = https://127.0.0.1:$s3port"
	echo "s3_region = us-east-1"
	echo "s3_force_path_style = on"
	echo "compression = zstd"
	echo "parallel = 4"
	echo "lock_directory = $dir/lock"
	echo "[main]"
	echo "pgdata = $dir/pg"
	echo "conninfo = host=$dir port=$pgport user=$user dbname=postgres"
} >"$dir/cellar.conf"
cat >"$dir/pgbackrest.conf" <<CONF
[global]
repo1-type=s3
repo1-s3-endpoint=127.0.0.1
repo1-storage-port=$s3port
repo1-storage-verify-tls=n
repo1-s3-uri-style=path
repo1-s3-bucket=bench
repo1-s3-region=us-east-1
repo1-s3-key=minioadmin
repo1-s3-key-secret=minioadmin
repo1-path=/pgbackrest
repo1-retention-full=9999
compress-type=zst
compress-level=1
process-max=2
start-fast=y
archive-async=n
log-path=$dir/pgbr-log
lock-path=$dir/pgbr-lock
spool-path=$dir/pgbr-spool
log-level-console=warn
log-level-file=off
[bench]
pg1-path=$dir/pg
pg1-port=$pgport
pg1-socket-path=$dir
CONF
chmod 644 "$dir/cellar.conf" "$dir/pgbackrest.conf"
chown "$user" "$dir" "$dir/lock" "$dir/time" "$dir/log"

"${as[@]}" "$pgbin/initdb" -D "$dir/pg" -A trust -E UTF8 --locale=C >/dev/null
cat >>"$dir/pg/postgresql.conf" <<CONF
port = $pgport
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_wal_size = '8GB'
checkpoint_timeout = '1h'
archive_mode = on
archive_command = '/bin/true'
CONF
"${as[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start >/dev/null
psql() { "${as[@]}" "$pgbin/psql" -h "$dir" -p "$pgport" -qAtX -v ON_ERROR_STOP=1 "$@" postgres; }
"${as[@]}" pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench stanza-create >/dev/null

# archive_command: /bin/true while a data set loads (its WAL is not the
# benchmark's), both tools while backups run.
archive_to() {
	psql -c "ALTER SYSTEM SET archive_command = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}
archive_both="$cellar --config $dir/cellar.conf wal-push main %p && pgbackrest --config=$dir/pgbackrest.conf --stanza=bench archive-push %p"
settle() {
	psql -c "VACUUM ANALYZE" -c "CHECKPOINT" -c "SELECT pg_switch_wal()" >/dev/null
	while ls "$dir/pg/pg_wal/archive_status" | grep -q '\.ready$'; do sleep 0.2; done
	archive_to "$archive_both"
	# Both archive: pgBackRest's check switches WAL and waits for it.
	"${as[@]}" pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench check
	if ! out=$("${as[@]}" "$cellar" --config "$dir/cellar.conf" check main 2>&1); then
		echo "bench: cellar check main failed:" >&2
		echo "$out" >&2
		exit 1
	fi
}

declare -A wall cpu rss stored datasz
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

# run SET TOOL R: one timed backup with the page cache dropped before it.
run() {
	local set=$1 tool=$2 r=$3 tf="$dir/time/$1-$2-$3" log="$dir/log/$1-$2-$3.log" cmd
	case $tool in
	cellar-zstd) cmd=(env CELLAR_COMPRESSION=zstd "$cellar" --config "$dir/cellar.conf" backup main --fast --quiet) ;;
	cellar-s2) cmd=(env CELLAR_COMPRESSION=s2 "$cellar" --config "$dir/cellar.conf" backup main --fast --quiet) ;;
	pgbackrest) cmd=(pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench --type=full backup) ;;
	esac
	sync
	echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
	if ! "${as[@]}" /usr/bin/time -f '%e %U %S %M' -o "$tf" "${cmd[@]}" >"$log" 2>&1; then
		echo "bench: $tool run $r on $set failed: ${cmd[*]}" >&2
		cat "$log" "$tf" >&2
		echo "-- last lines of the PostgreSQL log:" >&2
		tail -20 "$dir/pg.log" >&2
		exit 1
	fi
	local e u s m data st
	read -r e u s m <"$tf"
	if [ "${tool%%-*}" = cellar ]; then
		local js
		js=$("$cellar" --config "$dir/cellar.conf" --format json show-backup main latest)
		data=$(jq -r .data_size <<<"$js")
		st=$(jq -r .stored_size <<<"$js")
		s3_delete cellar/main/backups/
		s3_delete cellar/main/base/
	else
		local js
		js=$("${as[@]}" pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench info --output=json)
		data=$(jq -r '.[0].backup[-1].info.size' <<<"$js")
		st=$(jq -r '.[0].backup[-1].info.repository.delta' <<<"$js")
		"${as[@]}" pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench --repo1-retention-full=1 expire >/dev/null
	fi
	local k="$set:$tool"
	wall[$k]+="$e "
	cpu[$k]+="$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.2f", u + s}') "
	rss[$k]+="$(awk -v m="$m" 'BEGIN {printf "%.1f", m / 1024}') "
	stored[$k]+="$(mib "$st") "
	datasz[$k]=$(mib "$data")
	printf 'run %d %-12s %7.2f s  %6.1f MiB/s  CPU %6.2f s  RSS %6.1f MiB  data %7.1f MiB  stored %7.1f MiB\n' \
		"$r" "$tool" "$e" "$(awk -v d="$data" -v e="$e" 'BEGIN {print d / 1048576 / e}')" \
		"$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')" "$(awk -v m="$m" 'BEGIN {print m / 1024}')" \
		"$(mib "$data")" "$(mib "$st")"
}

# report SET: the table of medians.
report() {
	local set=$1 tool k w
	shift
	printf '\n%s, medians of %d runs\n' "$set" "$runs"
	printf '%-12s %8s %8s %8s %13s %10s %11s\n' tool "wall s" "MiB/s" "CPU s" "peak RSS MiB" "data MiB" "stored MiB"
	for tool in "$@"; do
		k="$set:$tool"
		w=$(echo "${wall[$k]}" | median)
		printf '%-12s %8.2f %8.1f %8.2f %13.1f %10.1f %11.1f\n' "$tool" "$w" \
			"$(awk -v d="${datasz[$k]}" -v w="$w" 'BEGIN {print d / w}')" \
			"$(echo "${cpu[$k]}" | median)" "$(echo "${rss[$k]}" | median)" "${datasz[$k]}" \
			"$(echo "${stored[$k]}" | median)"
	done
}
ratio() { # SET TOOL TARGET
	local a b r
	a=$(echo "${wall[$1:$2]}" | median)
	b=$(echo "${wall[$1:pgbackrest]}" | median)
	r=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')
	printf '%-11s / pgbackrest wall time: %.2f (target <= %s: %s)\n' "$2" "$r" "$3" \
		"$(awk -v r="$r" -v t="$3" 'BEGIN {print (r <= t) ? "met" : "MISSED"}')"
}
rss_check() { # SET
	local tool m
	for tool in cellar-zstd cellar-s2; do
		m=$(echo "${rss[$1:$tool]}" | tr ' ' '\n' | grep . | sort -n | tail -1)
		printf '%-11s peak RSS, largest of the runs: %.1f MiB (target < 150 MiB: %s)\n' "$tool" "$m" \
			"$(awk -v m="$m" 'BEGIN {print (m < 150) ? "met" : "MISSED"}')"
	done
}

tools_all=(cellar-zstd cellar-s2 pgbackrest)
if [ "$rss_scale" -gt 0 ]; then
	echo "== pgbench scale $rss_scale, cellar only (peak RSS against database size)"
	"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s "$rss_scale" -q postgres >/dev/null 2>&1
	settle
	for r in $(seq 1 "$runs"); do
		for tool in cellar-zstd cellar-s2; do run "pgbench-$rss_scale" "$tool" "$r"; done
	done
	archive_to /bin/true
fi

echo
echo "== pgbench scale $scale"
t0=$(date +%s)
"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s "$scale" -q postgres >/dev/null 2>&1
settle
echo "(loaded in $(($(date +%s) - t0)) s)"
for r in $(seq 1 "$runs"); do
	for tool in "${tools_all[@]}"; do run "pgbench-$scale" "$tool" "$r"; done
done
archive_to /bin/true

echo
echo "== mixed, $mixed_rows rows"
t0=$(date +%s)
psql -c "DROP TABLE pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers" \
	-c "CREATE TABLE mixed AS SELECT g::bigint AS id, now() - g * interval '1 second' AS ts,
		(g % 1000)::int AS amount, md5(g::text) AS note,
		(ARRAY['new','paid','shipped','cancelled'])[1 + g % 4] AS status
		FROM generate_series(1, $mixed_rows) g" >/dev/null
settle
echo "(loaded in $(($(date +%s) - t0)) s; table: $(psql -c "SELECT pg_size_pretty(pg_total_relation_size('mixed'))"))"
for r in $(seq 1 "$runs"); do
	for tool in "${tools_all[@]}"; do run mixed "$tool" "$r"; done
done

echo
echo "== results"
if [ "$rss_scale" -gt 0 ]; then
	report "pgbench-$rss_scale" cellar-zstd cellar-s2
	rss_check "pgbench-$rss_scale"
fi
report "pgbench-$scale" "${tools_all[@]}"
ratio "pgbench-$scale" cellar-zstd 0.6
ratio "pgbench-$scale" cellar-s2 0.35
rss_check "pgbench-$scale"
report mixed "${tools_all[@]}"
ratio mixed cellar-zstd 1.0
ratio mixed cellar-s2 0.5
rss_check mixed
printf '\nbenchmark took %d s\n' "$(($(date +%s) - started))"
