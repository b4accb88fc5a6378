#!/usr/bin/env bash
# Encryption benchmark, as `make bench` runs it (issue 17): the same runs
# with encryption = none and encryption = age, interleaved, to local
# repositories (file://, zstd, parallel = 4), the page cache dropped before
# each run, medians of ROUNDS:
#
#   backup    `cellar backup main --fast` of pgbench at scale 100 (BENCH_SCALE)
#   restore   `cellar restore main ID DEST` of that backup (as root)
#   wal-push  `cellar wal-push main SEG` of SEGMENTS (32) segments that a
#             pgbench run wrote, one after another, into a new repository
#   wal-fetch `cellar wal-fetch main SEG DEST` of the same segments
#
# and the ratio of each, age to none (target <= 1.1).
#
#   testdata/bench-encrypt.sh TOOLS_DIR CELLAR_BIN [ROUNDS]
set -euo pipefail
rounds=${3:-3}
scale=${BENCH_SCALE:-100}
segments=${SEGMENTS:-32}
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
started=$(date +%s)

# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/bench-lib.sh"
bench_setup cellar-bench-encrypt
cp "$2" "$dir/cellar"
cellar=$dir/cellar
unset CELLAR_COMPRESSION CELLAR_REPOSITORY CELLAR_CONFIG CELLAR_ENCRYPTION

pgport=$(free_port)
mkdir -p "$dir/lock" "$dir/keys" "$dir/segs" "$dir/time"
chown "$user" "$dir" "$dir/lock" "$dir/keys" "$dir/time"
"${as[@]}" "$cellar" keygen --output "$dir/keys/restore.key" >"$dir/keys/pub" 2>/dev/null
pub=$(sed -n 's/^Public key: //p' "$dir/keys/pub")

# conf NAME REPO [EXTRA]: a configuration of server main.
conf() {
	{
		echo "[cellar]"
		echo "repository = file://$2"
		echo "compression = zstd"
		echo "parallel = 4"
		echo "lock_directory = $dir/lock"
		printf '%b' "${3:-}"
		echo "[main]"
		echo "pgdata = $dir/pg"
		echo "conninfo = host=$dir port=$pgport user=$user dbname=postgres"
	} >"$dir/$1.conf"
	chmod 644 "$dir/$1.conf"
}
age="encryption = age\nencryption_recipients = $pub\nencryption_identity_file = $dir/keys/restore.key\n"

init_pg "$pgport" <<CONF
max_wal_size = '8GB'
checkpoint_timeout = '1h'
autovacuum = off
archive_mode = on
archive_command = '/bin/true'
CONF
psql() { "${as[@]}" "$pgbin/psql" -h "$dir" -p "$pgport" -qAtX -v ON_ERROR_STOP=1 "$@" postgres; }
"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -i -s "$scale" -q postgres >/dev/null 2>&1
psql -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null

# Segments of real WAL, written by pgbench, copied out of pg_wal (whose
# segments are kept: a checkpoint an hour, max_wal_size 8GB).
start=$(psql -c "SELECT pg_current_wal_lsn()")
until [ "$(psql -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start') > $(((segments + 2) * 16777216))")" = t ]; do
	"${as[@]}" "$pgbin/pgbench" -h "$dir" -p "$pgport" -c 4 -j 2 -T 10 -n postgres >/dev/null 2>&1
done
psql -c "SELECT pg_walfile_name('$start'::pg_lsn + i * 16777216::numeric) FROM generate_series(1, $segments) i" |
	while read -r s; do cp "$dir/pg/pg_wal/$s" "$dir/segs/"; done
chown -R "$user" "$dir/segs"
echo "$(find "$dir/segs" -type f | wc -l) segments of WAL; pgbench scale $scale, $(du -sm "$dir/pg/base" | cut -f1) MiB in base/"

declare -A wall
push_all() { for s in "$dir"/segs/*; do "$cellar" --config "$1" wal-push main "$s" || return 1; done; }
fetch_all() { for s in "$dir"/segs/*; do "$cellar" --config "$1" wal-fetch main "$(basename "$s")" "$2/$(basename "$s")" || return 1; done; }

for r in $(seq 1 "$rounds"); do
	order=(none age)
	[ $((r % 2)) = 0 ] && order=(age none)
	for mode in "${order[@]}"; do
		repo=$dir/repo-$mode-$r
		mkdir -p "$repo" && chown "$user" "$repo"
		extra=""
		[ "$mode" = age ] && extra=$age
		conf "$mode-$r" "$repo" "$extra"
		c=$dir/$mode-$r.conf
		timed_wall "wal-push $mode" runuser -u "$user" -- bash -c "$(declare -f push_all); dir=$dir cellar=$cellar push_all $c"
		out=$dir/fetched-$mode && rm -rf "$out" && mkdir -p "$out" && chown "$user" "$out"
		timed_wall "wal-fetch $mode" runuser -u "$user" -- bash -c "$(declare -f fetch_all); dir=$dir cellar=$cellar fetch_all $c $out"
		cmp -s "$out/$(basename "$(ls "$dir"/segs/* | head -1)")" "$(ls "$dir"/segs/* | head -1)" || { echo "bench: wal-fetch $mode fetched other bytes" >&2; exit 1; }
		rm -rf "$out"
		# The backup waits for its WAL: archive to this repository now.
		psql -c "ALTER SYSTEM SET archive_command = '$cellar --config $c wal-push main %p'" -c "SELECT pg_reload_conf()" >/dev/null
		timed_wall "backup $mode" "${as[@]}" "$cellar" --config "$c" backup main --fast --quiet
		id=$("${as[@]}" "$cellar" --config "$c" list-backups main --format json | jq -r '.[0].id')
		dest=$dir/restore-$mode
		rm -rf "$dest"
		timed_wall "restore $mode" "$cellar" --config "$c" restore main "$id" "$dest"
		rm -rf "$dest" "$repo"
	done
done

echo
echo "medians of $rounds rounds, encryption = none against age"
for what in backup restore wal-push wal-fetch; do
	n=$(echo "${wall[$what none]}" | median)
	a=$(echo "${wall[$what age]}" | median)
	awk -v w="$what" -v n="$n" -v a="$a" 'BEGIN {r = a / n; printf "%-10s none %7.2f s  age %7.2f s  ratio %.2f (target <= 1.1: %s)\n", w, n, a, r, (r <= 1.1) ? "met" : "MISSED"}'
done
printf '\nbenchmark took %d s\n' "$(($(date +%s) - started))"
