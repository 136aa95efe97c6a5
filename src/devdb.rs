//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, a server on a free
//! loopback port, everything removed afterwards. `pgway dev` and the test suite share this code.
//!
//! PostgreSQL refuses to run as root, so when the gateway runs as root the server commands run
//! as the `postgres` OS user (through `runuser`). A watchdog process stops the server and removes
//! its directory when the process that started it exits, however it exits.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Parser;
use tracing::info;

use crate::app::config::{Cli, Command as CliCommand, Config, DevArgs};

/// The OS user that runs PostgreSQL when we are root.
const POSTGRES_OS_USER: &str = "postgres";

/// Why a throwaway cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DevDbError {
    #[error(
        "PostgreSQL server binaries not found (looked at PGWAY_TEST_PG_BIN / PGWAY_PG_BIN, PATH, \
         `pg_config --bindir` and /usr/lib/postgresql/*/bin). Install the server, for example \
         `apt-get install postgresql`, or name the directory holding initdb in PGWAY_PG_BIN"
    )]
    BinariesNotFound,
    #[error("{step} failed: {detail}")]
    Command { step: &'static str, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// A directory of its own under the system's temporary directory (mode 0700), removed with
/// everything in it when dropped. Written here rather than taken from `tempfile` (which the
/// tests use): this is the product's only temporary directory, and `tempfile` would bring
/// `rustix` into every gateway binary.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(prefix: &str) -> std::io::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        // A random name, created atomically: a name already taken is tried again.
        for _ in 0..16 {
            let path = base.join(format!("{prefix}{:016x}", rand::random::<u64>()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(ScratchDir(path)),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(error),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "no free name for a temporary directory in {}",
                base.display()
            ),
        ))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running throwaway PostgreSQL server.
#[derive(Debug)]
pub struct TempPostgres {
    bin: PathBuf,
    root: ScratchDir,
    port: u16,
    as_postgres_user: bool,
    stopped: bool,
}

/// Extra set-up of a cluster, applied after `initdb` and before the server first starts: for
/// tests that need TLS (certificate files, `ssl = on`) or their own authentication rules.
#[derive(Debug, Clone, Default)]
pub struct ClusterSetup {
    /// Files written into the data directory (name relative to it, contents), owned by the
    /// server's OS user with mode 0600, as PostgreSQL requires of a private key.
    pub files: Vec<(String, Vec<u8>)>,
    /// Lines appended to `postgresql.conf`.
    pub conf: Vec<String>,
    /// Lines put before initdb's rules in `pg_hba.conf` (the first matching rule wins).
    pub hba: Vec<String>,
}

/// Finds the directory with `initdb`, `pg_ctl` and `postgres`.
pub fn find_binaries(explicit: Option<&Path>) -> Result<PathBuf, DevDbError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = explicit {
        candidates.push(dir.to_owned());
    }
    for var in ["PGWAY_TEST_PG_BIN", "PGWAY_PG_BIN"] {
        if let Some(dir) = std::env::var_os(var) {
            candidates.push(dir.into());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        if output.status.success() {
            candidates.push(String::from_utf8_lossy(&output.stdout).trim().into());
        }
    }
    // Debian and Ubuntu keep the server out of PATH; take the newest version installed.
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, dir)| dir));
    }
    candidates
        .into_iter()
        .find(|dir| has_server(dir))
        .ok_or(DevDbError::BinariesNotFound)
}

fn is_root() -> bool {
    // The effective uid, from /proc (no unsafe libc call needed).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// A port the kernel just gave us on loopback; free again once the probe socket is closed.
fn free_port() -> Result<u16, DevDbError> {
    let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(probe.local_addr()?.port())
}

impl TempPostgres {
    /// Runs `initdb` and starts the server. Blocking: call it from `spawn_blocking` in async code.
    pub fn start(bin: Option<&Path>) -> Result<TempPostgres, DevDbError> {
        TempPostgres::start_with(bin, &ClusterSetup::default())
    }

    /// [`TempPostgres::start`] with extra set-up before the server first starts. Blocking.
    pub fn start_with(
        bin: Option<&Path>,
        setup: &ClusterSetup,
    ) -> Result<TempPostgres, DevDbError> {
        let bin = find_binaries(bin)?;
        let root = ScratchDir::new("pgway-pg-")?;
        let as_postgres_user = is_root();
        if as_postgres_user {
            let status = Command::new("chown")
                .args([POSTGRES_OS_USER, &root.path().display().to_string()])
                .status()?;
            if !status.success() {
                return Err(DevDbError::Setup(format!(
                    "cannot hand {} to the {POSTGRES_OS_USER} user (does it exist?)",
                    root.path().display()
                )));
            }
        }
        let mut db = TempPostgres {
            bin,
            root,
            port: 0,
            as_postgres_user,
            stopped: true,
        };
        db.run(
            "initdb",
            "initdb",
            [
                "-D",
                &db.data_dir(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        db.apply(setup)?;
        db.spawn_watchdog()?;
        // Another process may take the port between our probe and the server's bind: retry.
        let mut last_error = None;
        for _ in 0..5 {
            db.port = free_port()?;
            match db.pg_ctl_start() {
                Ok(()) => {
                    db.stopped = false;
                    return Ok(db);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(DevDbError::Setup("could not start".into())))
    }

    fn apply(&self, setup: &ClusterSetup) -> Result<(), DevDbError> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;

        let data = self.root.path().join("data");
        for (name, contents) in &setup.files {
            let path = data.join(name);
            std::fs::write(&path, contents)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if self.as_postgres_user {
                let status = Command::new("chown")
                    .arg(POSTGRES_OS_USER)
                    .arg(&path)
                    .status()?;
                if !status.success() {
                    return Err(DevDbError::Setup(format!(
                        "cannot hand {} to the {POSTGRES_OS_USER} user",
                        path.display()
                    )));
                }
            }
        }
        if !setup.conf.is_empty() {
            // Appending keeps the file's owner: the server (another OS user) can still read it.
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))?;
            writeln!(conf)?;
            for line in &setup.conf {
                writeln!(conf, "{line}")?;
            }
        }
        if !setup.hba.is_empty() {
            let path = data.join("pg_hba.conf");
            let existing = std::fs::read_to_string(&path)?;
            let mut rules = setup.hba.join("\n");
            rules.push('\n');
            rules.push_str(&existing);
            // Rewriting in place (truncate, not replace) keeps the owner too.
            std::fs::write(&path, rules)?;
        }
        Ok(())
    }

    fn data_dir(&self) -> String {
        self.root.path().join("data").display().to_string()
    }

    fn log_file(&self) -> String {
        self.root.path().join("postgres.log").display().to_string()
    }

    fn socket_dir(&self) -> String {
        self.root.path().display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", POSTGRES_OS_USER, "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run<I, S>(&self, step: &'static str, program: &str, args: I) -> Result<(), DevDbError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(DevDbError::Command {
                step,
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }

    fn pg_ctl_start(&self) -> Result<(), DevDbError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB",
            self.port,
            self.socket_dir()
        );
        let log = self.log_file();
        self.run(
            "starting PostgreSQL",
            "pg_ctl",
            [
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data_dir(),
                "-l",
                &log,
                "-o",
                &options,
            ],
        )
    }

    /// A process that outlives us just long enough to stop the server and delete its files
    /// when we are gone, even if we were killed.
    fn spawn_watchdog(&self) -> Result<(), DevDbError> {
        let stop = format!(
            "{runuser}{pg_ctl} stop -D {data} -m immediate",
            runuser = if self.as_postgres_user {
                format!("runuser -u {POSTGRES_OS_USER} -- ")
            } else {
                String::new()
            },
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data_dir(),
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             if [ -d {data} ]; then {stop} >/dev/null 2>&1; rm -rf {root}; fi",
            pid = std::process::id(),
            data = self.data_dir(),
            root = self.root.path().display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(())
    }

    /// The directory holding the cluster, its socket and its log; removed on drop.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// A shell command that restarts the server (fast shutdown), ready to paste, for trying what
    /// a database restart does to the gateway: as the `postgres` OS user when we are root, with
    /// the same log, and the same port and options (pg_ctl takes them from `postmaster.opts`).
    pub fn restart_command(&self) -> String {
        let pg_ctl = format!(
            "{} restart -D {} -l {} -m fast",
            self.bin.join("pg_ctl").display(),
            self.data_dir(),
            self.log_file()
        );
        if self.as_postgres_user {
            // A login shell starts in the user's home: in root's, the server warns it can't.
            format!("su - {POSTGRES_OS_USER} -c '{pg_ctl}'")
        } else {
            pg_ctl
        }
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs a SQL script with psql as the superuser, for test set-up.
    pub fn psql(&self, database: &str, sql: &str) -> Result<(), DevDbError> {
        self.run(
            "psql",
            "psql",
            [
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        )
    }

    /// Restarts the server on the same port; `mode` is pg_ctl's shutdown mode (`smart` lets
    /// running sessions finish, `fast` rolls them back, `immediate` crashes). For fault tests.
    pub fn restart(&self, mode: &str) -> Result<(), DevDbError> {
        self.run(
            "stopping PostgreSQL",
            "pg_ctl",
            ["stop", "-w", "-t", "60", "-D", &self.data_dir(), "-m", mode],
        )?;
        self.pg_ctl_start()
    }

    /// Stops the server (fast shutdown: running transactions are rolled back).
    pub fn stop(&mut self) -> Result<(), DevDbError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.run(
            "stopping PostgreSQL",
            "pg_ctl",
            ["stop", "-w", "-D", &self.data_dir(), "-m", "fast"],
        )
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
        // ScratchDir removes the directory itself after this.
    }
}

/// The password `pgway dev` gives its throwaway server's superuser, for the PostgreSQL door.
pub const DEV_PASSWORD: &str = "pgway";

/// `pgway dev`: a private PostgreSQL and the gateway in front of it, until Ctrl-C.
pub async fn run_dev(args: DevArgs) -> Result<(), Box<dyn std::error::Error>> {
    // What can be refused is refused before initdb: nothing is created for a start that fails.
    check_listen_addrs(&args)?;
    // The server's port is not known yet: any does for checking the settings.
    serve_config(&args, &dev_url(5432))?;
    let bin = args.pg_bin.clone();
    let mut postgres =
        tokio::task::spawn_blocking(move || TempPostgres::start(bin.as_deref())).await??;
    info!(
        port = postgres.port(),
        url = %postgres.url("postgres"),
        dir = %postgres.dir().display(),
        "throwaway PostgreSQL started"
    );
    info!(
        "to see what a database restart does to the gateway: {}",
        postgres.restart_command()
    );
    // The PostgreSQL door logs clients in with SCRAM against the URL's password, so the
    // throwaway server's superuser gets one (the server itself still trusts loopback).
    {
        let (client, connection) =
            tokio_postgres::connect(&postgres.url("postgres"), tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("ALTER ROLE postgres PASSWORD '{DEV_PASSWORD}'"))
            .await?;
        drop(client);
        let _ = connection.await;
    }
    let pg_addr = args.pg_addr.trim();
    if !pg_addr.is_empty() {
        info!("PostgreSQL door: psql \"postgres://postgres:{DEV_PASSWORD}@{pg_addr}/postgres\"");
    }
    let config = serve_config(&args, &dev_url(postgres.port()))?;
    let served = crate::app::run(config).await;
    tokio::task::spawn_blocking(move || postgres.stop()).await??;
    info!("throwaway PostgreSQL stopped and removed");
    Ok(served?)
}

/// The URL the gateway of `pgway dev` reaches its server at, with the password the PostgreSQL
/// door logs in with.
fn dev_url(port: u16) -> String {
    format!("postgres://postgres:{DEV_PASSWORD}@127.0.0.1:{port}/postgres")
}

/// The gateway's settings under `pgway dev`: its own database URL, listen addresses and no
/// authentication; everything else from the `PGWAY_*` environment, as `pgway serve` reads it.
fn serve_config(args: &DevArgs, url: &str) -> Result<Config, Box<dyn std::error::Error>> {
    let cli = Cli::try_parse_from([
        "pgway",
        "serve",
        "--database-url",
        url,
        "--grpc-addr",
        &args.grpc_addr.to_string(),
        "--pg-addr",
        args.pg_addr.trim(),
        // Empty turns metrics off; anything else that isn't host:port is refused by validate.
        "--metrics-addr",
        &args.metrics_addr,
        // Loopback only (checked by check_listen_addrs), for trying things out: no credentials.
        "--auth",
        "none",
    ])?;
    let Some(CliCommand::Serve(serve)) = cli.command else {
        return Err("internal: dev settings did not parse as serve".into());
    };
    Ok(serve.validate()?)
}

/// Refuses listen addresses beyond loopback (`pgway dev` has no authentication) and addresses
/// in use (a second `pgway dev`), naming the setting, by binding each before initdb runs.
fn check_listen_addrs(args: &DevArgs) -> Result<(), String> {
    let settings = [
        ("--grpc-addr", "PGWAY_GRPC_ADDR", args.grpc_addr.to_string()),
        ("--pg-addr", "PGWAY_PG_ADDR", args.pg_addr.trim().to_owned()),
        (
            "--metrics-addr",
            "PGWAY_METRICS_ADDR",
            args.metrics_addr.trim().to_owned(),
        ),
    ];
    // Held until all are checked, so that two settings naming one port are caught too.
    let mut bound = Vec::new();
    for (flag, var, addr) in settings {
        // Empty turns a listener off; what isn't host:port is refused by serve_config.
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            continue;
        };
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} ({flag} / {var}) is not on loopback: dev listens on loopback only, \
                 having no authentication"
            ));
        }
        match TcpListener::bind(addr) {
            Ok(listener) => bound.push(listener),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "{addr} ({flag} / {var}) is already in use: is another pgway dev or \
                     gateway running? Stop it, or give {flag} another address"
                ));
            }
            Err(error) => return Err(format!("cannot listen on {addr} ({flag} / {var}): {error}")),
        }
    }
    Ok(())
}
