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
    /// Validate a config file and exit non-zero naming the first bad field;
    /// with --sign-in, also say what the proxy would make of a token.
    Check {
        /// The TOML config file to validate: its fields, the grants' passwords and the TLS files.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Verify the access token in this file ("-": standard input) against
        /// the configured identity providers (loading their keys over the
        /// network) and print its user, roles and grant, or why it is
        /// refused. Exit 0: signed in with a grant; 1: refused; 2: bad config.
        #[arg(long, value_name = "TOKEN_FILE")]
        sign_in: Option<PathBuf>,
        /// Decide the grant for a client connecting from this address
        /// (grants with client_source); without it, every grant that could
        /// apply is listed in order.
        #[arg(long, value_name = "IP", requires = "sign_in")]
        client_address: Option<std::net::IpAddr>,
    },
    /// Get an access token from a configured identity provider and print it
    /// (only the token) on standard output: the device flow (a person signs
    /// in in a browser; the URL and code go to standard error) or the
    /// client-credentials grant. Exit 0: a token; 1: the IdP refused or
    /// failed; 2: bad config or arguments.
    Token {
        /// The proxy's TOML config file: the identity provider's issuer, client_id and request_scopes.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Which identity provider: its issuer or its auth_name_prefix (needed when the config has several).
        #[arg(long, value_name = "ISSUER_OR_PREFIX")]
        idp: Option<String>,
        /// Use the client-credentials grant (a machine client) instead of the device flow.
        #[arg(long, requires = "client_secret_env")]
        client_credentials: bool,
        /// The environment variable holding the client secret (never pass secrets as arguments).
        #[arg(long, value_name = "VAR", requires = "client_credentials")]
        client_secret_env: Option<String>,
        /// The OAuth client id to ask as, instead of the identity provider's client_id.
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
        /// A scope to request instead of the identity provider's request_scopes (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
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
        // The current span already carries conn and peer; the span list
        // would repeat them on every line.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .init(),
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
        Some(Command::Check {
            config,
            sign_in: None,
            ..
        }) => check(&config),
        Some(Command::Check {
            config,
            sign_in: Some(token_file),
            client_address,
        }) => check_sign_in(&config, &token_file, client_address),
        Some(Command::Token {
            config,
            idp,
            client_credentials,
            client_secret_env,
            client_id,
            scopes,
        }) => token(
            &config,
            TokenArgs {
                idp,
                client_credentials,
                client_secret_env,
                client_id,
                scopes,
            },
        ),
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
                let mut running = mongo_oidc_proxy::server::start_from_file(config, &path)
                    .await
                    .map_err(|e| Failure::new(&e, &path))?;
                running.release_freed_memory(release_freed_memory);
                running.run_until_signal().await;
                Ok(())
            })
        }
    }
}

/// glibc keeps pages freed in the middle of its heaps resident; this hands
/// them back (see the library's `memory` module for when it runs).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() -> bool {
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it
    // walks it, so it is safe beside any other allocation on any thread.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl's, jemalloc, macOS's) return memory themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() -> bool {
    false
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

/// `check --sign-in`: the config is checked as `check` does, then the token
/// goes through the proxy's own verification and grant decision.
fn check_sign_in(
    path: &std::path::Path,
    token_file: &std::path::Path,
    client: Option<std::net::IpAddr>,
) -> ExitCode {
    use mongo_oidc_proxy::selftest::sign_in::{self, Verdict};
    let token = match read_token(token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime =
        match Config::load(path).and_then(|c| mongo_oidc_proxy::runtime::Runtime::build(c, None)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
    let c = &runtime.config;
    println!(
        "{}: OK ({} identity provider(s), {} grant(s), listening on {})",
        path.display(),
        c.identity_provider.len(),
        c.grant.len(),
        c.listen.address
    );
    let verdict = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(sign_in::check(&runtime, &token, client, &mut |w| {
            eprintln!("{w}")
        })),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match verdict {
        Verdict::Granted(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Verdict::Refused(why) => {
            eprintln!("{why}");
            ExitCode::from(1)
        }
    }
}

/// The token in a file or on standard input ("-"), surrounding whitespace removed.
fn read_token(file: &std::path::Path) -> Result<String, String> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", file.display()));
    }
    Ok(token.to_owned())
}

struct TokenArgs {
    idp: Option<String>,
    client_credentials: bool,
    client_secret_env: Option<String>,
    client_id: Option<String>,
    scopes: Vec<String>,
}

/// `token`: only the access token goes to stdout, so that
/// `mongo-oidc-proxy token ... > token.jwt` is the whole recipe.
fn token(path: &std::path::Path, args: TokenArgs) -> ExitCode {
    use mongo_oidc_proxy::selftest::token::{self, Grant, TokenError};
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let grant = match (args.client_credentials, args.client_secret_env) {
        (true, Some(var)) => match std::env::var(&var) {
            Ok(secret) if !secret.is_empty() => Grant::ClientCredentials { secret },
            _ => {
                eprintln!(
                    "error: --client-secret-env: environment variable {var} is not set or empty; export the client's secret in it"
                );
                return ExitCode::from(2);
            }
        },
        _ => Grant::Device,
    };
    let request = match token::request_for(
        &config.identity_provider,
        args.idp.as_deref(),
        args.client_id.as_deref(),
        &args.scopes,
        grant,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let obtained = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(token::obtain(&request, &mut |line| eprintln!("{line}"))),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match obtained {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(TokenError::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(TokenError::Refused(e)) => {
            eprintln!(
                "error: {} ({}): {e}",
                request.issuer,
                describe_grant(&request.grant)
            );
            ExitCode::from(1)
        }
    }
}

fn describe_grant(g: &mongo_oidc_proxy::selftest::token::Grant) -> &'static str {
    match g {
        mongo_oidc_proxy::selftest::token::Grant::Device => "device flow",
        mongo_oidc_proxy::selftest::token::Grant::ClientCredentials { .. } => "client credentials",
    }
}
