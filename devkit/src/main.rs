//! `mongo-oidc-proxy-demo`: the proxy on an embedded default (development
//! certificates, the development identity provider, a SecantusDB backend),
//! and development certificates for trying the proxy out. Kept out of the
//! production `mongo-oidc-proxy` binary, which cannot issue tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mongo_oidc_proxy_devkit::{demo, devcerts};

/// The mongo-oidc-proxy demo: development certificates, a development
/// identity provider, a SecantusDB backend (unless --backend-uri is given)
/// and the proxy, all on loopback.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    demo: demo::DemoArgs,

    /// Log filter, e.g. "info" or "mongo_oidc_proxy=debug"; overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a development CA, server and client certificates into a folder.
    DevCerts {
        /// Folder to write ca.pem, server.pem, server.key, client.pem, client.key into.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out: PathBuf,
        /// Extra host names or addresses for the server certificate (localhost, 127.0.0.1 and ::1 are always included).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::DevCerts { out, hosts }) => dev_certs(&out, &hosts),
        None => run_demo(cli.demo, cli.log_level.as_deref()),
    }
}

fn run_demo(args: demo::DemoArgs, level: Option<&str>) -> ExitCode {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
    match runtime.block_on(demo::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dev_certs(out: &std::path::Path, hosts: &[String]) -> ExitCode {
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    match devcerts::generate(out, &hosts) {
        Ok(paths) => {
            println!(
                "wrote development certificates to {} (CA: {})",
                out.display(),
                paths.ca_cert.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
