#!/usr/bin/env bash
# Many-files benchmark, side by side with pgBackRest, as `make bench` runs
# it: a PostgreSQL 15 cluster of BENCH_MANY_FILES (50,000) tables, each
# `(id int PRIMARY KEY, v text)` with one row, vacuumed and checkpointed,
# so that each has a heap, its free space and visibility maps, the primary
# key index and a TOAST table and index: about 6 files a table, 300,000
# files for 50,000 tables (BENCH_MANY_FILES=250000 makes a million and a
# half). Both tools write to a local repository under the bench directory:
# Cellar to a file:// repository (zstd at the codec's default level,
# parallel = 4, the settings of bench-backup.sh), pgBackRest to
# repo1-path (zst level 1, process-max = 2, start-fast). The cluster
# archives its WAL to both (cellar wal-push, then pgbackrest
# archive-push), since both wait for the backup's WAL.
#
# RUNS rounds, interleaved: `cellar backup main --fast`, `pgbackrest backup
# --type=full`, `cellar restore main latest DEST`, `pgbackrest restore
# --pg1-path=DEST` (each restores the backup it has just taken into a new
# empty directory, removed after the run, untimed), `cellar verify main
# latest` (pgBackRest has no counterpart). The page cache is dropped
# before each command; each is timed by /usr/bin/time (wall, peak RSS of
# its largest process). Every backup is kept. Then `cellar list-backups
# main`, with RUNS backups of all these files in the repository, timed the
# same way, and run once more under strace to count the bytes it reads
# from the repository (the return values of read and pread64 on files
# under it), in all and per backup. PostgreSQL, cellar and pgBackRest run
# as the ordinary user (cellartest when the script runs as root).
#
#   testdata/bench-manyfiles.sh TOOLS_DIR CELLAR_BIN [RUNS]
#
# TOOLS_DIR is not used (no MinIO here); it keeps the other benchmarks'
# arguments. BENCH_MANY_FILES (50000) is the number of tables. On the
# 2-core development VM, RUNS = 1 at 50,000 tables takes about 13 minutes,
# 2 of them making the tables.
set -euo pipefail
runs=${3:-3}
ntables=${BENCH_MANY_FILES:-50000}
batch=2500 # CREATE TABLEs per transaction
jobs=4     # psql sessions creating tables at once
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace; }
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
started=$(date +%s)

. "$(dirname "$0")/bench-lib.sh"
bench_setup cellar-bench-manyfiles

# A copy of the binary: PostgreSQL's archiver runs it during the whole
# benchmark, and a rebuild of the original must not change it midway.
cp "$2" "$dir/cellar"
cellar=$dir/cellar
unset CELLAR_COMPRESSION CELLAR_REPOSITORY CELLAR_CONFIG

pgport=$(free_port)
repo=$dir/repo-cellar
mkdir -p "$dir/lock" "$dir/time" "$dir/log" "$repo" "$dir/repo-pgbackrest" "$dir/pgbr-lock" "$dir/pgbr-spool" "$dir/pgbr-log"
{
	echo "[cellar]"
	echo "repository = file://$repo"
	echo "compression = zstd"
	echo "parallel = 4"
	echo "lock_directory = $dir/lock"
	echo "[main]"
	echo "pgdata = $dir/pg"
	echo "conninfo = host=$dir port=$pgport user=$user dbname=postgres"
} >"$dir/cellar.conf"
pgbackrest_conf "$dir/pgbackrest.conf" <<CONF
repo1-path=$dir/repo-pgbackrest
CONF
chmod 644 "$dir/cellar.conf" "$dir/pgbackrest.conf"
chown "$user" "$dir" "$dir/lock" "$dir/time" "$dir/log" "$repo" "$dir/repo-pgbackrest" \
	"$dir/pgbr-lock" "$dir/pgbr-spool" "$dir/pgbr-log"

# max_locks_per_transaction: a transaction creating a batch of tables holds
# about 4 locks a table (heap, index, TOAST table and index). No
# autovacuum: the cluster does not change between the runs.
init_pg "$pgport" <<CONF
max_locks_per_transaction = 10000
max_wal_size = '8GB'
checkpoint_timeout = '1h'
autovacuum = off
archive_mode = on
archive_command = '/bin/true'
CONF
psql() { "${as[@]}" "$pgbin/psql" -h "$dir" -p "$pgport" -qAtX -v ON_ERROR_STOP=1 "$@" postgres; }
"${as[@]}" pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench stanza-create >/dev/null

echo "== $ntables tables"
t0=$(date +%s)
# No fsync while the tables are made: a CHECKPOINT then writes them, and a
# sync (one for the whole filesystem, not one fsync a file) makes them
# durable before fsync is back on.
psql -c "ALTER SYSTEM SET fsync = off" -c "SELECT pg_reload_conf()" >/dev/null
# create_tables JOB: the batches JOB, JOB + jobs, ... each one transaction,
# then one VACUUM command for the batch's tables, which makes their free
# space and visibility maps. One command a batch: each VACUUM command reads
# all of pg_class at its end, so one a table (as vacuumdb -j sends them)
# takes time growing as the square of the number of tables: with vacuumdb,
# making 50,000 tables took 18 minutes here, against under 2.
create_tables() {
	local b from to
	for ((b = $1; b * batch < ntables; b += jobs)); do
		from=$((b * batch + 1))
		to=$(((b + 1) * batch))
		[ "$to" -le "$ntables" ] || to=$ntables
		awk -v a="$from" -v b="$to" 'BEGIN {
			print "BEGIN;"
			for (i = a; i <= b; i++)
				printf "CREATE TABLE t%05d (id int PRIMARY KEY, v text);\nINSERT INTO t%05d VALUES (1, '\''row %d'\'');\n", i, i, i
			print "COMMIT;"
			printf "VACUUM"
			for (i = a; i <= b; i++) printf "%s t%05d", i == a ? "" : ",", i
			print ";"
		}' | psql -f - >/dev/null
	done
}
cpids=()
for ((j = 0; j < jobs; j++)); do
	create_tables "$j" &
	cpids+=($!)
done
for p in "${cpids[@]}"; do wait "$p"; done
t1=$(date +%s)
psql -c "CHECKPOINT" >/dev/null
sync
psql -c "ALTER SYSTEM RESET fsync" -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 1 100); do [ "$(psql -c "SHOW fsync")" = on ] && break; sleep 0.1; done
[ "$(psql -c "SHOW fsync")" = on ] || { echo "bench: fsync is not back on" >&2; exit 1; }
nfiles=$(find "$dir/pg" -type f | wc -l)
pgsize=$(du -sb "$dir/pg" | cut -f1)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "(created in $((t1 - t0)) s, checkpointed and synced in $(($(date +%s) - t1)) s: $nfiles files, $(mib "$pgsize") MiB in $dir/pg)"

# WAL to both repositories from here on; both tools check their setup.
psql -c "ALTER SYSTEM SET archive_command = '$cellar --config $dir/cellar.conf wal-push main %p && pgbackrest --config=$dir/pgbackrest.conf --stanza=bench archive-push %p'" \
	-c "SELECT pg_reload_conf()" >/dev/null
"${as[@]}" pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench check
if ! out=$("${as[@]}" "$cellar" --config "$dir/cellar.conf" check main 2>&1); then
	echo "bench: cellar check main failed:" >&2
	echo "$out" >&2
	exit 1
fi

declare -A wall rss
# timed KEY R CMD...: one run of CMD as the cluster's user, the page cache
# dropped before it, its wall time and peak RSS added to KEY's.
timed() {
	local k=$1 r=$2 tf="$dir/time/$1-$2" log="$dir/log/$1-$2.log" e m
	shift 2
	drop_caches
	if ! "${as[@]}" /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$log" 2>&1; then
		echo "bench: $k run $r failed: $*" >&2
		cat "$log" "$tf" >&2
		echo "-- last lines of the PostgreSQL log:" >&2
		tail -20 "$dir/pg.log" >&2
		exit 1
	fi
	read -r e m <"$tf"
	m=$(awk -v m="$m" 'BEGIN {printf "%.1f", m / 1024}')
	wall[$k]+="$e "
	rss[$k]+="$m "
	printf 'run %d %-20s %8.2f s  peak RSS %7.1f MiB' "$r" "$k" "$e" "$m"
}
# fresh DEST: an empty directory of the cluster's user.
fresh() {
	rm -rf "$1"
	mkdir -m 700 "$1"
	chown "$user" "$1"
}
# restored DEST: the files a restore wrote (untimed), then DEST removed.
restored() {
	printf '  %d files\n' "$(find "$1" -type f | wc -l)"
	rm -rf "$1"
}

cconf=(--config "$dir/cellar.conf")
pconf=(--config="$dir/pgbackrest.conf" --stanza=bench)
for r in $(seq 1 "$runs"); do
	timed cellar:backup "$r" "$cellar" "${cconf[@]}" --quiet backup main --fast
	js=$("${as[@]}" "$cellar" "${cconf[@]}" --format json show-backup main latest)
	printf '  data %s MiB, stored %s MiB\n' "$(mib "$(jq -r .data_size <<<"$js")")" "$(mib "$(jq -r .stored_size <<<"$js")")"
	timed pgbackrest:backup "$r" pgbackrest "${pconf[@]}" --type=full backup
	js=$("${as[@]}" pgbackrest "${pconf[@]}" info --output=json)
	printf '  data %s MiB, stored %s MiB\n' "$(mib "$(jq -r '.[0].backup[-1].info.size' <<<"$js")")" \
		"$(mib "$(jq -r '.[0].backup[-1].info.repository.delta' <<<"$js")")"
	fresh "$dir/restore"
	timed cellar:restore "$r" "$cellar" "${cconf[@]}" --quiet restore main latest "$dir/restore"
	restored "$dir/restore"
	fresh "$dir/restore"
	timed pgbackrest:restore "$r" pgbackrest "${pconf[@]}" --pg1-path="$dir/restore" restore
	restored "$dir/restore"
	timed cellar:verify "$r" "$cellar" "${cconf[@]}" --quiet verify main latest
	echo
done

# list-backups over the RUNS backups: timed, then once under strace for
# the bytes it reads from the repository.
nbackups=$("${as[@]}" "$cellar" "${cconf[@]}" --format json list-backups main | jq length)
timed cellar:list-backups 1 "$cellar" "${cconf[@]}" list-backups main
echo
mkdir "$dir/strace"
drop_caches
strace -f -qq -y -e trace=read,pread64 -o "$dir/strace/out" -- \
	"${as[@]}" "$cellar" "${cconf[@]}" list-backups main >"$dir/log/list-backups-strace.log" 2>&1 || {
	echo "bench: cellar list-backups under strace failed:" >&2
	cat "$dir/log/list-backups-strace.log" >&2
	exit 1
}
# Lines are "PID read(FD</path>, ...) = N", or a call split in two by
# another thread's, "PID read(FD</path>, <unfinished ...>" and later
# "PID <... read resumed>..., N) = N": the path is remembered by PID.
read_bytes=$(awk -v repo="$(realpath "$repo")/" '
	function count(path, line) {
		if (index(path, repo) == 1 && match(line, /= [0-9]+$/))
			total += substr(line, RSTART + 2)
	}
	{
		pid = $1
		if (match($0, /(read|pread64)\([0-9]+</)) {
			rest = substr($0, RSTART + RLENGTH)
			path = substr(rest, 1, index(rest, ">") - 1)
			if ($0 ~ /<unfinished \.\.\.>$/) { pending[pid] = path; next }
			count(path, $0)
		} else if ($0 ~ /<\.\.\. (read|pread64) resumed>/ && (pid in pending)) {
			count(pending[pid], $0)
			delete pending[pid]
		}
	}
	END { printf "%d", total }' "$dir/strace/out")

# report CMD: cellar's and pgBackRest's medians of CMD.
report() {
	local c=$1 pw=- pr=-
	if [ -n "${wall[pgbackrest:$c]:-}" ]; then
		pw=$(echo "${wall[pgbackrest:$c]}" | median)
		pr=$(echo "${rss[pgbackrest:$c]}" | median)
	fi
	printf '| %-12s | %13s | %19s | %17s | %23s |\n' "$c" "$(echo "${wall[cellar:$c]}" | median)" \
		"$(echo "${rss[cellar:$c]}" | median)" "$pw" "$pr"
}
echo "== results: $ntables tables, $nfiles files, $(mib "$pgsize") MiB; medians of $runs runs"
printf '| %-12s | %13s | %19s | %17s | %23s |\n' command "cellar wall s" "cellar peak RSS MiB" \
	"pgbackrest wall s" "pgbackrest peak RSS MiB"
printf '| %-12s | %13s | %19s | %17s | %23s |\n' --- --- --- --- ---
report backup
report restore
report verify
printf 'cellar list-backups, %d backups in the repository: %s s, peak RSS %s MiB, %d bytes read from the repository (%d per backup)\n' \
	"$nbackups" "${wall[cellar:list-backups]% }" "${rss[cellar:list-backups]% }" "$read_bytes" $((read_bytes / nbackups))
printf '\nbenchmark took %d s\n' "$(($(date +%s) - started))"
