//! The HTTP face of the simulated cluster: routing, content negotiation and the hook through
//! which subresources such as `pods/exec` are served.
//!
//! Routing is done by hand from the path because Kubernetes paths are more regular than a
//! route table: `/api/v1[/namespaces/{ns}]/{plural}[/{name}[/{sub}]]` and the same under
//! `/apis/{group}/{version}`.

mod discovery;
pub(crate) use discovery::GIT_VERSION;
mod metrics;
mod rest;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::config::AccessRule;
use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::Store;

/// The object a subresource request is about.
#[derive(Clone)]
pub(crate) struct SubresourceTarget {
    /// The resource (for example pods).
    pub(crate) resource: ResourceType,
    /// Namespace of the object ("" for cluster-scoped kinds).
    pub(crate) namespace: String,
    /// Name of the object.
    pub(crate) name: String,
}

/// Serves one subresource, for example `pods/exec` or `pods/log`.
///
/// The request is handed over whole, so a handler can upgrade it to a WebSocket.
pub(crate) trait SubresourceHandler: Send + Sync + 'static {
    /// Answer one request.
    fn handle(&self, target: SubresourceTarget, req: Request) -> BoxFuture<'static, Response>;
}

/// Registered subresource handlers, by (`group/plural`, subresource).
pub(crate) type SubresourceMap = RwLock<HashMap<(String, String), Arc<dyn SubresourceHandler>>>;

/// What every request handler shares.
pub(crate) struct ServerState {
    pub(crate) store: Arc<Store>,
    pub(crate) deny: Vec<AccessRule>,
    pub(crate) subresources: Arc<SubresourceMap>,
    /// What `metrics.k8s.io` serves.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) address: String,
    pub(crate) stop: tokio_util::sync::CancellationToken,
}

/// A JSON response with the given status.
pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn router(state: Arc<ServerState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// The decoded query string.
pub(crate) struct Query(pub(crate) Vec<(String, String)>);

impl Query {
    fn parse(req: &Request) -> Result<Self, ApiError> {
        let q = req.uri().query().unwrap_or_default();
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .map(Query)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

async fn dispatch(State(st): State<Arc<ServerState>>, req: Request) -> Response {
    use futures::FutureExt as _;
    let path = req.uri().path().to_owned();
    // A bug must cost one request a 500 Status, never the connection without an answer.
    match std::panic::AssertUnwindSafe(dispatch_inner(st, req))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(path, "request handler panicked");
            ApiError::internal(format!("internal error while serving {path}")).into_response()
        }
    }
}

async fn dispatch_inner(st: Arc<ServerState>, req: Request) -> Response {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let result = match segs.as_slice() {
        ["version"] => Ok(discovery::version()),
        ["healthz" | "livez" | "readyz", ..] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => Ok(discovery::api_versions(&st)),
        ["apis"] => Ok(discovery::api_group_list(&st)),
        ["apis", group] => discovery::api_group(&st, group),
        ["openapi", "v2"] => Ok(discovery::openapi_v2(&req)),
        ["openapi", "v3"] => Ok(discovery::openapi_v3_root(&st)),
        ["openapi", "v3", rest @ ..] => discovery::openapi_v3_doc(&st, &rest.join("/")),
        ["apis", metrics::GROUP, metrics::VERSION, rest @ ..] => metrics::serve(&st, rest, &req),
        ["api", "v1"] => discovery::resource_list(&st, "", "v1"),
        ["apis", group, version] => discovery::resource_list(&st, group, version),
        ["api", "v1", rest @ ..] => route(&st, "", "v1", rest, req).await,
        ["apis", group, version, rest @ ..] => route(&st, group, version, rest, req).await,
        _ => Err(ApiError::no_resource(&path)),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn route(
    st: &Arc<ServerState>,
    group: &str,
    version: &str,
    rest: &[&str],
    req: Request,
) -> Result<Response, ApiError> {
    let registry_rt = |plural: &str| st.store.registry().lookup(group, version, plural).cloned();
    let (ns, rt, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if registry_rt(plural).is_some_and(|r| r.namespaced) =>
        {
            let rt = registry_rt(plural).ok_or_else(|| ApiError::no_resource(plural))?;
            match tail {
                [] => (Some((*ns).to_owned()), rt, None, None),
                [name] => (Some((*ns).to_owned()), rt, Some((*name).to_owned()), None),
                [name, sub] => (
                    Some((*ns).to_owned()),
                    rt,
                    Some((*name).to_owned()),
                    Some((*sub).to_owned()),
                ),
                _ => return Err(ApiError::no_resource(&rest.join("/"))),
            }
        }
        [plural, tail @ ..] => {
            let rt = registry_rt(plural).ok_or_else(|| {
                ApiError::no_resource(&format!(
                    "{}/{}",
                    if group.is_empty() {
                        "api/v1".to_owned()
                    } else {
                        format!("apis/{group}/{version}")
                    },
                    rest.join("/")
                ))
            })?;
            match tail {
                [] => (None, rt, None, None),
                [name] if !rt.namespaced => (None, rt, Some((*name).to_owned()), None),
                [name, sub] if !rt.namespaced => {
                    (None, rt, Some((*name).to_owned()), Some((*sub).to_owned()))
                }
                _ => return Err(ApiError::no_resource(&rest.join("/"))),
            }
        }
        [] => return Err(ApiError::no_resource("")),
    };
    if let Some(sub) = &sub
        && !rt.has_subresource(sub)
    {
        return Err(ApiError::no_resource(&format!("{}/{sub}", rt.plural)));
    }
    rest::handle(st, rt, ns, name, sub, req).await
}

/// Serve on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A streaming body of newline-delimited JSON chunks.
pub(crate) fn stream_body(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Body {
    use futures::StreamExt as _;
    let s = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    Body::from_stream(s)
}
