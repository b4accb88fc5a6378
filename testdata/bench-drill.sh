#!/usr/bin/env bash
# Restore drill benchmark, as `make bench` runs it (issue 18): pgbench at
# scale 100 (BENCH_SCALE) backed up with `cellar backup main --fast` to a
# file:// repository (zstd, parallel = 4), then pgbench -c 4 -j 2 -T
# REPLAY_SECONDS (30) whose WAL is archived, so that recovery has WAL to
# replay. Interleaved, the page cache dropped before each run, medians of
# ROUNDS:
#
#   restore   `cellar restore main ID DEST` alone
#   drill     `cellar drill main`: restore into drill_directory, start
#             PostgreSQL, replay to the end of WAL, select count(*) from
#             pgbench_history; its file-restore, replay and total times
#             as it records them, and its wall time
#
#   testdata/bench-drill.sh TOOLS_DIR CELLAR_BIN [ROUNDS]
set -euo pipefail
rounds=${3:-3}
scale=${BENCH_SCALE:-100}
replay=${REPLAY_SECONDS:-30}
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
started=$(date +%s)

# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/bench-lib.sh"
bench_setup cellar-bench-drill
cp "$2" "$dir/cellar"
cellar=$dir/cellar
unset CELLAR_COMPRESSION CELLAR_REPOSITORY CELLAR_CONFIG CELLAR_ENCRYPTION

pgport=$(free_port)
mkdir -p "$dir/lock" "$dir/repo" "$dir/drills" "$dir/time"
chown "$user" "$dir" "$dir/lock" "$dir/repo" "$dir/drills" "$dir/time"
conf=$dir/cellar.conf
cat >"$conf" <<CONF
[cellar]
repository = file://$dir/repo
compression = zstd
parallel = 4
lock_directory = $dir/lock
drill_directory = $dir/drills
drill_query = select count(*) from pgbench_history
[main]
pgdata = $dir/pg
conninfo = host=$dir port=$pgport user=$user dbname=postgres
CONF
chmod 644 "$conf"

init_pg "$pgport" <<CONF
max_wal_size = '8GB'
checkpoint_timeout = '1h'
autovacuum = off
archive_mode = on
archive_command = '$cellar --config $conf wal-push main %p'
CONF
psql() { "${as[@]}" "$pgbin/psql" -h "$dir" -p "$pgport" -qAtX -v ON_ERROR_STOP=1 "$@" postgres; }
"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s "$scale" -q postgres >/dev/null 2>&1
psql -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
"${as[@]}" "$cellar" --config "$conf" backup main --fast --quiet
id=$("${as[@]}" "$cellar" --config "$conf" list-backups main --format json | jq -r '.[0].id')
"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -c 4 -j 2 -T "$replay" -n postgres >/dev/null 2>&1
rows=$(psql -c "SELECT count(*) FROM pgbench_history")
seg=$(psql -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql -c "SELECT pg_switch_wal()" >/dev/null
until [ "$(psql -c "SELECT last_archived_wal >= '$seg' FROM pg_stat_archiver")" = t ]; do sleep 0.2; done
echo "pgbench scale $scale, $(du -sm "$dir/pg/base" | cut -f1) MiB in base/; backup $id; then ${replay} s of pgbench: $rows rows in pgbench_history, WAL to $seg"

declare -A wall

for r in $(seq 1 "$rounds"); do
	order=(restore drill)
	[ $((r % 2)) = 0 ] && order=(drill restore)
	for what in "${order[@]}"; do
		if [ "$what" = restore ]; then
			dest=$dir/restored
			rm -rf "$dest"
			timed_wall restore "${as[@]}" "$cellar" --config "$conf" restore main "$id" "$dest"
			rm -rf "$dest"
			continue
		fi
		timed_wall drill "${as[@]}" "$cellar" --config "$conf" --format json --quiet drill main
		d=$(cat "$dir/time/log")
		[ "$(jq -r .answer <<<"$d")" = "$rows" ] || { echo "bench: the drill's answer is not $rows: $d" >&2; exit 1; }
		for f in restore_seconds replay_seconds total_seconds; do
			wall[drill $f]+="$(jq -r ".$f" <<<"$d") "
		done
		printf '  drill: file restore %.2f s, replay %.2f s, total %.2f s\n' "$(jq .restore_seconds <<<"$d")" "$(jq .replay_seconds <<<"$d")" "$(jq .total_seconds <<<"$d")"
	done
done

echo
echo "medians of $rounds rounds, pgbench scale $scale with ${replay} s of pgbench WAL to replay"
printf '%-28s %7.2f s\n' "restore alone" "$(echo "${wall[restore]}" | median)"
printf '%-28s %7.2f s\n' "drill: file restore" "$(echo "${wall[drill restore_seconds]}" | median)"
printf '%-28s %7.2f s\n' "drill: start and WAL replay" "$(echo "${wall[drill replay_seconds]}" | median)"
printf '%-28s %7.2f s\n' "drill: total (recorded)" "$(echo "${wall[drill total_seconds]}" | median)"
printf '%-28s %7.2f s\n' "drill: wall time" "$(echo "${wall[drill]}" | median)"
printf '\nbenchmark took %d s\n' "$(($(date +%s) - started))"
