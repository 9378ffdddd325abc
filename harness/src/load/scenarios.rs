//! goose scenarios equivalent to the runbook's k6 scripts: reads (list users, list posts,
//! read a post by id) and, in the full profile, authors who sign up, log in and create posts.
//!
//! Request names are what thresholds scope to: `GET list users`, `GET list posts`,
//! `GET read post`, `POST sign up`, `POST login`, `POST create post`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use goose::goose::{GooseResponse, TransactionFunction};
use goose::prelude::*;
use serde_json::{Value, json};

/// A reader's known post ids, and where its browsing of the post list stands.
#[derive(Clone, Default)]
struct Reader {
    post_ids: Vec<i64>,
    next: usize,
    /// The list's `next` link: readers page deeper (keyset pagination) until the end, then
    /// start again at the newest posts, so the gate measures deep pages as well as the first.
    next_page: Option<String>,
}

/// An author's session.
#[derive(Clone)]
struct Author {
    username: String,
    password: String,
    token: Option<String>,
}

/// The read-only scenario (`quick-test.js`).
pub(crate) fn browse(weight: usize) -> Result<Scenario, GooseError> {
    scenario!("browse")
        .set_weight(weight)?
        .register_transaction(
            transaction!(load_post_ids)
                .set_on_start()
                .set_name("load post ids"),
        )
        .register_transaction(transaction!(list_users).set_name("list users"))
        .register_transaction(transaction!(list_posts).set_name("list posts"))
        .register_transaction(
            transaction!(read_post)
                .set_name("read post")
                .set_weight(2)?,
        )
        .pipe_ok()
}

/// The writing scenario of `load-test.js`.
pub(crate) fn author(weight: usize) -> Result<Scenario, GooseError> {
    scenario!("author")
        .set_weight(weight)?
        .register_transaction(
            transaction!(sign_up_and_login)
                .set_on_start()
                .set_name("sign up"),
        )
        .register_transaction(
            transaction!(create_post)
                .set_name("create post")
                .set_weight(3)?,
        )
        .register_transaction(transaction!(login_again).set_name("login"))
        .pipe_ok()
}

/// One GET endpoint as fast as it answers: the benchmark against `wrk`.
pub(crate) fn get_endpoint(path: &str) -> Result<Scenario, GooseError> {
    let path: Arc<str> = Arc::from(path);
    let name = format!("{path}");
    let get = transaction_fn(move |user| {
        let path = path.clone();
        Box::pin(async move {
            let request = GooseRequest::builder()
                .method(GooseMethod::Get)
                .path(&*path)
                .name(&*path)
                .build();
            let goose = user.request(request).await?;
            // The body read to its end, as wrk and every real client do, so both do the same
            // work per request (measured: no change in throughput). A body that breaks off
            // is a failure.
            let GooseResponse {
                mut request,
                response,
            } = goose;
            if let Ok(response) = response
                && let Err(error) = response.bytes().await
            {
                return user.set_failure(
                    &format!("reading the body: {error}"),
                    &mut request,
                    None,
                    None,
                );
            }
            Ok(())
        })
    });
    scenario!("endpoint")
        .register_transaction(Transaction::new(get).set_name(&name))
        .pipe_ok()
}

/// Gives a closure the higher-ranked signature goose's transactions need, so it can
/// capture data (the `transaction!` macro only takes plain functions).
fn transaction_fn<F>(f: F) -> TransactionFunction
where
    F: for<'r> Fn(
            &'r mut GooseUser,
        ) -> Pin<Box<dyn Future<Output = TransactionResult> + Send + 'r>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

trait PipeOk: Sized {
    fn pipe_ok(self) -> Result<Self, GooseError> {
        Ok(self)
    }
}
impl PipeOk for Scenario {}

async fn get_json(
    user: &mut GooseUser,
    path: &str,
    name: &str,
) -> Result<Option<Value>, Box<TransactionError>> {
    let request = GooseRequest::builder()
        .method(GooseMethod::Get)
        .path(path)
        .name(name)
        .build();
    let goose = user.request(request).await?;
    Ok(match goose.response {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
        _ => None,
    })
}

fn ids(list: &Value) -> Vec<i64> {
    list["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|p| p["id"].as_i64()).collect())
        .unwrap_or_default()
}

async fn load_post_ids(user: &mut GooseUser) -> TransactionResult {
    let list = get_json(user, "/blog/?limit=50", "list posts").await?;
    let post_ids = list.as_ref().map(ids).unwrap_or_default();
    user.set_session_data(Reader {
        post_ids,
        next: 0,
        next_page: None,
    });
    Ok(())
}

async fn list_users(user: &mut GooseUser) -> TransactionResult {
    get_json(user, "/api/users/?limit=20", "list users").await?;
    Ok(())
}

async fn list_posts(user: &mut GooseUser) -> TransactionResult {
    let path = user
        .get_session_data_mut::<Reader>()
        .and_then(|reader| reader.next_page.take())
        .unwrap_or_else(|| "/blog/?limit=20".to_owned());
    if let Some(list) = get_json(user, &path, "list posts").await? {
        let fresh = ids(&list);
        if let Some(reader) = user.get_session_data_mut::<Reader>() {
            reader.next_page = list["next"].as_str().map(str::to_owned);
            if !fresh.is_empty() {
                reader.post_ids = fresh;
            }
        }
    }
    Ok(())
}

async fn read_post(user: &mut GooseUser) -> TransactionResult {
    let id = match user.get_session_data_mut::<Reader>() {
        Some(reader) if !reader.post_ids.is_empty() => {
            reader.next = (reader.next + 1) % reader.post_ids.len();
            Some(reader.post_ids[reader.next])
        }
        _ => None,
    };
    match id {
        Some(id) => {
            get_json(user, &format!("/blog/{id}"), "read post").await?;
        }
        // No post known yet (an empty database, or the listing failed): list instead, which
        // is what a reader would do.
        None => list_posts(user).await?,
    }
    Ok(())
}

async fn post_json(
    user: &mut GooseUser,
    path: &str,
    name: &str,
    body: &Value,
    token: Option<&str>,
) -> Result<Option<Value>, Box<TransactionError>> {
    let mut builder = user
        .get_request_builder(&GooseMethod::Post, path)?
        .json(body);
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path(path)
        .name(name)
        .set_request_builder(builder)
        .build();
    let goose = user.request(request).await?;
    Ok(match goose.response {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
        _ => None,
    })
}

async fn login(user: &mut GooseUser, author: &mut Author) -> Result<(), Box<TransactionError>> {
    let body = json!({ "username": author.username, "password": author.password });
    let answer = post_json(user, "/api/auth/login", "login", &body, None).await?;
    author.token = answer.and_then(|a| a["token"].as_str().map(str::to_owned));
    Ok(())
}

async fn sign_up_and_login(user: &mut GooseUser) -> TransactionResult {
    // Random names: gate runs against a restored production copy must not collide with its
    // users or with each other.
    let username = format!("gate-{}", hex::encode(rand::random::<[u8; 8]>()));
    let mut author = Author {
        password: hex::encode(rand::random::<[u8; 12]>()),
        username,
        token: None,
    };
    let body = json!({
        "username": author.username,
        "email": format!("{}@gate.invalid", author.username),
        "password": author.password,
    });
    if post_json(user, "/api/users/", "sign up", &body, None)
        .await?
        .is_some()
    {
        login(user, &mut author).await?;
    }
    user.set_session_data(author);
    Ok(())
}

async fn login_again(user: &mut GooseUser) -> TransactionResult {
    let Some(mut author) = user.get_session_data::<Author>().cloned() else {
        return sign_up_and_login(user).await;
    };
    login(user, &mut author).await?;
    user.set_session_data(author);
    Ok(())
}

async fn create_post(user: &mut GooseUser) -> TransactionResult {
    let token = user
        .get_session_data::<Author>()
        .and_then(|a| a.token.clone());
    let Some(token) = token else {
        // Signing up or logging in failed earlier (that failure is counted): start over.
        return sign_up_and_login(user).await;
    };
    let n: u32 = rand::random();
    let body = json!({
        "title": format!("gate post {n:08x}"),
        "content": "written by the post-restore load gate",
    });
    post_json(user, "/blog/", "create post", &body, Some(&token)).await?;
    Ok(())
}
