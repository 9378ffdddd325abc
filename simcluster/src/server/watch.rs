//! Watch streams: newline-delimited JSON events from a resourceVersion, with selectors,
//! bookmarks, timeouts, `410 Gone` for expired versions and for watchers that fall behind.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rest::{Render, selectors};
use super::{Query, ServerState, stream_body};
use crate::api;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{EventType, WatchEvent, WatchStart};
use crate::table;

const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: u64 = 1800;

struct Filter {
    rt: ResourceType,
    ns: Option<String>,
    ls: LabelSelector,
    fs: FieldSelector,
    mode: Render,
    include: String,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        self.ls.matches(o) && self.fs.matches(o)
    }

    /// The event type this watcher sees, if any: objects moving into or out of the selection
    /// appear as ADDED or DELETED.
    fn classify(&self, ev: &WatchEvent) -> Option<&'static str> {
        if ev.key != self.rt.key() || self.ns.as_ref().is_some_and(|n| *n != ev.namespace) {
            return None;
        }
        let now = self.matches(&ev.object);
        match ev.kind {
            EventType::Added => now.then_some("ADDED"),
            EventType::Deleted => now.then_some("DELETED"),
            EventType::Modified => {
                let before = ev.old.as_ref().is_some_and(|o| self.matches(o));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
    }

    fn line(&self, ty: &str, obj: Value, first: &mut bool) -> bytes::Bytes {
        let object = match self.mode {
            Render::Object => obj,
            Render::Metadata => table::partial_metadata(&obj),
            Render::Table => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let t = table::table(&self.rt, &[obj], &rv, &self.include, *first);
                *first = false;
                t
            }
        };
        let mut s = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
        s.push(b'\n');
        s.into()
    }

    fn bookmark(&self, rv: u64, extra: Option<Value>) -> bytes::Bytes {
        let mut md = json!({"resourceVersion": rv.to_string()});
        if let Some(a) = extra {
            md["annotations"] = a;
        }
        let mut s = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": {"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": md}}))
            .unwrap_or_default();
        s.push(b'\n');
        s.into()
    }
}

fn error_line(e: &ApiError) -> bytes::Bytes {
    let mut s =
        serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()})).unwrap_or_default();
    s.push(b'\n');
    s.into()
}

/// Start a watch and answer with its stream.
pub(super) fn serve(
    st: Arc<ServerState>,
    rt: ResourceType,
    ns: Option<String>,
    q: &Query,
    mode: Render,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let rv = match q.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version \"{v}\"")))?,
        ),
    };
    let send_initial = q.flag("sendInitialEvents");
    let rv = if send_initial { None } else { rv };
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(DEFAULT_TIMEOUT);
    let ns = if rt.namespaced { ns } else { None };
    let filter = Filter {
        rt,
        ns,
        ls,
        fs,
        mode,
        include: q.get("includeObject").unwrap_or("Metadata").to_owned(),
    };
    let (tx, rx) = mpsc::channel::<bytes::Bytes>(256);
    let start = match st.store.watch(&filter.rt.key(), filter.ns.as_deref(), rv) {
        Ok(s) => s,
        Err(e) => {
            // An expired resourceVersion is reported in the stream, as the real server does.
            let _ = tx.try_send(error_line(&e));
            drop(tx);
            return Ok(respond(rx));
        }
    };
    let options = StreamOptions {
        send_initial,
        bookmarks,
        timeout,
    };
    tokio::spawn(stream(filter, start, tx, st.stop.clone(), options));
    Ok(respond(rx))
}

/// What a watch request asks of its stream besides the objects.
struct StreamOptions {
    /// `sendInitialEvents`: the initial state, then a bookmark marking its end.
    send_initial: bool,
    /// `allowWatchBookmarks`: a bookmark every [`BOOKMARK_EVERY`].
    bookmarks: bool,
    /// `timeoutSeconds`.
    timeout: u64,
}

/// The watch's lines into `tx`: the initial events, then each change after `start` that the
/// filter passes, with bookmarks, until the timeout, the server's stop, the client's leaving
/// or a watcher that fell behind (told with a 410 in the stream).
async fn stream(
    filter: Filter,
    start: WatchStart,
    tx: mpsc::Sender<bytes::Bytes>,
    stop: CancellationToken,
    options: StreamOptions,
) {
    let mut first = true;
    let mut last_rv = start.rv;
    for ev in &start.initial {
        if let Some(ty) = filter.classify(ev)
            && tx
                .send(filter.line(ty, api::to_version(&filter.rt, &ev.object), &mut first))
                .await
                .is_err()
        {
            return;
        }
        last_rv = last_rv.max(ev.rv);
    }
    if options.send_initial {
        let done = json!({"k8s.io/initial-events-end": "true"});
        if tx.send(filter.bookmark(last_rv, Some(done))).await.is_err() {
            return;
        }
    }
    let mut rx = start.rx;
    let deadline = tokio::time::sleep(Duration::from_secs(options.timeout));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            () = &mut deadline => return,
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            _ = tick.tick() => {
                if options.bookmarks && tx.send(filter.bookmark(last_rv, None)).await.is_err() {
                    return;
                }
            }
            r = rx.recv() => match r {
                Ok(ev) => {
                    // Events up to the start were replayed from history or are in the
                    // initial state already.
                    if ev.rv <= start.rv {
                        continue;
                    }
                    last_rv = last_rv.max(ev.rv);
                    if let Some(ty) = filter.classify(&ev)
                        && tx.send(filter.line(ty, api::to_version(&filter.rt, &ev.object), &mut first)).await.is_err() {
                            return;
                        }
                }
                Err(RecvError::Lagged(_)) => {
                    let _ = tx.send(error_line(&ApiError::gone("the watcher fell behind; too old resource version"))).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

fn respond(rx: mpsc::Receiver<bytes::Bytes>) -> Response {
    let mut r = (StatusCode::OK, stream_body(rx)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
