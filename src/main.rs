//! The `defender-proxy` command: parses the command line, loads the config, starts logging,
//! and calls into the library. Exit codes: 0 ok, 64 bad config or usage, 1 other failure.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use defender_proxy::config::{Config, ConfigError, ProcessEnv, ServerRuntime};
use defender_proxy::telemetry::{LogFormat, init_logging};
use defender_proxy::{AppState, Listeners, RunError, check, demo};

const EXIT_USAGE: u8 = 64;

/// Local authenticating reverse proxy for the Microsoft Defender APIs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file of the default command, run (default: $DEFENDER_PROXY_CONFIG, else ./proxy.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// `--config`, on the commands that read the config.
#[derive(Args)]
struct ConfigPath {
    /// Config file (default: $DEFENDER_PROXY_CONFIG, else ./proxy.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run {
        #[command(flatten)]
        config: ConfigPath,
        /// Log format: text or json (overrides [log] format).
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<String>,
    },
    /// Validate the config and print a redacted summary with the effective routes.
    Check {
        #[command(flatten)]
        config: ConfigPath,
        /// Also fetch one token per credential, tenant and scope.
        #[arg(long)]
        live: bool,
    },
    /// User context: sign in with a device code and store the refresh token.
    Login {
        #[command(flatten)]
        config: ConfigPath,
        /// The device_code credential's name in proxy.toml.
        #[arg(long)]
        credential: String,
    },
    /// Print the admin-consent link(s) of a credential (partner context: one per customer tenant).
    ConsentUrl {
        #[command(flatten)]
        config: ConfigPath,
        /// The credential's name in proxy.toml.
        #[arg(long)]
        credential: String,
        /// One tenant (an alias of the credential's tenants table, a GUID or a domain) instead
        /// of all the credential names.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Probe a running proxy's admin listener (for container health checks); exit 0 when healthy.
    Health {
        /// The health URL (plain http).
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Run a config (default: the shipped proxy.toml) against the built-in sandbox, offline.
    Demo {
        #[command(flatten)]
        config: ConfigPath,
        /// Proxy address (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Admin address (overrides server.admin_listen).
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<String>,
        /// The sandbox's address.
        #[arg(long, value_name = "ADDR", default_value = demo::SANDBOX_LISTEN)]
        sandbox_listen: String,
        /// Seed of the sandbox's data.
        #[arg(long, value_name = "N", default_value_t = 0)]
        seed: u64,
    },
    /// Run the built-in sandbox (Entra ID and Defender API emulator) alone, offline.
    Sandbox {
        /// The sandbox's address.
        #[arg(long, value_name = "ADDR", default_value = demo::SANDBOX_LISTEN)]
        listen: String,
        /// Seed of the generated data: the same seed gives the same data.
        #[arg(long, value_name = "N", default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One multi-threaded runtime serves everything; `server.workers` sets its threads (the
    // config is read again, with its errors reported, when the command runs). With
    // `server.runtime = "per-core"` the proxy listener has threads of its own, and this
    // runtime, left with the admin listener and background work, needs one.
    let server = match &cli.command {
        None => Some(None),
        Some(Command::Run { config, .. }) => Some(config.config.clone()),
        Some(_) => None,
    }
    .and_then(|own| Config::load(&config_path(own.or(cli.config.clone())), &ProcessEnv).ok())
    .map(|c| c.server);
    let workers = match &server {
        Some(s) if s.runtime == ServerRuntime::PerCore => 1,
        Some(s) => defender_proxy::worker_count(s.workers),
        None => defender_proxy::worker_count(0),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<ConfigError>().is_some()
                || matches!(e.downcast_ref::<RunError>(), Some(RunError::Config(_)));
            eprintln!("error: {e:#}");
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    };
    // Blocking work still running (a DNS lookup, a file read that never returns) gets a
    // second and is then left behind: dropping the runtime would wait for it without end.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// `--config`, else `$DEFENDER_PROXY_CONFIG`, else `./proxy.toml`.
fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("DEFENDER_PROXY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("proxy.toml"))
}

/// What `Config::load` says when there is no config file, beyond "cannot read".
const NO_CONFIG_HINT: &str = "; name another file with --config PATH or DEFENDER_PROXY_CONFIG, \
or start from the example: copy proxy.toml from the defender-proxy sources (it reads \
AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET), then run `defender-proxy check`";

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let top = cli.config;
    let path = |own: ConfigPath| config_path(own.config.or(top.clone()));
    let command = cli.command.unwrap_or(Command::Run {
        config: ConfigPath { config: None },
        log_format: None,
    });
    if let (Some(_), Command::Health { .. } | Command::Sandbox { .. }) = (&top, &command) {
        return Err(ConfigError::new("--config", "is not used by health or sandbox").into());
    }
    match command {
        Command::Run { config, log_format } => run(&path(config), log_format).await,
        Command::Check { config, live } => check_config(&path(config), live).await,
        Command::Login { config, credential } => {
            let config = load_config(&path(config))?;
            let state = AppState::new(&config)?;
            let show = |message: &str| say(message);
            match defender_proxy::login::login(
                &config,
                &credential,
                state.shared.tokens.entra(),
                show,
            )
            .await
            {
                Ok(()) => {
                    say(&format!(
                        "Signed in; the refresh token is stored for credential {credential:?}."
                    ));
                    Ok(ExitCode::SUCCESS)
                }
                Err(defender_proxy::login::LoginError::Config(e)) => Err(e.into()),
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::ConsentUrl {
            config,
            credential,
            tenant,
        } => {
            let config = load_config(&path(config))?;
            for (label, url) in check::consent_urls(&config, &credential, tenant.as_deref())? {
                println!("{label}: {url}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { url } => Ok(if defender_proxy::admin::probe(&url).await {
            ExitCode::SUCCESS
        } else {
            eprintln!("unhealthy: {url}");
            ExitCode::FAILURE
        }),
        Command::Demo {
            config,
            listen,
            admin_listen,
            sandbox_listen,
            seed,
        } => {
            init_logging(LogFormat::Text, "info");
            let opts = demo::DemoOptions {
                config: config
                    .config
                    .or(top.clone())
                    .or_else(|| std::env::var_os("DEFENDER_PROXY_CONFIG").map(PathBuf::from)),
                listen,
                admin_listen,
                sandbox_listen,
                seed,
            };
            demo::run(opts, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox { listen, seed } => {
            init_logging(LogFormat::Text, "info");
            demo::run_sandbox(&listen, seed, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `Config::load`; a file that is not there gets a hint on where a config comes from.
fn load_config(path: &Path) -> Result<Config, ConfigError> {
    Config::load(path, &ProcessEnv).map_err(|mut e| {
        if e.path.is_empty() && !path.exists() {
            e.message.push_str(NO_CONFIG_HINT);
        }
        e
    })
}

async fn run(path: &Path, log_format: Option<String>) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    let format_name = log_format.unwrap_or_else(|| config.log.format.clone());
    let format = LogFormat::parse(&format_name).ok_or_else(|| {
        ConfigError::new(
            "log.format",
            format!("{format_name:?} must be text or json"),
        )
    })?;
    // Secret files, certificates and CA roots are read before anything listens, so a config
    // that cannot serve fails here and `serving` below means fully loaded and bound. This
    // state is only a check: `serve` builds its own, and logs its warnings once, as logging
    // starts only after this.
    AppState::new(&config)?;
    init_logging(format, &config.log.level);
    let shutdown = shutdown_signal();
    let listeners = Listeners::bind(&config).await?;
    let listen = listeners.proxy.describe();
    let admin = match &listeners.admin {
        Some(l) => l.local_addr()?.to_string(),
        None => "off".to_string(),
    };
    tracing::info!(%listen, %admin, "defender-proxy serving");
    let reload = defender_proxy::reload::ReloadSource::new(path.to_path_buf());
    defender_proxy::serve(config, listeners, shutdown, Some(reload)).await?;
    Ok(ExitCode::SUCCESS)
}

async fn check_config(path: &Path, live: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    let state = AppState::new(&config)?;
    println!("{}: OK\n", path.display());
    print!("{}", check::summary(&config, &state));
    if !live {
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    if let Some(outcome) = check::live_store(&config).await {
        match outcome {
            Ok(()) => println!("\nlive rate limit store check: ok (PING answered)"),
            Err(reason) => {
                failed = true;
                println!("\nlive rate limit store check: FAILED: {reason}");
            }
        }
    }
    println!("\nlive token check:");
    let rows = check::live(&state).await;
    for row in &rows {
        let outcome = match &row.outcome {
            Ok(()) => "ok".to_string(),
            Err(reason) => {
                failed = true;
                format!("FAILED: {reason}")
            }
        };
        println!(
            "  {:<12} {:<50} {:<50} {outcome}",
            row.credential, row.tenant, row.scope
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints a line for the user; a closed stdout is not an error worth a panic.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C on Windows, which has no SIGTERM). The handlers are
/// installed when this is called, not when the future is first polled: a SIGTERM that comes
/// as soon as the port is open then drains instead of killing the process.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        async fn recv(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                _ = recv(&mut term) => {}
                _ = recv(&mut int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
