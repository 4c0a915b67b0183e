//! `mongo-oidc-proxy-demo`: a proxy you can sign in to, with nothing else
//! installed but the test tools: development certificates, the built-in
//! development identity provider, a SecantusDB backend started here (unless
//! `--backend-uri` names one), all on loopback.

pub mod secantus;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::devidp::{DevIdp, DevIdpOptions};
use mongo_oidc_proxy::config::Config;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:27017")]
    pub listen: SocketAddr,
    /// Folder for certificates, tokens, the generated config and backend data.
    #[arg(long, default_value = "demo-state")]
    pub state_dir: PathBuf,
    /// Use this backend instead of starting SecantusDB; it must have the users
    /// given by --backend-user/--backend-password-env.
    #[arg(long, value_name = "URI", requires_all = ["backend_user", "backend_password_env"])]
    pub backend_uri: Option<String>,
    /// Backend user for the demo's read-write grant (with --backend-uri).
    #[arg(long, value_name = "USER")]
    pub backend_user: Option<String>,
    /// Environment variable holding that user's password (with --backend-uri).
    #[arg(long, value_name = "VAR")]
    pub backend_password_env: Option<String>,
    /// The SecantusDB daemon to start (default: $MOP_SECANTUSD, .tools/venv/bin/secantusd-py, or PATH).
    #[arg(long, value_name = "PATH")]
    pub secantusd: Option<PathBuf>,
}

const AUDIENCE: &str = "mongo-oidc-proxy-demo";
const PREFIX: &str = "demo";

/// A backend user the demo's grants refer to.
struct DemoGrant {
    role: &'static str,
    backend_user: String,
    password_file: PathBuf,
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    let state = absolute(&args.state_dir)?;
    std::fs::create_dir_all(&state)
        .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    println!(
        "demo: writing development certificates to {}",
        state.join("certs").display()
    );
    let certs = crate::devcerts::generate(&state.join("certs"), &[]).map_err(|e| e.to_string())?;

    println!("demo: starting the development identity provider");
    let idp = DevIdp::start(
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        DevIdpOptions {
            audience: AUDIENCE.into(),
            default_claims: serde_json::json!({ "groups": ["readWrite"] }),
            ..DevIdpOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;

    let (backend_uri, grants, _backend) = match &args.backend_uri {
        Some(uri) => (uri.clone(), external_backend_grants(&args, &state)?, None),
        None => {
            let (running, grants) = start_secantus(&args, &state).await?;
            (running.uri.clone(), grants, Some(running))
        }
    };

    let config_path = state.join("proxy.toml");
    std::fs::write(
        &config_path,
        demo_config(
            &args,
            &certs,
            idp.issuer(),
            &idp.options().client_id,
            &backend_uri,
            &grants,
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let config =
        Config::load(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let running = mongo_oidc_proxy::server::start(config)
        .await
        .map_err(|e| e.to_string())?;

    let alice = state.join("alice.jwt");
    let bob = state.join("bob.jwt");
    write_secret(&alice, &idp.token("alice", &["readWrite"], 3600))?;
    write_secret(&bob, &idp.token("bob", &["read"], 3600))?;
    print_instructions(
        running.local_addr,
        running.metrics_addr,
        &certs.ca_cert,
        idp.issuer(),
        &alice,
        &bob,
        &config_path,
        &grants,
        args.backend_uri.as_deref(),
    );
    running.run_until_signal().await;
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn random_password() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

async fn start_secantus(
    args: &DemoArgs,
    state: &Path,
) -> Result<(secantus::RunningSecantus, Vec<DemoGrant>), String> {
    let secantusd = args
        .secantusd
        .clone()
        .or_else(|| secantus::find_secantusd(None))
        .ok_or(
            "demo: SecantusDB is not installed; run scripts/setup-tools.sh (or pass --backend-uri)",
        )?;
    let users = [
        ("demo_rw", "readWriteAnyDatabase", "readWrite"),
        ("demo_ro", "readAnyDatabase", "read"),
    ];
    let mut grants = Vec::new();
    let mut backend_users = Vec::new();
    for (user, backend_role, group) in users {
        let password = random_password();
        let password_file = state.join(format!("{user}.password"));
        write_secret(&password_file, &password)?;
        backend_users.push(secantus::BackendUser {
            name: user.into(),
            password,
            roles: vec![(backend_role.into(), "admin".into())],
        });
        grants.push(DemoGrant {
            role: group,
            backend_user: user.into(),
            password_file,
        });
    }
    println!(
        "demo: starting SecantusDB ({}) with users demo_rw and demo_ro",
        secantusd.display()
    );
    let data_dir = state.join("secantus-data");
    let _ = std::fs::remove_dir_all(&data_dir);
    let running = secantus::start(secantus::SecantusOptions {
        secantusd,
        users: backend_users,
        data_dir: Some(data_dir),
        port: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok((running, grants))
}

fn external_backend_grants(args: &DemoArgs, state: &Path) -> Result<Vec<DemoGrant>, String> {
    let (Some(user), Some(var)) = (&args.backend_user, &args.backend_password_env) else {
        return Err("demo: --backend-uri needs --backend-user and --backend-password-env".into());
    };
    let password =
        std::env::var(var).map_err(|_| format!("demo: environment variable {var} is not set"))?;
    let password_file = state.join("backend.password");
    write_secret(&password_file, &password)?;
    Ok(vec![DemoGrant {
        role: "readWrite",
        backend_user: user.clone(),
        password_file,
    }])
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn demo_config(
    args: &DemoArgs,
    certs: &crate::devcerts::DevCertPaths,
    issuer: &str,
    client_id: &str,
    backend_uri: &str,
    grants: &[DemoGrant],
) -> String {
    let mut text = format!(
        "# Written by `mongo-oidc-proxy-demo`; regenerated at every start.\n\
         [listen]\naddress = {}\ntls_cert = {}\ntls_key = {}\n\n\
         [backend]\nuri = {}\n\n\
         [[identity_provider]]\nissuer = {}\naudience = {}\nauth_name_prefix = {}\nclient_id = {}\njwks_min_quiesce_secs = 0\n\n\
         [metrics]\naddress = \"127.0.0.1:0\"\n",
        toml_str(&args.listen.to_string()),
        toml_str(&certs.server_cert.display().to_string()),
        toml_str(&certs.server_key.display().to_string()),
        toml_str(backend_uri),
        toml_str(issuer),
        toml_str(AUDIENCE),
        toml_str(PREFIX),
        toml_str(client_id),
    );
    for g in grants {
        text.push_str(&format!(
            "\n[[grant]]\nrole = {}\nbackend_user = {}\nbackend_password_file = {}\n",
            toml_str(&format!("{PREFIX}/{}", g.role)),
            toml_str(&g.backend_user),
            toml_str(&g.password_file.display().to_string()),
        ));
    }
    text
}

/// The banner: where everything is, and what the demo granted to whom.
#[allow(clippy::too_many_arguments)]
fn print_instructions(
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    ca: &Path,
    issuer: &str,
    alice: &Path,
    bob: &Path,
    config: &Path,
    grants: &[DemoGrant],
    external_backend: Option<&str>,
) {
    let host = if addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    let uri = format!(
        "mongodb://{host}/?tls=true&tlsCAFile={}&authMechanism=MONGODB-OIDC",
        ca.display()
    );
    // The tokens' groups, as run() writes them, against the grants it configured.
    let access = |who: &str, group: &str| match grants.iter().find(|g| g.role == group) {
        Some(g) => format!(
            "{who} (group {group}) runs as backend user {}",
            g.backend_user
        ),
        None => format!(
            "{who} (group {group}) matches no grant: signed in, but every command is refused (13)"
        ),
    };
    let rights = match external_backend {
        None => "SecantusDB started here: demo_rw has readWriteAnyDatabase, demo_ro readAnyDatabase, \
                 so bob may read but his writes are refused by the backend (13)"
            .to_string(),
        Some(backend) => format!(
            "backend {backend}: its user's own roles there decide what alice may do; the demo created no users"
        ),
    };
    println!(
        r#"
mongo-oidc-proxy-demo is running (Ctrl-C stops everything).

  proxy             {uri}
  identity provider {issuer}   (development only: signs in anyone, no password)
  config            {config}
  metrics           {metrics}

What the demo granted (the [[grant]] tables in the config above):
  {alice_access}
  {bob_access}
  ({rights})

Sign in with mongosh (device flow; the development IdP approves at once, as group readWrite):
  .tools/npm/node_modules/.bin/mongosh "{uri}" --oidcFlows=device-auth

Sign in with pymongo and a ready-made token (alice: group readWrite; bob: group read):
  OIDC_TOKEN_FILE={alice} .tools/venv/bin/python -c 'import pymongo; c = pymongo.MongoClient("{uri}&authMechanismProperties=ENVIRONMENT:test"); print(c.demo.things.insert_one({{"hello": "world"}}).inserted_id); print(c.admin.command("connectionStatus")["authInfo"])'
  OIDC_TOKEN_FILE={bob} ... (the same command with bob's token)
"#,
        metrics = metrics.map_or("off".to_string(), |m| format!("http://{m}/metrics")),
        alice = alice.display(),
        bob = bob.display(),
        config = config.display(),
        alice_access = access("alice", "readWrite"),
        bob_access = access("bob", "read"),
    );
}
