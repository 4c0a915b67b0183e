//! `mongo-oidc-proxy demo`: everything on loopback, for a first look.

#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs) -> Result<(), String> {
    Err("demo: not wired yet".into())
}
