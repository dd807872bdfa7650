//! `pipeline serve DIR`: the repository over HTTP for virt-builder clients. tower-http's
//! ServeDir does GET/HEAD, Range and Last-Modified; around it, a guard keeps every request
//! inside DIR (no `..`, no symlink leading out, no dot files such as the lock), an ETag is
//! added, and each request is logged on one line. SIGTERM and Ctrl-C shut it down cleanly.

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower_http::services::ServeDir;

struct Root {
    canonical: PathBuf,
}

pub fn router(dir: &Path) -> Result<Router> {
    let canonical = std::fs::canonicalize(dir).with_context(|| format!("cannot serve {}", dir.display()))?;
    let root = Arc::new(Root { canonical: canonical.clone() });
    let files = Router::new()
        .fallback_service(ServeDir::new(&canonical).append_index_html_on_directories(false))
        .layer(middleware::from_fn_with_state(root.clone(), guard));
    // The page for people at `/` and `/NAME/`; every other path is a file.
    let pages = Router::new()
        .route("/", axum::routing::get(list_page))
        .route("/{name}/", axum::routing::get(entry_page))
        .with_state(root);
    Ok(pages.fallback_service(files).layer(middleware::from_fn(log_request)))
}

async fn list_page(State(root): State<Arc<Root>>, headers: axum::http::HeaderMap) -> Response {
    page(&root, None, &headers)
}

async fn entry_page(
    State(root): State<Arc<Root>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    page(&root, Some(&name), &headers)
}

fn page(root: &Root, only: Option<&str>, headers: &axum::http::HeaderMap) -> Response {
    // The address the client used, for the virt-builder command it is shown.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    match super::page::render(&root.canonical, only, &format!("http://{host}")) {
        Ok(Some(html)) => {
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], html)
                .into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        Err(e) => {
            eprintln!("page: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the page; see the server's log\n").into_response()
        }
    }
}

/// Serves until SIGTERM or Ctrl-C.
pub fn serve(dir: &Path, listen: &str) -> Result<()> {
    let app = router(dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        eprintln!("serving {} on http://{addr}/ (virt-builder --source http://{addr}/index.asc)", dir.display());
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        eprintln!("shut down");
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let range =
        req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).map(|r| format!(" {r}")).unwrap_or_default();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let len = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    eprintln!(
        "{method} {uri}{range} {} {len} {:.1}ms",
        resp.status().as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    resp
}

async fn guard(State(root): State<Arc<Root>>, req: Request, next: Next) -> Response {
    let Some(file) = percent_decode(req.uri().path()).and_then(|path| resolve_inside(&root.canonical, &path)) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let etag = std::fs::metadata(&file).ok().filter(|m| m.is_file()).map(|m| {
        use std::os::unix::fs::MetadataExt;
        format!("\"{:x}-{:x}\"", m.len(), m.mtime() as u64 * 1_000_000_000 + m.mtime_nsec() as u64)
    });
    if let (Some(tag), Some(inm)) = (&etag, req.headers().get(header::IF_NONE_MATCH)) {
        if inm.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*")) {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(tag).expect("ascii"));
            return resp;
        }
    }
    let mut resp = next.run(req).await;
    if let Some(tag) = etag {
        if resp.status().is_success() {
            resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(&tag).expect("ascii"));
        }
    }
    resp
}

/// The file a request path names, if it is inside the root after resolving symlinks and is
/// not hidden. The root itself (a directory listing) is not served.
fn resolve_inside(root: &Path, request_path: &str) -> Option<PathBuf> {
    let rel = request_path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|part| part.is_empty() || part.starts_with('.')) {
        return None;
    }
    let real = std::fs::canonicalize(root.join(rel)).ok()?;
    (real.starts_with(root) && real != root).then_some(real)
}

/// The request path with `%XX` escapes decoded; None when the bytes are not UTF-8 (no file
/// of a repository has such a name).
fn percent_decode(path: &str) -> Option<String> {
    percent_encoding::percent_decode_str(path).decode_utf8().ok().map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("index.asc"), "x").unwrap();
        std::fs::write(root.join(".lock"), "").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        assert!(resolve_inside(&root, "/index.asc").is_some());
        assert!(resolve_inside(&root, "/../etc/passwd").is_none());
        assert!(resolve_inside(&root, "/escape").is_none());
        assert!(resolve_inside(&root, "/.lock").is_none());
        assert!(resolve_inside(&root, "/").is_none());
        assert_eq!(percent_decode("/a%2e%2e/b").unwrap(), "/a../b");
        assert_eq!(percent_decode("/%2e%2e/x").unwrap(), "/../x");
        assert!(resolve_inside(&root, &percent_decode("/%2e%2e/etc/passwd").unwrap()).is_none());
    }

    #[test]
    fn percent_escapes_decode_whole_characters() {
        // Multi-byte characters, escapes at the very end, and invalid escapes pass through.
        assert_eq!(percent_decode("/caf%C3%A9.xz").unwrap(), "/café.xz");
        assert_eq!(percent_decode("/%e2%82%AC").unwrap(), "/€");
        assert_eq!(percent_decode("/a%41").unwrap(), "/aA");
        assert_eq!(percent_decode("/a%4").unwrap(), "/a%4");
        assert_eq!(percent_decode("/a%zz%").unwrap(), "/a%zz%");
        assert_eq!(percent_decode("/%C3").as_deref(), None, "half a character is not a name");
        assert_eq!(percent_decode("/é%C3%").as_deref(), None);
        // A `%` before a multi-byte character: no escape, and no slicing inside the character.
        assert_eq!(percent_decode("/%aé").unwrap(), "/%aé");
        assert_eq!(percent_decode("/%éa").unwrap(), "/%éa");
    }
}
