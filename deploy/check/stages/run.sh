# shellcheck shell=bash
# Stage run: the image stage's image runs with --network host against a throwaway
# PostgreSQL 15 started here on 127.0.0.1, and must: report SERVING for readiness (from the
# host and through its HEALTHCHECK, without credentials), answer a Query with a bearer token
# from a mounted podman secret and refuse one without it (Unauthenticated), answer psql through
# the PostgreSQL door (SCRAM login as the URL's user) and refuse a wrong password, serve /metrics,
# go NOT_SERVING (readiness only) while the database is down and come back, let an in-flight
# call finish on `podman stop`, and exit 0 within the grace (PGWAY_CHECK_GRACE seconds,
# default 10).

define_stage run "the image runs against a throwaway PostgreSQL: health, auth, query, metrics, outage, stop" \
    tools="podman runc initdb grpcurl" after="image"

probe() { # service -> exit code of pgway probe from the host
    "$BINARY" probe "-addr=127.0.0.1:$GRPC_PORT" "-service=$1" -connect-timeout=500ms -rpc-timeout=1s >/dev/null 2>&1
}
probe_code() { local rc=0; probe "$1" || rc=$?; echo "$rc"; }

stage_run() {
    local start serving startup_ms stop_ms token query refused refused_rc inflight inflight_rc running exit_code
    local db_password door door_refused door_rc
    local run_args runtime_args

    # -----------------------------------------------------------------------------------
    log "throwaway PostgreSQL on 127.0.0.1"
    local port
    port=$(free_port)
    GRPC_PORT=$(free_port)
    METRICS_PORT=$(free_port)
    DOOR_PORT=$(free_port)
    while [ "$(printf '%s\n' "$port" "$GRPC_PORT" "$METRICS_PORT" "$DOOR_PORT" | sort -u | wc -l)" -ne 4 ]; do
        GRPC_PORT=$(free_port)
        METRICS_PORT=$(free_port)
        DOOR_PORT=$(free_port)
    done
    pg_init "$port"
    pg_start || { cat "$PG_LOG"; die "PostgreSQL start"; }
    # The URL carries a password: the PostgreSQL door logs the URL's user in with SCRAM against
    # it (the throwaway server itself trusts loopback and never asks for it).
    db_password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "ALTER ROLE postgres PASSWORD '$db_password'" || die "ALTER ROLE postgres PASSWORD"
    ok "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"

    # -----------------------------------------------------------------------------------
    log "run the image: --network host, read-only, no capabilities, URL and tokens from podman secrets"
    on_exit cleanup_container
    # The database host is a name that only the container's /etc/hosts knows, so the static
    # binary's name resolution is exercised too.
    printf 'postgres://postgres:%s@pgway-check-db:%s/postgres' "$db_password" "$PG_PORT" | podman secret create "$SECRET" - >/dev/null
    # Callers authenticate with a bearer token: the tokens file is a podman secret mounted as a
    # file (at /run/secrets/pgway-tokens) that only the container's user can read. The read-only
    # root has no /run/secrets to mount it on, so a tiny tmpfs provides one.
    token="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
    printf '# deploy/check.sh\n%s\n' "$token" | podman secret create "$TOKENS_SECRET" - >/dev/null
    # shellcheck disable=SC2054 # the commas are inside option values
    run_args=(
        --name "$CONTAINER" --network host --add-host "pgway-check-db:127.0.0.1"
        --read-only --read-only-tmpfs=false --cap-drop all --security-opt no-new-privileges
        --user 65532:65532 --memory 192m
        --secret "$SECRET,type=env,target=PGWAY_DATABASE_URL"
        --tmpfs /run/secrets:rw,size=64k,mode=0755,nosuid,nodev,noexec
        --secret "$TOKENS_SECRET,type=mount,target=pgway-tokens,uid=65532,gid=65532,mode=0400"
        -e PGWAY_AUTH_TOKENS_FILE=/run/secrets/pgway-tokens
        -e "PGWAY_GRPC_ADDR=127.0.0.1:$GRPC_PORT" -e "PGWAY_METRICS_ADDR=127.0.0.1:$METRICS_PORT"
        # Off the default 6432 (--network host: the host's own port).
        -e "PGWAY_PG_ADDR=127.0.0.1:$DOOR_PORT"
        -e "PGWAY_SHUTDOWN_GRACE=${GRACE}s" -e PGWAY_HEALTH_INTERVAL=200ms -e PGWAY_POOL_MAX=4
        # The image's own HEALTHCHECK, which follows PGWAY_GRPC_ADDR off port 50051.
        --health-interval 2s --health-retries 3 --health-timeout 3s
    )
    # crun cannot set rlimits on some machines (this CI's among them): use runc with explicit
    # limits there, lower than the caller's hard limits.
    runtime_args=()
    if ! podman run --rm --network host "$IMAGE" --version >"$WORK/crun.out" 2>&1; then
        echo "default runtime failed ($(tail -1 "$WORK/crun.out")): using runc"
        runtime_args=(--runtime runc --ulimit "nofile=4096:4096" --ulimit "nproc=4096:4096")
        podman run --rm --network host "${runtime_args[@]}" "$IMAGE" --version >/dev/null || die "podman run with runc"
    fi

    start=$(now_ms)
    podman run -d "${runtime_args[@]}" "${run_args[@]}" "$IMAGE" >/dev/null 2>"$WORK/run.err" ||
        { cat "$WORK/run.err"; die "podman run"; }
    serving=""
    for _ in $(seq 1 300); do
        if probe pgway.v1.Database; then serving=$(now_ms); break; fi
        [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || break
        sleep 0.05
    done
    [ -n "$serving" ] || die "readiness never SERVING"
    startup_ms=$((serving - start))
    ok "readiness (pgway.v1.Database) SERVING $startup_ms ms after podman run"
    if [ "$(probe_code "")" = 0 ]; then ok "liveness (\"\") SERVING"; else bad "liveness not SERVING"; fi
    if podman exec "$CONTAINER" /pgway probe "-addr=127.0.0.1:$GRPC_PORT" -service=pgway.v1.Database; then
        ok "podman exec pgway probe: SERVING"
    else
        bad "podman exec pgway probe"
    fi
    if podman healthcheck run "$CONTAINER"; then ok "podman healthcheck run: healthy"; else bad "podman healthcheck run"; fi

    query="$(grpcurl -plaintext -max-time 10 -H "authorization: Bearer $token" \
        -d '{"sql":"SELECT 41 + 1 AS answer, current_user AS who"}' \
        "127.0.0.1:$GRPC_PORT" pgway.v1.Database/Query 2>&1)" || true
    if grep -q '"intValue": "42"' <<<"$query" && grep -q '"stringValue": "postgres"' <<<"$query"; then
        ok "grpcurl pgway.v1.Database/Query through the container: 42, postgres"
    else
        echo "$query"
        bad "grpcurl Query"
    fi
    refused="$(grpcurl -plaintext -max-time 10 -d '{"sql":"SELECT 1"}' \
        "127.0.0.1:$GRPC_PORT" pgway.v1.Database/Query 2>&1)" && refused_rc=0 || refused_rc=$?
    if [ "$refused_rc" -ne 0 ] && grep -q 'Code: Unauthenticated' <<<"$refused"; then
        ok "grpcurl Query without the token: refused, Unauthenticated"
    else
        echo "$refused"
        bad "grpcurl Query without the token was not refused with Unauthenticated"
    fi
    # The PostgreSQL door, as an application's connection string reaches it (psql's default
    # sslmode=prefer: the door without TLS declines SSL and the login goes on in the clear).
    door="$(PGPASSWORD="$db_password" PGCONNECT_TIMEOUT=10 "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$DOOR_PORT" \
        -U postgres -d postgres -c "SELECT 41 + 1, current_user" 2>&1)" || true
    if [ "$door" = "42|postgres" ]; then
        ok "psql through the PostgreSQL door (SCRAM as the URL's user): 42, postgres"
    else
        echo "$door"
        bad "psql through the PostgreSQL door"
    fi
    door_refused="$(PGPASSWORD="not-$db_password" PGCONNECT_TIMEOUT=10 "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$DOOR_PORT" \
        -U postgres -d postgres -c "SELECT 1" 2>&1)" && door_rc=0 || door_rc=$?
    if [ "$door_rc" -ne 0 ] && grep -q 'password authentication failed' <<<"$door_refused"; then
        ok "psql through the door with a wrong password: refused"
    else
        echo "$door_refused"
        bad "psql through the door with a wrong password was not refused"
    fi
    if python3 "$CHECK_DIR/metrics.py" "$METRICS_PORT"; then ok "metrics at /metrics"; else bad "metrics at /metrics"; fi

    # Readiness follows the database; liveness does not.
    pg_stop
    for _ in $(seq 1 100); do [ "$(probe_code pgway.v1.Database)" = 4 ] && break; sleep 0.1; done
    if [ "$(probe_code pgway.v1.Database)" = 4 ] && [ "$(probe_code "")" = 0 ]; then
        ok "database down: readiness NOT_SERVING (exit 4), liveness SERVING"
    else
        bad "database down: readiness $(probe_code pgway.v1.Database), liveness $(probe_code "")"
    fi
    pg_start || { cat "$PG_LOG"; die "PostgreSQL restart"; }
    for _ in $(seq 1 100); do probe pgway.v1.Database && break; sleep 0.1; done
    if probe pgway.v1.Database; then ok "database back: readiness SERVING again"; else bad "readiness after the database came back"; fi

    # -----------------------------------------------------------------------------------
    log "podman stop -t $GRACE with a call in flight"
    grpcurl -plaintext -max-time 30 -H "authorization: Bearer $token" -d '{"sql":"SELECT pg_sleep(2)::text AS slept"}' \
        "127.0.0.1:$GRPC_PORT" pgway.v1.Database/Query >"$WORK/inflight.out" 2>&1 &
    inflight=$!
    # Stop only once the call is really running in PostgreSQL: SIGTERM before the call arrives
    # would test something else (a refused call), and the loaded CI machines make that race real.
    running=0
    for _ in $(seq 1 200); do
        running=$("$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc \
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(2)%' AND state = 'active'" 2>/dev/null || echo 0)
        [ "$running" = 1 ] && break
        sleep 0.05
    done
    [ "$running" = 1 ] || bad "the call in flight never reached PostgreSQL"
    start=$(now_ms)
    podman stop -t "$GRACE" "$CONTAINER" >/dev/null
    stop_ms=$(( $(now_ms) - start ))
    inflight_rc=0
    wait "$inflight" || inflight_rc=$?
    exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")
    if [ "$exit_code" = 0 ] && [ "$stop_ms" -lt $((GRACE * 1000)) ]; then
        ok "stopped in $stop_ms ms (grace ${GRACE}s), exit code 0"
    else
        bad "stop took $stop_ms ms (grace ${GRACE}s), exit code $exit_code"
    fi
    if [ "$inflight_rc" = 0 ] && grep -q '"stringValue"' "$WORK/inflight.out"; then
        ok "the call in flight at SIGTERM completed"
    else
        cat "$WORK/inflight.out"
        bad "the call in flight at SIGTERM failed"
    fi
    podman logs "$CONTAINER" >"$WORK/container.log" 2>&1 || true
    if grep -q '"signal":"SIGTERM"' "$WORK/container.log" && grep -q '"message":"stopped"' "$WORK/container.log"; then
        ok "pgway logged the SIGTERM and its clean stop"
    else
        bad "no SIGTERM/stopped log lines"
    fi

    echo
    echo "image: $IMAGE_MB MB; start-up to readiness SERVING: $startup_ms ms; podman stop with a 2 s call in flight: $stop_ms ms"
}
