//! The admin endpoints, merged into the `[metrics]` listener:
//!
//! | request | what |
//! |---|---|
//! | `POST /admin/reload` | the SIGHUP reload; 200 with the changes, 422 with the refusal |
//! | `POST /admin/jwks/refresh` | every issuer's keys fetched now, ignoring the quiesce period |
//! | `POST /admin/jwks/revoke[?issuer=]` | the cached keys dropped, their sessions ended (391), keys fetched anew |
//! | `GET /admin/sessions` | the open sessions, never a token or password |
//! | `POST /admin/sessions/<id>/close` | that client connection closed |
//!
//! Every request needs `Authorization: Bearer <token>` of the current
//! runtime (a reload may change or remove it; without `[admin]` every
//! endpoint answers 404). Every request, refused ones included, goes through
//! the sinks as an [`OperatorEvent::Admin`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::auth::jwks::JwksCache;
use crate::config::ConfigError;
use crate::runtime::{Reloaded, Shared};
use crate::session::events::{AdminAction, AdminOutcome, OperatorEvent};

pub type ReloadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Reloaded, ConfigError>> + Send + 'a>>;

/// The reload SIGHUP runs, handed down by the server.
pub trait Reload: Send + Sync {
    fn reload(&self) -> ReloadFuture<'_>;
}

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    reload: Arc<dyn Reload>,
}

/// The `/admin/...` routes.
pub fn router(shared: Arc<Shared>, reload: Arc<dyn Reload>) -> Router {
    Router::new()
        .route("/admin/reload", post(reload_config))
        .route("/admin/jwks/refresh", post(jwks_refresh))
        .route("/admin/jwks/revoke", post(jwks_revoke))
        .route("/admin/sessions", get(sessions))
        .route("/admin/sessions/{id}/close", post(close_session))
        .with_state(AdminState { shared, reload })
}

/// One request: who sent it, and what it asked for.
struct Request<'a> {
    state: &'a AdminState,
    action: AdminAction,
    source: String,
}

impl Request<'_> {
    /// The operator event of this request.
    fn record(&self, target: Option<&str>, outcome: AdminOutcome, detail: &str) {
        self.state.shared.sinks.operator(&OperatorEvent::Admin {
            action: self.action,
            target,
            outcome,
            detail,
            source: &self.source,
        });
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// The request if the current runtime has an admin token and the request
/// carries it; else the 404 or 401 to answer.
fn admit<'a>(
    state: &'a AdminState,
    action: AdminAction,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Request<'a>, Box<Response>> {
    let request = Request {
        state,
        action,
        source: format!("http {peer}"),
    };
    let runtime = state.shared.runtime.load();
    let Some(token) = &runtime.admin else {
        return Err(Box::new(reply(
            StatusCode::NOT_FOUND,
            json!({"error": "the admin endpoints are off: set [admin] token_env or token_file in the config"}),
        )));
    };
    let presented = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if !token.admits(presented) {
        let why = if presented.is_some() {
            "wrong bearer token"
        } else {
            "no bearer token"
        };
        request.record(None, AdminOutcome::Unauthorized, why);
        let mut response = reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "send Authorization: Bearer <the token of [admin]>"}),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return Err(Box::new(response));
    }
    Ok(request)
}

/// Runs `work` on a task of its own: a client that hangs up must not cancel
/// a reload or a revocation halfway (a revoke dropped between forgetting the
/// keys and fetching them would leave the issuer without keys).
async fn detached<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> Option<T> {
    tokio::spawn(work).await.ok()
}

fn internal_error(request: &Request<'_>) -> Response {
    let text = "the admin task ended without a result (see the log)";
    request.record(None, AdminOutcome::Failed, text);
    reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": text}))
}

async fn reload_config(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let request = match admit(&state, AdminAction::Reload, peer, &headers) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    let reload = state.reload.clone();
    let Some(result) = detached(async move { reload.reload().await }).await else {
        return internal_error(&request);
    };
    match result {
        Ok(reloaded) => {
            request.record(None, AdminOutcome::Ok, &reloaded.changes);
            reply(StatusCode::OK, json!({"changes": reloaded.changes}))
        }
        Err(e) => {
            let text = e.to_string();
            request.record(None, AdminOutcome::Failed, &text);
            reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": text, "field": e.field, "kept": "the running configuration keeps serving"}),
            )
        }
    }
}

/// What one issuer's refresh or revocation ended with.
fn issuer_result(cache: &JwksCache, result: Result<(), String>) -> Value {
    let kids: Vec<String> = cache.keys().iter().map(|k| k.kid.clone()).collect();
    match result {
        Ok(()) => json!({"issuer": cache.issuer(), "ok": true, "keys": kids}),
        Err(e) => json!({"issuer": cache.issuer(), "ok": false, "keys": kids, "error": e}),
    }
}

/// 200 if every issuer's fetch worked, else 502 (the IdP is the gateway
/// that failed); the body has each issuer's result either way.
fn fetch_report(request: &Request<'_>, target: Option<&str>, results: Vec<Value>) -> Response {
    let failed = results.iter().any(|r| r["ok"] == json!(false));
    let detail = Value::Array(results.clone()).to_string();
    let (outcome, status) = if failed {
        (AdminOutcome::Failed, StatusCode::BAD_GATEWAY)
    } else {
        (AdminOutcome::Ok, StatusCode::OK)
    };
    request.record(target, outcome, &detail);
    reply(status, json!({"issuers": results}))
}

async fn jwks_refresh(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let request = match admit(&state, AdminAction::JwksRefresh, peer, &headers) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    let registry = state.shared.runtime.load().registry.clone();
    let work = async move {
        let mut results = Vec::new();
        for cache in registry.jwks_caches() {
            // A failed fetch keeps the old keys: refreshing is not revoking.
            let result = cache.refresh_now(false).await.map_err(|e| e.to_string());
            results.push(issuer_result(cache, result));
        }
        results
    };
    match detached(work).await {
        Some(results) => fetch_report(&request, None, results),
        None => internal_error(&request),
    }
}

#[derive(serde::Deserialize)]
struct RevokeQuery {
    issuer: Option<String>,
}

async fn jwks_revoke(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<RevokeQuery>,
    headers: HeaderMap,
) -> Response {
    let request = match admit(&state, AdminAction::JwksRevoke, peer, &headers) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    let registry = state.shared.runtime.load().registry.clone();
    let target = query.issuer.as_deref();
    let caches: Vec<Arc<JwksCache>> = registry
        .jwks_caches()
        .iter()
        .filter(|c| target.is_none_or(|t| c.issuer() == t))
        .cloned()
        .collect();
    if let (Some(issuer), true) = (target, caches.is_empty()) {
        let text = format!("no identity provider has issuer '{issuer}'");
        request.record(target, AdminOutcome::NotFound, &text);
        return reply(StatusCode::NOT_FOUND, json!({"error": text}));
    }
    let work = async move {
        let mut results = Vec::new();
        for cache in caches {
            let result = cache.revoke().await.map(|_| ()).map_err(|e| {
                format!("{e}; no key of this issuer is trusted until a fetch succeeds (sign-ins fail meanwhile)")
            });
            results.push(issuer_result(&cache, result));
        }
        results
    };
    match detached(work).await {
        Some(results) => fetch_report(&request, target, results),
        None => internal_error(&request),
    }
}

async fn sessions(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let request = match admit(&state, AdminAction::Sessions, peer, &headers) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    let list = state.shared.sessions.list();
    request.record(None, AdminOutcome::Ok, &format!("{} open", list.len()));
    reply(StatusCode::OK, json!({"sessions": list}))
}

async fn close_session(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request = match admit(&state, AdminAction::SessionClose, peer, &headers) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    match id
        .parse::<i32>()
        .ok()
        .filter(|n| state.shared.sessions.close(*n))
    {
        Some(n) => {
            request.record(Some(&id), AdminOutcome::Ok, "closing the client connection");
            reply(StatusCode::OK, json!({"closed": n}))
        }
        None => {
            let text = format!("no open session has id '{id}'");
            request.record(Some(&id), AdminOutcome::NotFound, &text);
            reply(StatusCode::NOT_FOUND, json!({"error": text}))
        }
    }
}
