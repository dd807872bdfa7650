//! `pipeline serve DIR`: the repository over HTTP for virt-builder clients: GET and HEAD,
//! single byte ranges (with If-Range), ETag / If-None-Match and Last-Modified, a page for
//! people, and a line per request. What may be served is bounded:
//!
//! - a file is opened once, component by component without following any symlink, and the
//!   bytes sent are that open file's: no name flipped between a file and a link while a
//!   request runs can make it serve anything outside DIR (no `..`, no hidden files either);
//! - a client has [`HEADER_TIMEOUT`] to send a request's headers (idle keep-alive
//!   connections included), connections beyond [`MAX_CONNECTIONS`] (or what the open-file
//!   limit allows) are closed at once, and the process raises its open-file limit to what the
//!   system allows, so slow or idle clients cannot starve the others;
//! - opening files and rendering the page run off the async workers.
//!
//! SIGTERM and Ctrl-C shut it down cleanly.

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a client may take to send a request's headers, or stay idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;

struct Root {
    canonical: PathBuf,
}

pub fn router(dir: &Path) -> Result<Router> {
    let canonical = std::fs::canonicalize(dir).with_context(|| format!("cannot serve {}", dir.display()))?;
    let root = Arc::new(Root { canonical });
    // The page for people at `/` and `/NAME/`; every other path is a file.
    let app = Router::new()
        .route("/", axum::routing::get(list_page))
        .route("/{name}/", axum::routing::get(entry_page))
        .fallback(file)
        .with_state(root);
    Ok(app.layer(middleware::from_fn(log_request)))
}

async fn list_page(State(root): State<Arc<Root>>, headers: HeaderMap) -> Response {
    page(root, None, headers).await
}

async fn entry_page(
    State(root): State<Arc<Root>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    page(root, Some(name), headers).await
}

async fn page(root: Arc<Root>, only: Option<String>, headers: HeaderMap) -> Response {
    // The address the client used, for the virt-builder command it is shown.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let rendered = tokio::task::spawn_blocking(move || {
        super::page::render(&root.canonical, only.as_deref(), &format!("http://{host}"))
    })
    .await;
    match rendered {
        Ok(Ok(Some(html))) => {
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], html)
                .into_response()
        }
        Ok(Ok(None)) => not_found(),
        Ok(Err(e)) => {
            eprintln!("page: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the page; see the server's log\n").into_response()
        }
        Err(e) => {
            eprintln!("page: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the page; see the server's log\n").into_response()
        }
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// A file of the repository: opened once, without following links, and served from that
/// open file.
async fn file(State(root): State<Arc<Root>>, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")]).into_response();
    }
    let Some(path) = percent_decode(req.uri().path()) else { return not_found() };
    let opened = tokio::task::spawn_blocking(move || open_inside(&root.canonical, &path)).await;
    let Ok(Some((file, meta))) = opened else { return not_found() };
    let headers = req.headers();
    let len = meta.len();
    let etag = {
        use std::os::unix::fs::MetadataExt;
        format!("\"{:x}-{:x}\"", len, meta.mtime() as u64 * 1_000_000_000 + meta.mtime_nsec() as u64)
    };
    let modified = meta.modified().map(httpdate::fmt_http_date).unwrap_or_default();
    let matches_etag =
        |value: &HeaderValue| value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if headers.get(header::IF_NONE_MATCH).is_some_and(matches_etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    // A range applies only to the version If-Range names, when it names one.
    let same_version = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag || v.trim() == modified));
    let range =
        headers.get(header::RANGE).filter(|_| same_version).and_then(|v| v.to_str().ok()).map(|r| byte_range(r, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(None) => {
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))])
                .into_response()
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type(req.uri().path()))
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &modified);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end - 1));
    }
    let body = if head {
        Body::empty()
    } else {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::from_std(file);
        if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return not_found();
        }
        Body::from_stream(tokio_util::io::ReaderStream::new(file.take(end - start)))
    };
    builder.body(body).unwrap_or_else(|_| not_found())
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` of a file of `len` bytes, as [start, end); None
/// when it cannot be satisfied (or is a list of ranges, which no client here sends).
fn byte_range(header: &str, len: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().ok()?, len),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.saturating_add(1).min(len)),
    };
    (start < end && start < len).then_some((start, end))
}

fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    if name == "index" || [".asc", ".conf", ".txt", ".json"].iter().any(|s| name.ends_with(s)) {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// Opens the regular file a request path names inside `root`: each directory, then the file,
/// is opened relative to the one before (through /proc/self/fd) and never through a symlink;
/// hidden names and the root itself are not served.
fn open_inside(root: &Path, request_path: &str) -> Option<(std::fs::File, std::fs::Metadata)> {
    let rel = request_path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|part| part.is_empty() || part.starts_with('.')) {
        return None;
    }
    let parts: Vec<&str> = rel.split('/').collect();
    let (last, dirs) = parts.split_last()?;
    let open = |dir: &std::fs::File, name: &str, flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | flags)
            .open(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
            .ok()
    };
    let mut dir = std::fs::File::open(root).ok()?;
    for name in dirs {
        dir = open(&dir, name, libc::O_DIRECTORY)?;
    }
    // Non-blocking: a FIFO someone put there does not hang the open.
    let file = open(&dir, last, libc::O_NONBLOCK)?;
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta))
}

/// Serves until SIGTERM or Ctrl-C.
pub fn serve(dir: &Path, listen: &str) -> Result<()> {
    let app = router(dir)?;
    let max_connections = raise_open_file_limit().saturating_sub(64).clamp(16, MAX_CONNECTIONS as u64) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        eprintln!("serving {} on http://{addr}/ (virt-builder --source http://{addr}/index.asc)", dir.display());
        let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, or a connection reset before it was taken.
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                eprintln!("{peer}: {max_connections} connections already; closed");
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                drop(slot);
            });
        }
        eprintln!("shut down");
        Ok(())
    })
}

/// Raises this process's open-file limit to the most the system allows (each connection
/// holds one); returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
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
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/file"), "y").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("linked-dir")).unwrap();
        std::os::unix::fs::symlink(root.join("index.asc"), root.join("linked-file")).unwrap();
        assert!(open_inside(&root, "/index.asc").is_some());
        assert!(open_inside(&root, "/sub/file").is_some());
        assert!(open_inside(&root, "/../etc/passwd").is_none());
        assert!(open_inside(&root, "/escape").is_none());
        assert!(open_inside(&root, "/linked-dir/file").is_none(), "no link is followed, even inside");
        assert!(open_inside(&root, "/linked-file").is_none());
        assert!(open_inside(&root, "/.lock").is_none());
        assert!(open_inside(&root, "/sub").is_none(), "a directory is not a file");
        assert!(open_inside(&root, "/").is_none());
        assert_eq!(percent_decode("/a%2e%2e/b").unwrap(), "/a../b");
        assert_eq!(percent_decode("/%2e%2e/x").unwrap(), "/../x");
        assert!(open_inside(&root, &percent_decode("/%2e%2e/etc/passwd").unwrap()).is_none());
    }

    #[test]
    fn byte_ranges_are_read_as_rfc_9110_says() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(byte_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(byte_range("bytes=50-500", 100), Some((50, 100)));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
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
