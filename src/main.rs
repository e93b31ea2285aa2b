//! The `defender-proxy` command: parses the command line, loads the config, starts logging,
//! and calls into the library. Exit codes: 0 ok, 64 bad config or usage, 1 other failure.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use defender_proxy::config::{Config, ConfigError, ProcessEnv};
use defender_proxy::telemetry::{LogFormat, init_logging};
use defender_proxy::{AppState, Listeners, RunError, check, demo};

const EXIT_USAGE: u8 = 64;

/// Local authenticating reverse proxy for the Microsoft Defender APIs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (default: $DEFENDER_PROXY_CONFIG, else ./proxy.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run {
        /// Log format: text or json (overrides [log] format).
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<String>,
    },
    /// Validate the config and print a redacted summary with the effective routes.
    Check {
        /// Also fetch one token per credential, tenant and scope.
        #[arg(long)]
        live: bool,
    },
    /// User context: sign in with a device code and store the refresh token.
    Login {
        /// The device_code credential's name in proxy.toml.
        #[arg(long)]
        credential: String,
    },
    /// Print the admin-consent link(s) of a credential (partner context: one per customer tenant).
    ConsentUrl {
        /// The credential's name in proxy.toml.
        #[arg(long)]
        credential: String,
        /// One tenant (alias or GUID) instead of all the credential names.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Probe a running proxy's admin listener (for container health checks); exit 0 when healthy.
    Health {
        /// The health URL (plain http).
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Start the built-in sandbox (Entra ID and Defender API emulator) and the proxy, offline.
    Demo {
        /// Proxy address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
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
    // config is read again, with its errors reported, when the command runs).
    let workers = match &cli.command {
        None | Some(Command::Run { .. }) => {
            Config::load(&config_path(cli.config.clone()), &ProcessEnv)
                .map_or(0, |c| c.server.workers)
        }
        Some(_) => 0,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(defender_proxy::worker_count(workers))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<ConfigError>().is_some()
                || matches!(e.downcast_ref::<RunError>(), Some(RunError::Config(_)));
            eprintln!("error: {e:#}");
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

/// `--config`, else `$DEFENDER_PROXY_CONFIG`, else `./proxy.toml`.
fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("DEFENDER_PROXY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("proxy.toml"))
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config_path(cli.config);
    match cli.command.unwrap_or(Command::Run { log_format: None }) {
        Command::Run { log_format } => run(&path, log_format).await,
        Command::Check { live } => check_config(&path, live).await,
        Command::Login { credential } => {
            let config = Config::load(&path, &ProcessEnv)?;
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
        Command::ConsentUrl { credential, tenant } => {
            let config = Config::load(&path, &ProcessEnv)?;
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
        Command::Demo { listen } => {
            init_logging(LogFormat::Text, "info");
            demo::run(&listen, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(path: &Path, log_format: Option<String>) -> anyhow::Result<ExitCode> {
    let config = Config::load(path, &ProcessEnv)?;
    let format_name = log_format.unwrap_or_else(|| config.log.format.clone());
    let format = LogFormat::parse(&format_name).ok_or_else(|| {
        ConfigError::new(
            "log.format",
            format!("{format_name:?} must be text or json"),
        )
    })?;
    init_logging(format, &config.log.level);
    let listeners = Listeners::bind(&config)
        .await
        .context("cannot bind the listeners")?;
    let admin = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(listen = %listeners.proxy.describe(), admin = ?admin, "defender-proxy serving");
    let reload = defender_proxy::reload::ReloadSource::new(path.to_path_buf());
    defender_proxy::serve(config, listeners, shutdown_signal(), Some(reload)).await?;
    Ok(ExitCode::SUCCESS)
}

async fn check_config(path: &Path, live: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path, &ProcessEnv)?;
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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
