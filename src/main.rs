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
    /// Run a config (default: the shipped proxy.toml) against the built-in sandbox, offline.
    Demo {
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
    // The main thread's event loop serves the admin listener, reloads, signals and the first
    // proxy worker; `serve` starts the other workers on threads of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
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

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let given = cli
        .config
        .or_else(|| std::env::var_os("DEFENDER_PROXY_CONFIG").map(PathBuf::from));
    let path = given.clone().unwrap_or_else(|| PathBuf::from("proxy.toml"));
    match cli.command.unwrap_or(Command::Run { log_format: None }) {
        Command::Run { log_format } => run(&path, log_format).await,
        Command::Check { live } => check_config(&path, live).await,
        Command::Login { credential } => {
            let config = Config::load(&path, &ProcessEnv)?;
            let state = AppState::new(&config)?;
            let show = |message: &str| say(message);
            match defender_proxy::login::login(&config, &credential, state.tokens.entra(), show)
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
        Command::Demo {
            listen,
            admin_listen,
            sandbox_listen,
            seed,
        } => {
            init_logging(LogFormat::Text, "info");
            let opts = demo::DemoOptions {
                config: given,
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
    tracing::info!(listen = ?listeners.proxy.local_addr().ok(), admin = ?admin, "defender-proxy serving");
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
    println!("\nlive token check:");
    let rows = check::live(&state).await;
    let mut failed = false;
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
