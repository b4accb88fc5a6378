#!/usr/bin/env bash
# Starts the object-store servers Cellar's tests run against (MinIO for S3,
# fake-gcs-server for GCS, Azurite for Azure Blob) on 127.0.0.1 and free
# ports, in a temporary directory, runs the given command with their
# addresses in the environment, then stops them and removes the directory,
# whether the command passed or not. The exit status is the command's.
#
#   testdata/servers.sh TOOLS_DIR COMMAND [ARGS...]
#
# TOOLS_DIR holds bin/minio, bin/fake-gcs-server and node/ (Azurite), as installed by
# `make tools`. CELLARTEST_SERVERS (default "s3 gcs azure") selects a subset
# for a developer's quick run; `make test` always starts all three.
set -euo pipefail

tools=$1
shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/cellar-servers.XXXXXX")
pids=()

cleanup() {
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}

# wait_http URL NAME LOG: wait up to 60 s for URL to answer.
wait_http() {
	local i
	for i in $(seq 1 240); do
		if ! kill -0 "${pids[-1]}" 2>/dev/null; then
			break
		fi
		if curl -s -o /dev/null --max-time 2 "$1"; then
			return 0
		fi
		sleep 0.25
	done
	echo "servers.sh: $2 did not start; its log follows" >&2
	cat "$3" >&2 || true
	exit 1
}

servers=" ${CELLARTEST_SERVERS:-s3 gcs azure} "

if [[ $servers == *" s3 "* ]]; then
s3_port=$(free_port)
mkdir -p "$dir/minio-data" "$dir/empty-certs"
MINIO_ROOT_USER=minioadmin MINIO_ROOT_PASSWORD=minioadmin MINIO_BROWSER=off MINIO_UPDATE=off \
	"$tools/bin/minio" server "$dir/minio-data" --quiet --address "127.0.0.1:$s3_port" \
	--console-address "127.0.0.1:$(free_port)" --certs-dir "$dir/empty-certs" >"$dir/minio.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$s3_port/minio/health/live" MinIO "$dir/minio.log"
export CELLARTEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
export CELLARTEST_S3_ACCESS_KEY=minioadmin
export CELLARTEST_S3_SECRET_KEY=minioadmin
echo "servers.sh: MinIO at $CELLARTEST_S3_ENDPOINT" >&2
fi

if [[ $servers == *" gcs "* ]]; then
gcs_port=$(free_port)
mkdir -p "$dir/gcs-data"
"$tools/bin/fake-gcs-server" -host 127.0.0.1 -port "$gcs_port" -scheme http -backend filesystem \
	-filesystem-root "$dir/gcs-data" -external-url "http://127.0.0.1:$gcs_port" \
	-public-host "127.0.0.1:$gcs_port" -log-level error >"$dir/gcs.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$gcs_port/storage/v1/b" fake-gcs-server "$dir/gcs.log"
export CELLARTEST_GCS_HOST="127.0.0.1:$gcs_port"
echo "servers.sh: fake-gcs-server at $CELLARTEST_GCS_HOST" >&2
fi

if [[ $servers == *" azure "* ]]; then
az_port=$(free_port)
mkdir -p "$dir/azurite-data"
"$tools/node/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$az_port" \
	--location "$dir/azurite-data" --disableTelemetry --skipApiVersionCheck --loose >"$dir/azurite.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$az_port/devstoreaccount1?comp=list" Azurite "$dir/azurite.log"
export CELLARTEST_AZURE_ENDPOINT="http://127.0.0.1:$az_port/devstoreaccount1"
export CELLARTEST_AZURE_ACCOUNT=devstoreaccount1
export CELLARTEST_AZURE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
echo "servers.sh: Azurite at $CELLARTEST_AZURE_ENDPOINT" >&2
fi

status=0
"$@" || status=$?
exit "$status"
