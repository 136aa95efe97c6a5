# Shared by bench/compare.sh and bench/callgrind.sh (sourced, not run).

# Waits until the gateway started as process $3 answers `pgway probe` on $2 for the Database
# service, polling every 0.2 s at most $4 times; fails at once if the process ends. $1 is the
# pgway binary (its `probe` subcommand is the client).
wait_for_gateway() {
    local pgway=$1 addr=$2 pid=$3 tries=$4
    for _ in $(seq "$tries"); do
        if "$pgway" probe -addr="$addr" -service=pgway.v1.Database >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
