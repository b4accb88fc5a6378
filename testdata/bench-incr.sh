#!/usr/bin/env bash
# Incremental backup benchmark, side by side with pgBackRest, as `make
# bench` runs it (issue 16). A PostgreSQL 15 cluster, two data sets in
# turn: pgbench at scale 100 (about 1.5 GB), then the "mixed" table of
# bench-backup.sh (6 million rows, bench-lib.sh load_mixed) with a primary
# key on id, which its workload's updates need. Both tools write to a local
# repository under the bench directory: Cellar to a file:// repository
# (zstd, parallel = 4, as bench-backup.sh), pgBackRest to repo1-path (zst
# level 1, process-max = 2, start-fast). The cluster archives its WAL to
# both (cellar wal-push, then pgbackrest archive-push), since both wait for
# their backup's WAL. Autovacuum is off, so that nothing but the workload
# changes the data between one tool's backup and the other's.
#
# ROUNDS rounds per data set, each: `cellar backup main --fast --type full`
# and `pgbackrest backup --type=full`; one change, the workload run once:
# `pgbench -c 4 -j 2 -T 60` (BENCH_SECONDS), on the mixed set with a script
# of its own (an UPDATE of amount and status of a row drawn near the end of
# the table, as recent orders are the ones that change, by
# random_exponential with parameter 10, and an INSERT of a new row), then
# an untimed CHECKPOINT with the archive caught up, so that both tools see
# the same files; then `cellar backup main --fast --type incr` (checked to be
# an incremental on that round's full) and `pgbackrest backup --type=incr`
# of that same change. The tools alternate in going first (pgBackRest in odd
# rounds). Every backup is kept.
#
# Each backup runs as the cluster's user with the page cache dropped before
# it, timed by /usr/bin/time: wall time; peak RSS (its largest process);
# bytes read, /usr/bin/time's %I (ru_inblock, in 512-byte blocks: the
# kernel's read_bytes I/O accounting of the process and every child it
# waited for, pgBackRest's local processes included, obtained by wait4 when
# the process has exited, so nothing is missed by sampling /proc/PID/io
# before the exit): what the process tree made the kernel read from disk,
# the data directory but also the repository (the parent's manifest and
# block maps) and the program itself (printed once, "starting the binary");
# bytes stored, the growth of the sum of the sizes of the files of the
# tool's backup directories (cellar: main/base and main/backups;
# pgBackRest: backup/bench, with backup.info and its history), measured
# before and after the backup; the per-run line also shows what each tool
# says it stored (cellar show-backup stored_size, pgBackRest info
# repository.delta).
#
# Then restores (BENCH_CHAIN, 3 incrementals; 0 skips this part): the last
# round's cellar full and incremental start a chain, BENCH_CHAIN - 1 more
# changes each followed by `cellar backup --type incr` make a chain of a
# full and BENCH_CHAIN incrementals (its chain_length checked), then right
# after the last incremental, with no writes in between, `cellar backup
# --type full` of the same data. `cellar restore main ID DEST` of the last
# incremental (the chain) and of that full, ROUNDS times each, alternating,
# as root into a new empty directory (the files go to the cluster's user),
# page cache dropped before each, timed as above. The two restores of the
# last round are compared (diff -rq, untimed) and the files that differ
# listed.
#
#   testdata/bench-incr.sh TOOLS_DIR CELLAR_BIN [ROUNDS]
#
# TOOLS_DIR is not used (no MinIO here); it keeps the other benchmarks'
# arguments. Smaller for a trial: BENCH_SCALE (pgbench scale, 100),
# BENCH_MIXED_ROWS (6000000; 0 skips the mixed set), BENCH_SECONDS (60),
# BENCH_CHAIN (3).
set -euo pipefail
rounds=${3:-3}
scale=${BENCH_SCALE:-100}
mixed_rows=${BENCH_MIXED_ROWS:-6000000}
secs=${BENCH_SECONDS:-60}
chain=${BENCH_CHAIN:-3}
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
started=$(date +%s)

# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/bench-lib.sh"
bench_setup cellar-bench-incr

# A copy of the binary: PostgreSQL's archiver runs it during the whole
# benchmark, and a rebuild of the original must not change it midway.
cp "$2" "$dir/cellar"
cellar=$dir/cellar
unset CELLAR_COMPRESSION CELLAR_REPOSITORY CELLAR_CONFIG CELLAR_BACKUP_TYPE

pgport=$(free_port)
repo=$dir/repo-cellar
prepo=$dir/repo-pgbackrest
mkdir -p "$dir/lock" "$dir/time" "$dir/log" "$repo" "$prepo" "$dir/pgbr-lock" "$dir/pgbr-spool" "$dir/pgbr-log"
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
repo1-path=$prepo
CONF
chmod 644 "$dir/cellar.conf" "$dir/pgbackrest.conf"
chown "$user" "$dir" "$dir/lock" "$dir/time" "$dir/log" "$repo" "$prepo" \
	"$dir/pgbr-lock" "$dir/pgbr-spool" "$dir/pgbr-log"

init_pg "$pgport" <<CONF
max_wal_size = '8GB'
checkpoint_timeout = '1h'
autovacuum = off
archive_mode = on
archive_command = '/bin/true'
CONF
psql() { "${as[@]}" "$pgbin/psql" -h "$dir" -p "$pgport" -qAtX -v ON_ERROR_STOP=1 "$@" postgres; }
cconf=(--config "$dir/cellar.conf")
pconf=(--config="$dir/pgbackrest.conf" --stanza=bench)
"${as[@]}" pgbackrest "${pconf[@]}" stanza-create >/dev/null
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

# archive_command: /bin/true while a data set loads (its WAL is not the
# benchmark's), both tools from then on.
archive_to() {
	psql -c "ALTER SYSTEM SET archive_command = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}
archive_both="$cellar --config $dir/cellar.conf wal-push main %p && pgbackrest --config=$dir/pgbackrest.conf --stanza=bench archive-push %p"
# archived: wait until PostgreSQL has archived every finished segment.
archived() {
	local n=0
	while compgen -G "$dir/pg/pg_wal/archive_status/*.ready" >/dev/null; do
		n=$((n + 1))
		if [ "$n" -gt 3000 ]; then
			echo "bench: WAL not archived after 10 minutes:" >&2
			psql -c "SELECT * FROM pg_stat_archiver" >&2
			tail -20 "$dir/pg.log" >&2
			exit 1
		fi
		sleep 0.2
	done
}
# settle: a data set loaded, vacuumed and checkpointed, its WAL passed
# over; then archiving to both tools, each checking its setup.
settle() {
	psql -c "VACUUM ANALYZE" -c "CHECKPOINT" -c "SELECT pg_switch_wal()" >/dev/null
	archived
	archive_to "$archive_both"
	"${as[@]}" pgbackrest "${pconf[@]}" check
	if ! out=$("${as[@]}" "$cellar" "${cconf[@]}" check main 2>&1); then
		echo "bench: cellar check main failed:" >&2
		echo "$out" >&2
		exit 1
	fi
}

# The reads of starting each program with the page cache dropped, which
# every figure of bytes read includes.
boot_read() {
	local tf=$dir/time/boot
	drop_caches
	"${as[@]}" /usr/bin/time -f '%I' -o "$tf" "$@" >/dev/null 2>&1 || true
	mib $(($(tail -1 "$tf") * 512))
}
boot="starting the program reads (page cache dropped): cellar $(boot_read "$cellar" --version) MiB, pgbackrest $(boot_read pgbackrest version) MiB"
echo "$boot"

declare -A wall rss readb stored said bid
# timed KEY R CMD...: one run of CMD (as the user in timed_as, none: root),
# the page cache dropped before it; its wall time, peak RSS and bytes read
# added to KEY's, and left in t_wall, t_rss (MiB), t_read (bytes).
timed_as=()
timed() {
	local k=$1 r=$2 tf="$dir/time/${1//:/-}-$2" log="$dir/log/${1//:/-}-$2.log" e m i
	shift 2
	drop_caches
	if ! "${timed_as[@]}" /usr/bin/time -f '%e %M %I' -o "$tf" "$@" >"$log" 2>&1; then
		echo "bench: $k run $r failed: $*" >&2
		cat "$log" "$tf" >&2
		echo "-- last lines of the PostgreSQL log:" >&2
		tail -20 "$dir/pg.log" >&2
		exit 1
	fi
	read -r e m i <"$tf"
	t_wall=$e
	t_rss=$(awk -v m="$m" 'BEGIN {printf "%.1f", m / 1024}')
	t_read=$((i * 512))
	wall[$k]+="$e "
	rss[$k]+="$t_rss "
	readb[$k]+="$(mib "$t_read") "
}

# stored_bytes TOOL: the size of the files of TOOL's backups.
stored_bytes() {
	local d
	case $1 in
	cellar) d=("$repo/main/base" "$repo/main/backups") ;;
	pgbackrest) d=("$prepo/backup/bench") ;;
	esac
	{ find "${d[@]}" -type f -printf '%s\n' 2>/dev/null || true; } | awk '{s += $1} END {printf "%d", s}'
}

# backup SET TOOL TYPE R [KEY]: one timed backup of TYPE (full, incr) by
# TOOL, checked to be of that type (a cellar incremental on SET's last full
# or, in the chain, on the last backup), its results under KEY
# (SET:TOOL:TYPE).
backup() {
	local set=$1 tool=$2 type=$3 r=$4 k=${5:-$1:$2:$3} before after js got data st parent want
	local cmd
	case $tool in
	cellar) cmd=("$cellar" "${cconf[@]}" --quiet backup main --fast --type "$type") ;;
	pgbackrest) cmd=(pgbackrest "${pconf[@]}" --type="$type" backup) ;;
	esac
	before=$(stored_bytes "$tool")
	timed_as=("${as[@]}")
	timed "$k" "$r" "${cmd[@]}"
	after=$(stored_bytes "$tool")
	if [ "$tool" = cellar ]; then
		js=$("${as[@]}" "$cellar" "${cconf[@]}" --format json show-backup main latest)
		got=$(jq -r '.type // "full"' <<<"$js")
		parent=$(jq -r '.parent // ""' <<<"$js")
		data=$(jq -r .data_size <<<"$js")
		st=$(jq -r .stored_size <<<"$js")
		want=${bid[last]:-}
		if [ "$got" != "$type" ] || { [ "$type" = incr ] && [ "$parent" != "$want" ]; }; then
			echo "bench: cellar backup --type $type made a backup of type $got on '$parent' (want $type on '$want'):" >&2
			echo "$js" >&2
			cat "$dir/log/${k//:/-}-$r.log" >&2
			exit 1
		fi
		bid[last]=$(jq -r .id <<<"$js")
		bid[$k]=${bid[last]}
		bid[chain]=$(jq -r '.chain_length // 1' <<<"$js")
	else
		js=$("${as[@]}" pgbackrest "${pconf[@]}" info --output=json)
		got=$(jq -r '.[0].backup[-1].type' <<<"$js")
		data=$(jq -r '.[0].backup[-1].info.size' <<<"$js")
		st=$(jq -r '.[0].backup[-1].info.repository.delta' <<<"$js")
		if [ "$got" != "$type" ]; then
			echo "bench: pgbackrest backup --type=$type made a backup of type $got" >&2
			exit 1
		fi
	fi
	stored[$k]+="$(mib $((after - before))) "
	said[$k]+="$(mib "$st") "
	printf '%s %d %-10s %-13s %8.2f s  RSS %6.1f MiB  read %8.1f MiB  stored %8.1f MiB (says %.1f)  data %8.1f MiB\n' \
		"$([[ $k == *:chain-* ]] && echo chain || echo round)" "$r" "$tool" "${k##*:}" "$t_wall" "$t_rss" "$(mib "$t_read")" "$(mib $((after - before)))" \
		"$(mib "$st")" "$(mib "$data")"
}

# change SET: the workload, once, then a checkpoint with the archive caught
# up (untimed), so that the backups that follow see the same files.
change() {
	local set=$1 out lsn0 lsn1 tps
	archived
	lsn0=$(psql -c "SELECT pg_current_wal_lsn()")
	if [ "$set" = mixed ]; then
		out=$("${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -c 4 -j 2 -T "$secs" -n \
			-D rows="$mixed_rows" -f "$dir/mixed.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
	else
		out=$("${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -c 4 -j 2 -T "$secs" postgres 2>&1) ||
			{ echo "$out" >&2; exit 1; }
	fi
	lsn1=$(psql -c "SELECT pg_current_wal_lsn()")
	tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -1)
	psql -c "CHECKPOINT" -c "SELECT pg_switch_wal()" >/dev/null
	archived
	printf 'change: pgbench -c 4 -j 2 -T %d: %.0f tps, %s MiB of WAL\n' "$secs" "$tps" \
		"$(mib "$(psql -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")")"
}

# round SET R: the full backups, the change, the incrementals.
round() {
	local set=$1 r=$2 order tool
	if ((r % 2)); then order=(pgbackrest cellar); else order=(cellar pgbackrest); fi
	for tool in "${order[@]}"; do backup "$set" "$tool" full "$r"; done
	bid[$set:full]=${bid[$set:cellar:full]}
	change "$set"
	for tool in "${order[@]}"; do
		[ "$tool" = cellar ] && bid[last]=${bid[$set:full]}
		backup "$set" "$tool" incr "$r"
	done
}

# restore SET WHAT R: one timed restore, as root, of the chain's last
# incremental (WHAT = chain) or of the full of the same data (full) into a
# new empty directory of the cluster's user, removed after the run but in
# the last round.
restore() {
	local set=$1 what=$2 r=$3 dest=$dir/restore-$2 k="$1:cellar:restore-$2" w
	rm -rf "$dest"
	mkdir -m 700 "$dest"
	chown "$user" "$dest"
	timed_as=()
	timed "$k" "$r" "$cellar" "${cconf[@]}" --quiet restore main "${bid[$set:restore-$what]}" "$dest"
	w=$(du -sb --exclude=postgresql.auto.conf --exclude=recovery.signal "$dest" | cut -f1)
	printf 'restore %d %-14s %8.2f s  RSS %6.1f MiB  read %8.1f MiB  written %8.1f MiB\n' \
		"$r" "$what" "$t_wall" "$t_rss" "$(mib "$t_read")" "$(mib "$w")"
	[ "$r" = "$rounds" ] || rm -rf "$dest"
}

# chain SET: BENCH_CHAIN incrementals on the last round's full, a full of
# the same data, then the restores of both.
chain_restores() {
	local set=$1 i r js
	echo "-- a chain of a full and $chain incrementals, then a full of the same data; restores"
	for ((i = 2; i <= chain; i++)); do
		change "$set"
		backup "$set" cellar incr "$i" "$set:cellar:chain-incr"
	done
	if [ "${bid[chain]}" != $((chain + 1)) ]; then
		echo "bench: backup ${bid[last]} has a chain of ${bid[chain]}, want $((chain + 1))" >&2
		exit 1
	fi
	bid[$set:restore-chain]=${bid[last]}
	backup "$set" cellar full 1 "$set:cellar:chain-full"
	bid[$set:restore-full]=${bid[last]}
	js=$("${as[@]}" "$cellar" "${cconf[@]}" --format json list-backups main)
	jq -r --argjson n $((chain + 2)) 'sort_by(.begin_time) | .[-$n:][] |
		"  \(.id) \(.type // "full") on \(.parent // "-"), chain of \(.chain_length // 1), stored \(.stored_size) bytes"' <<<"$js"
	for r in $(seq 1 "$rounds"); do
		if ((r % 2)); then
			restore "$set" chain "$r"
			restore "$set" full "$r"
		else
			restore "$set" full "$r"
			restore "$set" chain "$r"
		fi
	done
	local diffs
	diffs=$(diff -rq "$dir/restore-chain" "$dir/restore-full" 2>&1 || true)
	if [ -z "$diffs" ]; then
		echo "the two restores are identical"
	else
		echo "files that differ between the two restores (expected: backup_label, global/pg_control and the like):"
		head -20 <<<"$diffs" | sed "s|$dir/||g; s/^/  /"
	fi
	rm -rf "$dir/restore-chain" "$dir/restore-full"
}

# report SET: the table of medians, then the targets.
row() { # SET TOOL RUN LABEL
	local k="$1:$2:$3"
	[ -n "${wall[$k]:-}" ] || return 0
	printf '%-11s %-22s %8.2f %13.1f %10.1f %11s\n' "$2" "$4" "$(echo "${wall[$k]}" | median)" \
		"$(echo "${rss[$k]}" | median)" "$(echo "${readb[$k]}" | median)" \
		"$([ -n "${stored[$k]:-}" ] && printf '%.1f' "$(echo "${stored[$k]}" | median)" || echo -)"
}
target() { # LABEL A B MAX
	local r
	r=$(awk -v a="$2" -v b="$3" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
	printf '%s: %.2f (target <= %s: %s)\n' "$1" "$r" "$4" "$(awk -v r="$r" -v t="$4" 'BEGIN {print (r <= t) ? "met" : "MISSED"}')"
}
report() {
	local set=$1 m
	printf '\n%s, medians of %d rounds\n' "$set" "$rounds"
	printf '%-11s %-22s %8s %13s %10s %11s\n' tool run "wall s" "peak RSS MiB" "read MiB" "stored MiB"
	row "$set" cellar full "full"
	row "$set" pgbackrest full "full"
	row "$set" cellar incr "incr"
	row "$set" pgbackrest incr "incr"
	row "$set" cellar restore-full "restore full"
	row "$set" cellar restore-chain "restore full+$chain incr"
	target "cellar incr / pgbackrest incr, wall time" "$(echo "${wall[$set:cellar:incr]}" | median)" \
		"$(echo "${wall[$set:pgbackrest:incr]}" | median)" 0.5
	target "cellar incr / pgbackrest incr, stored" "$(echo "${stored[$set:cellar:incr]}" | median)" \
		"$(echo "${stored[$set:pgbackrest:incr]}" | median)" 0.5
	m=$(echo "${rss[$set:cellar:incr]} ${rss[$set:cellar:chain-incr]:-}" | tr ' ' '\n' | grep . | sort -n | tail -1)
	printf 'cellar incr peak RSS, largest of the runs: %.1f MiB (target < 150 MiB: %s)\n' "$m" \
		"$(awk -v m="$m" 'BEGIN {print (m < 150) ? "met" : "MISSED"}')"
	if [ -n "${wall[$set:cellar:restore-chain]:-}" ]; then
		target "cellar restore full+$chain incr / restore full, wall time" \
			"$(echo "${wall[$set:cellar:restore-chain]}" | median)" \
			"$(echo "${wall[$set:cellar:restore-full]}" | median)" 1.3
		m=$(echo "${rss[$set:cellar:restore-chain]}" | tr ' ' '\n' | grep . | sort -n | tail -1)
		printf 'cellar restore full+%d incr peak RSS, largest of the runs: %.1f MiB (target < 150 MiB: %s)\n' \
			"$chain" "$m" "$(awk -v m="$m" 'BEGIN {print (m < 150) ? "met" : "MISSED"}')"
	fi
}

# bench SET: ROUNDS rounds and the chain's restores of a loaded data set.
bench() {
	local r
	for r in $(seq 1 "$rounds"); do round "$1" "$r"; done
	[ "$chain" -lt 1 ] || chain_restores "$1"
}

sets=("pgbench-$scale")
echo "== pgbench scale $scale"
t0=$(date +%s)
"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s "$scale" -q postgres >/dev/null 2>&1
settle
echo "(loaded in $(($(date +%s) - t0)) s; $(mib "$(du -sb "$dir/pg/base" | cut -f1)") MiB in base/)"
bench "pgbench-$scale"

if [ "$mixed_rows" -gt 0 ]; then
	echo
	echo "== mixed, $mixed_rows rows and a primary key"
	# Cellar's backups of the first set go, newest first (an incremental
	# before its parent), untimed: the WAL of the load is not archived, and
	# cellar check would find it missing after them.
	for id in $("${as[@]}" "$cellar" "${cconf[@]}" --format json list-backups main | jq -r 'sort_by(.begin_time) | reverse | .[].id'); do
		"${as[@]}" "$cellar" "${cconf[@]}" --quiet delete main "$id"
	done
	archive_to /bin/true
	t0=$(date +%s)
	psql -c "DROP TABLE pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers" >/dev/null
	load_mixed "$mixed_rows"
	psql -c "ALTER TABLE mixed ADD PRIMARY KEY (id)" -c "CREATE SEQUENCE mixed_new START $((mixed_rows + 1))" >/dev/null
	cat >"$dir/mixed.sql" <<'SQL'
\set id :rows - random_exponential(0, :rows - 1, 10.0)
UPDATE mixed SET amount = amount + 1, status = 'paid' WHERE id = :id;
INSERT INTO mixed VALUES (nextval('mixed_new'), now(), :id % 1000, md5(cast(:id AS text)), 'new');
SQL
	chmod 644 "$dir/mixed.sql"
	settle
	echo "(loaded in $(($(date +%s) - t0)) s; table and index: $(psql -c "SELECT pg_size_pretty(pg_total_relation_size('mixed'))"))"
	sets+=(mixed)
	bench mixed
fi

echo
echo "== results"
echo "read MiB: read from disk by the process tree (/usr/bin/time %I), the program's own start included; $boot"
for s in "${sets[@]}"; do report "$s"; done
printf '\nbenchmark took %d s\n' "$(($(date +%s) - started))"
