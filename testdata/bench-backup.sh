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
# repository is emptied of its backups (untimed), but for those of the
# last round, which the restores use. Cellar's peak RSS is
# also measured on pgbench at scale 10, to show that it does not grow with
# the database.
#
# Restores follow the backups of each data set: the last backup of each
# tool is kept (cellar zstd, cellar s2, pgBackRest), and each tool restores
# its own from the MinIO into an empty directory under the bench
# directory, as root (the files go to the directory's owner, the cluster's
# user): `cellar restore main ID DEST` (parallel = 4, the default; it
# syncs the filesystem before it exits) against `pgbackrest restore
# --pg1-path=DEST` (process-max = 2; it fsyncs every file). Runs are
# interleaved, the page cache is dropped before each and the destination
# removed after it, untimed; each is timed by /usr/bin/time as above.
#
# Last, PostgreSQL's recovery of BENCH_RECOVERY_MB (1024) MiB of WAL
# archived by cellar wal-push after the kept mixed zstd backup: that
# backup restored by cellar (untimed), then the time from `pg_ctl start`
# until the server, promoted at the end of the archive, accepts
# connections, with the restore_command cellar restore wrote (cellar
# wal-fetch, prefetching `parallel` segments ahead); page cache dropped
# before each run.
#
#   testdata/bench-backup.sh TOOLS_DIR CELLAR_BIN [RUNS]
#
# Smaller data sets for a quick trial: BENCH_SCALE (pgbench scale, 100),
# BENCH_MIXED_ROWS (6000000), BENCH_RSS_SCALE (10; 0 skips that part),
# BENCH_RECOVERY_MB (1024; 0 skips the recovery).
set -euo pipefail
tools=$1
runs=${3:-3}
scale=${BENCH_SCALE:-100}
mixed_rows=${BENCH_MIXED_ROWS:-6000000}
rss_scale=${BENCH_RSS_SCALE:-10}
rec_mb=${BENCH_RECOVERY_MB:-1024}
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
started=$(date +%s)

. "$(dirname "$0")/bench-lib.sh"
bench_setup cellar-bench

# A copy of the binary: PostgreSQL's archiver runs it during the whole
# benchmark, and a rebuild of the original must not change it midway.
cp "$2" "$dir/cellar"
cellar=$dir/cellar

# MinIO over TLS: pgBackRest speaks only HTTPS to S3.
start_minio "$tools" tls
# drop_backup ID removes one of cellar's backups, untimed, with cellar
# delete (which also removes the WAL that no backup left needs).
drop_backup() { "${as[@]}" "$cellar" --config "$dir/cellar.conf" --quiet delete main "$1"; }

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
pgbackrest_conf "$dir/pgbackrest.conf" <<CONF
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
CONF
chmod 644 "$dir/cellar.conf" "$dir/pgbackrest.conf"
chown "$user" "$dir" "$dir/lock" "$dir/time" "$dir/log"

init_pg "$pgport" <<CONF
max_wal_size = '8GB'
checkpoint_timeout = '1h'
archive_mode = on
archive_command = '/bin/true'
CONF
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

declare -A wall cpu rss stored datasz bid
# keep_last: the backups of the last round are kept for the restores.
keep_last=0
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

# run SET TOOL R: one timed backup with the page cache dropped before it.
run() {
	local set=$1 tool=$2 r=$3 tf="$dir/time/$1-$2-$3" log="$dir/log/$1-$2-$3.log" cmd
	case $tool in
	cellar-zstd) cmd=(env CELLAR_COMPRESSION=zstd "$cellar" --config "$dir/cellar.conf" backup main --fast --quiet) ;;
	cellar-s2) cmd=(env CELLAR_COMPRESSION=s2 "$cellar" --config "$dir/cellar.conf" backup main --fast --quiet) ;;
	pgbackrest) cmd=(pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench --type=full backup) ;;
	esac
	drop_caches
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
		bid[$set:$tool]=$(jq -r .id <<<"$js")
		if [ "$keep_last" = 0 ] || [ "$r" -lt "$runs" ]; then
			drop_backup "${bid[$set:$tool]}"
		fi
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

# restore SET TOOL R: one timed restore of TOOL's last backup of SET, as
# root into an empty directory owned by the cluster's user, with the page
# cache dropped before it; its results go under the set "restore-SET".
restore() {
	local set=$1 tool=$2 r=$3 dest="$dir/restore" k="restore-$1:$2"
	local tf="$dir/time/restore-$1-$2-$3" log="$dir/log/restore-$1-$2-$3.log" cmd
	case $tool in
	cellar-*) cmd=("$cellar" --config "$dir/cellar.conf" --quiet restore main "${bid[$set:$tool]}" "$dest") ;;
	pgbackrest) cmd=(pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench --pg1-path="$dest" restore) ;;
	esac
	rm -rf "$dest"
	mkdir -m 700 "$dest"
	chown "$user" "$dest"
	drop_caches
	if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" "${cmd[@]}" >"$log" 2>&1; then
		echo "bench: $tool restore $r of $set failed: ${cmd[*]}" >&2
		cat "$log" "$tf" >&2
		exit 1
	fi
	local e u s m data got
	read -r e u s m <"$tf"
	data=$(awk -v m="${datasz[$set:$tool]}" 'BEGIN {printf "%.0f", m * 1048576}')
	# What was written, against the backup's data size (untimed).
	got=$(du -sb --exclude=postgresql.auto.conf --exclude=recovery.signal "$dest" | cut -f1)
	rm -rf "$dest"
	wall[$k]+="$e "
	cpu[$k]+="$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.2f", u + s}') "
	rss[$k]+="$(awk -v m="$m" 'BEGIN {printf "%.1f", m / 1024}') "
	datasz[$k]=${datasz[$set:$tool]}
	printf 'restore %d %-12s %7.2f s  %6.1f MiB/s  CPU %6.2f s  RSS %6.1f MiB  data %7.1f MiB  written %7.1f MiB\n' \
		"$r" "$tool" "$e" "$(awk -v d="$data" -v e="$e" 'BEGIN {print d / 1048576 / e}')" \
		"$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')" "$(awk -v m="$m" 'BEGIN {print m / 1024}')" \
		"$(mib "$data")" "$(mib "$got")"
}
restores() { # SET: the restores of SET's kept backups, interleaved
	local r tool c
	for tool in cellar-zstd cellar-s2; do
		c=$("$cellar" --config "$dir/cellar.conf" --format json show-backup main "${bid[$1:$tool]}" | jq -r .compression)
		[ "$c" = "${tool#cellar-}" ] || { echo "bench: backup ${bid[$1:$tool]} kept for $tool is $c" >&2; exit 1; }
	done
	echo "-- restores"
	for r in $(seq 1 "$runs"); do
		for tool in "${tools_all[@]}"; do restore "$1" "$tool" "$r"; done
	done
}
report_restore() { # SET
	local set=restore-$1 tool k w
	printf '\n%s, restore, medians of %d runs\n' "$1" "$runs"
	printf '%-12s %8s %8s %8s %13s %10s\n' tool "wall s" "MiB/s" "CPU s" "peak RSS MiB" "data MiB"
	for tool in "${tools_all[@]}"; do
		k="$set:$tool"
		w=$(echo "${wall[$k]}" | median)
		printf '%-12s %8.2f %8.1f %8.2f %13.1f %10.1f\n' "$tool" "$w" \
			"$(awk -v d="${datasz[$k]}" -v w="$w" 'BEGIN {print d / w}')" \
			"$(echo "${cpu[$k]}" | median)" "$(echo "${rss[$k]}" | median)" "${datasz[$k]}"
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

keep_last=1
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
restores "pgbench-$scale"
# The next data set's backups start from a repository without these.
for tool in cellar-zstd cellar-s2; do
	drop_backup "${bid[pgbench-$scale:$tool]}"
done

echo
echo "== mixed, $mixed_rows rows"
t0=$(date +%s)
psql -c "DROP TABLE pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers" >/dev/null
load_mixed "$mixed_rows"
settle
echo "(loaded in $(($(date +%s) - t0)) s; table: $(psql -c "SELECT pg_size_pretty(pg_total_relation_size('mixed'))"))"
for r in $(seq 1 "$runs"); do
	for tool in "${tools_all[@]}"; do run mixed "$tool" "$r"; done
done
restores mixed

if [ "$rec_mb" -gt 0 ]; then
	echo
	echo "== recovery of $rec_mb MiB of WAL archived after the mixed zstd backup, restore_command = cellar wal-fetch"
	archive_to "$cellar --config $dir/cellar.conf wal-push main %p"
	a0=$(psql -c "SELECT archived_count FROM pg_stat_archiver")
	while [ $(($(psql -c "SELECT archived_count FROM pg_stat_archiver") - a0)) -lt $((rec_mb / 16)) ]; do
		"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s 10 -q postgres >/dev/null 2>&1
		psql -c "SELECT pg_switch_wal()" >/dev/null
		while ls "$dir/pg/pg_wal/archive_status" | grep -q '\.ready$'; do sleep 0.2; done
	done
	nrec=$(($(psql -c "SELECT archived_count FROM pg_stat_archiver") - a0))
	echo "($nrec segments archived after the backup)"
	rdest=$dir/restore
	rport=$(free_port)
	for r in $(seq 1 "$runs"); do
		rm -rf "$rdest"
		mkdir -m 700 "$rdest"
		chown "$user" "$rdest"
		"$cellar" --config "$dir/cellar.conf" --quiet restore main "${bid[mixed:cellar-zstd]}" "$rdest"
		cat >>"$rdest/postgresql.auto.conf" <<CONF
port = $rport
archive_mode = off
hot_standby = off
CONF
		drop_caches
		timed_recovery "$rdest" "$dir/log/recovery-$r.log" "$nrec"
		got=$recovery_restored
		e=$(awk -v s="$recovery_seconds" 'BEGIN {printf "%.2f", s}')
		wall[recovery]+="$e "
		nseg=$got
		printf 'recovery %d %7.2f s  %6.1f MiB/s of WAL  (%d segments restored)\n' "$r" "$e" \
			"$(awk -v n="$got" -v e="$e" 'BEGIN {print n * 16 / e}')" "$got"
	done
	rm -rf "$rdest"
fi

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
report_restore "pgbench-$scale"
ratio "restore-pgbench-$scale" cellar-zstd 0.5
ratio "restore-pgbench-$scale" cellar-s2 0.5
rss_check "restore-pgbench-$scale"
report_restore mixed
ratio restore-mixed cellar-zstd 0.8
ratio restore-mixed cellar-s2 0.8
rss_check restore-mixed
if [ "$rec_mb" -gt 0 ]; then
	w=$(echo "${wall[recovery]}" | median)
	printf '\nrecovery of %d segments (%d MiB) of WAL with cellar wal-fetch, median of %d runs: %.2f s, %.1f MiB/s\n' \
		"$nseg" $((nseg * 16)) "$runs" "$w" "$(awk -v n="$nseg" -v w="$w" 'BEGIN {print n * 16 / w}')"
fi
printf '\nbenchmark took %d s\n' "$(($(date +%s) - started))"
