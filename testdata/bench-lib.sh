# Shared setup of the benchmark scripts and the demo; source it after
# `set -euo pipefail`.
#
#   bench_setup PREFIX   $user and $as (as root: PostgreSQL and cellar run as
#                        the ordinary user cellartest, PostgreSQL refusing
#                        root), $dir (a new directory, 0755, removed at exit
#                        with PostgreSQL at $dir/pg stopped and every pid in
#                        $pids killed), $pgbin
#   free_port            a TCP port on 127.0.0.1 that nothing listens on
#   start_minio TOOLS [tls]
#                        MinIO under $dir/minio (over TLS with a throwaway
#                        certificate in $dir/certs), its port in $s3port, its
#                        URL in $s3url, a bucket "bench"
#   init_pg PORT         initdb $dir/pg and start it on PORT and the socket
#                        directory $dir, with the postgresql.conf lines read
#                        from standard input added
#   pgbackrest_conf FILE pgBackRest's configuration of the comparison (stanza
#                        bench: $dir/pg on $pgport; zst level 1, process-max
#                        2, start-fast), the repository lines read from
#                        standard input
#   load_mixed ROWS      the "mixed" table of ROWS rows (bigint id, timestamp,
#                        int amount, md5 text note, a short status), through
#                        the calling script's psql function
#   median, drop_caches, timed_wall KEY CMD..., timed_recovery DATA LOG WANT:
#                        below

pgbin=/usr/lib/postgresql/15/bin

bench_setup() {
	user=$(id -un)
	as=()
	if [ "$(id -u)" = 0 ]; then
		user=cellartest
		id "$user" >/dev/null 2>&1 || useradd -m "$user"
		as=(runuser -u "$user" --)
	fi
	dir=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
	chmod 755 "$dir"
	pids=()
	trap bench_cleanup EXIT
}

bench_cleanup() {
	"${as[@]}" "$pgbin/pg_ctl" -D "$dir/pg" stop -m immediate >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}

free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
}

start_minio() {
	local tools=$1 scheme=http certs=()
	mkdir -p "$dir/minio"
	if [ "${2:-}" = tls ]; then
		mkdir -p "$dir/certs"
		openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
			-addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
			-keyout "$dir/certs/private.key" -out "$dir/certs/public.crt" >/dev/null 2>&1
		chmod 644 "$dir/certs/public.crt"
		scheme=https
		certs=(--certs-dir "$dir/certs")
	fi
	s3port=$(free_port)
	s3url=$scheme://127.0.0.1:$s3port
	MINIO_ROOT_USER=minioadmin MINIO_ROOT_PASSWORD=minioadmin MINIO_BROWSER=off MINIO_UPDATE=off \
		"$tools/bin/minio" server "$dir/minio" --quiet --address "127.0.0.1:$s3port" \
		--console-address "127.0.0.1:$(free_port)" "${certs[@]}" >"$dir/minio.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 1 120); do
		curl -skf -o /dev/null "$s3url/minio/health/live" && break
		sleep 0.25
	done
	curl -sk --fail --aws-sigv4 "aws:amz:us-east-1:s3" --user minioadmin:minioadmin -X PUT "$s3url/bench" >/dev/null
}

init_pg() {
	chown "$user" "$dir"
	"${as[@]}" "$pgbin/initdb" -D "$dir/pg" -A trust -E UTF8 --locale=C >/dev/null
	{
		echo "port = $1"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$dir'"
		cat
	} >>"$dir/pg/postgresql.conf"
	"${as[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start >/dev/null
}

pgbackrest_conf() {
	{
		echo "[global]"
		cat
		cat <<CONF
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
	} >"$1"
}

load_mixed() {
	psql -c "CREATE TABLE mixed AS SELECT g::bigint AS id, now() - g * interval '1 second' AS ts,
		(g % 1000)::int AS amount, md5(g::text) AS note,
		(ARRAY['new','paid','shipped','cancelled'])[1 + g % 4] AS status
		FROM generate_series(1, $1) g" >/dev/null
}

# median of the numbers on standard input (separated by spaces).
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# drop_caches flushes and drops the page cache where we may (as root).
drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
}

# timed_wall KEY CMD... runs CMD once, the page cache dropped before it,
# its output in $dir/time/log; it adds the wall time to ${wall[KEY]} (the
# caller declares -A wall) and prints it. A failed run ends the benchmark.
timed_wall() {
	local k=$1 tf="$dir/time/t" e
	shift
	drop_caches
	if ! /usr/bin/time -f '%e' -o "$tf" "$@" >"$dir/time/log" 2>&1; then
		echo "bench: $k failed: $*" >&2
		cat "$dir/time/log" >&2
		exit 1
	fi
	e=$(tail -1 "$tf")
	wall[$k]+="$e "
	printf '%-22s %8.2f s\n' "$k" "$e"
}

# timed_recovery DATA LOG WANT starts PostgreSQL on DATA (ready for
# recovery) with its log in LOG, waits until recovery has ended (pg_ctl -w
# counts a server in recovery as started), stops it, and sets
# recovery_seconds and recovery_restored (segments restored, at least WANT
# or it fails). A FATAL or PANIC other than the end of the archive, a
# shutdown, or ten minutes, fails.
timed_recovery() {
	local data=$1 log=$2 want=$3 t0 t1
	t0=$(date +%s.%N)
	"${as[@]}" "$pgbin/pg_ctl" -D "$data" -l "$log" -W start >/dev/null
	until grep -q 'database system is ready to accept connections' "$log" 2>/dev/null; do
		if { grep 'FATAL\|PANIC\|database system is shut down' "$log" 2>/dev/null | grep -qv 'could not restore file'; } ||
			[ "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {print (b - a > 600)}')" = 1 ]; then
			echo "bench: recovery on $data failed:" >&2
			tail -20 "$log" >&2
			"${as[@]}" "$pgbin/pg_ctl" -D "$data" stop -m immediate >/dev/null 2>&1 || true
			exit 1
		fi
		sleep 0.02
	done
	t1=$(date +%s.%N)
	"${as[@]}" "$pgbin/pg_ctl" -D "$data" stop -m immediate >/dev/null
	recovery_restored=$(grep -c 'restored log file "[0-9A-F]\{24\}"' "$log" || true)
	if [ "$recovery_restored" -lt "$want" ]; then
		echo "bench: recovery on $data restored $recovery_restored segments, want at least $want:" >&2
		tail -20 "$log" >&2
		exit 1
	fi
	recovery_seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
}
