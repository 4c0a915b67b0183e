//! The `mongo-oidc-proxy` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mongo_oidc_proxy::config::{Config, LogFormat};

/// A TLS-terminating MongoDB proxy that signs clients in with MONGODB-OIDC.
#[derive(Parser, Debug)]
#[command(version = env!("MOP_VERSION"), about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The TOML config file to run with (see README.md for every field).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "MONGO_OIDC_PROXY_CONFIG"
    )]
    config: Option<PathBuf>,

    /// Log format; overrides the config's [log] format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,

    /// Log filter, e.g. "info" or "mongo_oidc_proxy=debug"; overrides [log] level and RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file and exit non-zero naming the first bad field.
    Check {
        /// The TOML config file to validate: its fields, the grants' passwords and the TLS files.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: journald, files and
        // log shippers get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format_override = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        None => {
            let Some(path) = cli.config else {
                eprintln!("error: --config FILE is required to run the proxy (see --help; `bash scripts/demo.sh` runs a self-contained demo)");
                return ExitCode::from(2);
            };
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            init_logging(
                format_override.unwrap_or(config.log.format),
                cli.log_level.as_deref().or(config.log.level.as_deref()),
            );
            block_on(async move {
                let running = mongo_oidc_proxy::server::start_from_file(config, &path)
                    .await
                    .map_err(|e| Failure::new(&e, &path))?;
                running.run_until_signal().await;
                Ok(())
            })
        }
    }
}

/// Why the proxy did not run: a refused config exits 2, as `check` does.
enum Failure {
    Config(String),
    Other(String),
}

impl Failure {
    fn new(e: &mongo_oidc_proxy::server::StartError, path: &std::path::Path) -> Failure {
        let text = format!("{}: {e}", path.display());
        match e {
            mongo_oidc_proxy::server::StartError::Config(_) => Failure::Config(text),
            _ => Failure::Other(text),
        }
    }
}

fn block_on(fut: impl std::future::Future<Output = Result<(), Failure>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match checked(path) {
        Ok(c) => {
            println!(
                "{}: OK ({} identity provider(s), {} grant(s), listening on {})",
                path.display(),
                c.identity_provider.len(),
                c.grant.len(),
                c.listen.address
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// Exactly what start-up refuses, short of binding ports and reaching the
/// network: the config is built into a runtime the same way.
fn checked(path: &std::path::Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let runtime =
        mongo_oidc_proxy::runtime::Runtime::build(config, None).map_err(|e| e.to_string())?;
    Ok(runtime.config)
}
