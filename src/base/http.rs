//! The one HTTP client every download, index read and probe uses, and how a request is sent:
//! bounded waits and retries of failures that may pass.
//!
//! reqwest's blocking client applies its `timeout` to each wait — for the response, then
//! for each read of the body — so a large download runs as long as bytes keep coming, and a
//! server that stalls is given up on after the stall timeout ([`STALL_TIMEOUT`] by default).

use anyhow::{bail, Context, Result};
use reqwest::blocking::{Client, RequestBuilder, Response};
use std::io::Read;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a TCP connection (and TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may keep us waiting for the response or for the next bytes of it,
/// unless the run sets another ([`set_stall_timeout`], `--stall-timeout`).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
static STALL: OnceLock<Duration> = OnceLock::new();
/// How many times a request is sent before its failure is reported.
pub const ATTEMPTS: u32 = 3;
/// The pause after the first failed attempt; it doubles after each.
const FIRST_PAUSE: Duration = Duration::from_secs(2);

/// Sets the run's stall timeout, once, before any request.
pub fn set_stall_timeout(timeout: Duration) {
    let _ = STALL.set(timeout);
}

pub fn stall_timeout() -> Duration {
    STALL.get().copied().unwrap_or(STALL_TIMEOUT)
}

pub fn client() -> Result<Client> {
    Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // Bodies are watched by `copy_body`, which names the stall; this bounds the wait for
        // a response and, a little later, a read that `copy_body` gave up on.
        .timeout(stall_timeout() + Duration::from_secs(5))
        .user_agent(concat!("virt-pipeline/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client")
}

/// Sends the request `make` builds, again after a pause when it fails in a way that may
/// pass (no connection, a timeout, HTTP 429 or 5xx), up to [`ATTEMPTS`] times. `what` names
/// it in the error ("cannot download URL"). Any other answer, including an error status, is
/// returned for the caller to judge.
pub fn send(what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response> {
    send_with_pause(what, make, FIRST_PAUSE)
}

fn send_with_pause(what: &str, make: impl Fn() -> RequestBuilder, first_pause: Duration) -> Result<Response> {
    let mut pause = first_pause;
    for attempt in 1.. {
        let last = attempt == ATTEMPTS;
        match make().send() {
            Ok(resp) if last || !passing(resp.status()) => return Ok(resp),
            Err(e) if last || !(e.is_connect() || e.is_timeout() || e.is_request()) => {
                return Err(e).with_context(|| format!("{what} (attempt {attempt} of {ATTEMPTS})"));
            }
            _ => {}
        }
        std::thread::sleep(pause);
        pause *= 2;
    }
    unreachable!("the last attempt returns")
}

/// A response body that stopped before its end: the server sent nothing for the stall
/// timeout, or the connection broke. Another attempt may resume where this one ended.
#[derive(Debug)]
pub struct BodyBroken(pub String);

impl std::fmt::Display for BodyBroken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyBroken {}

/// Passes a response body to `sink` chunk by chunk, at most `limit` bytes (more is an error:
/// a server does not get to send more than was announced and signed). The body is read in a
/// thread of its own, so that an interrupt (Ctrl-C, SIGTERM) ends the wait at once and a
/// server that sends nothing for [`stall_timeout`] is given up on ([`BodyBroken`]).
/// Returns the bytes passed.
pub fn copy_body(resp: Response, what: &str, limit: Option<u64>, sink: impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    copy_body_within(resp, what, limit, stall_timeout(), sink)
}

fn copy_body_within(
    resp: Response,
    what: &str,
    limit: Option<u64>,
    stall: Duration,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(2);
    std::thread::spawn(move || {
        let mut resp = resp;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let chunk = match resp.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let last = !matches!(&chunk, Ok(b) if !b.is_empty());
            // The receiver is gone when the copy was given up on.
            if tx.send(chunk).is_err() || last {
                return;
            }
        }
    });
    let mut heard = Instant::now();
    let mut total = 0u64;
    loop {
        super::interrupt::check()?;
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(chunk)) if chunk.is_empty() => return Ok(total),
            Ok(Ok(chunk)) => {
                total += chunk.len() as u64;
                if let Some(limit) = limit.filter(|&l| total > l) {
                    bail!("{what}: the server sent more than the {limit} bytes expected; cut off there");
                }
                sink(&chunk)?;
                heard = Instant::now();
            }
            Ok(Err(e)) => {
                return Err(BodyBroken(format!("{what}: the connection broke after {total} bytes: {e}")).into())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if heard.elapsed() >= stall => {
                return Err(BodyBroken(format!(
                    "{what}: the server sent nothing for {} (after {total} bytes)",
                    humantime::format_duration(stall)
                ))
                .into());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(BodyBroken(format!("{what}: the connection broke after {total} bytes")).into());
            }
        }
    }
}

/// An answer worth asking again for: the server is overloaded or failing for the moment
/// (501, a method it does not implement, is for good).
fn passing(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    status == StatusCode::TOO_MANY_REQUESTS || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A loopback server answering each connection with the next of `statuses`; returns its
    /// URL and a count of the requests it answered.
    fn server(statuses: &'static [u16]) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/file", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for (stream, status) in listener.incoming().zip(statuses) {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        (url, count)
    }

    #[test]
    fn a_passing_failure_is_sent_again_and_others_are_returned_at_once() {
        let client = client().unwrap();
        let (url, count) = server(&[503, 429, 200]);
        let resp = send_with_pause("get", || client.get(&url), Duration::from_millis(10)).unwrap();
        assert_eq!((resp.status().as_u16(), count.load(std::sync::atomic::Ordering::SeqCst)), (200, 3));

        let (url, count) = server(&[404, 200]);
        let resp = send_with_pause("get", || client.get(&url), Duration::from_millis(10)).unwrap();
        assert_eq!((resp.status().as_u16(), count.load(std::sync::atomic::Ordering::SeqCst)), (404, 1));

        // The last attempt's answer is the caller's to judge.
        let (url, _) = server(&[500, 500, 500, 200]);
        let resp = send_with_pause("get", || client.get(&url), Duration::from_millis(10)).unwrap();
        assert_eq!(resp.status().as_u16(), 500);
    }

    /// A server that sends `sent` bytes of a `length`-byte body, then holds the connection.
    fn partial_server(length: usize, sent: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/file", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(&vec![b'x'; sent]);
                std::thread::spawn(move || {
                    let _keep = stream;
                    std::thread::sleep(Duration::from_secs(600));
                });
            }
        });
        url
    }

    #[test]
    fn a_body_is_cut_off_at_its_limit_and_a_silent_server_given_up_on() {
        let client = client().unwrap();
        let url = partial_server(4096, 4096);
        let resp = client.get(&url).send().unwrap();
        let err = copy_body_within(resp, "the file", Some(1000), Duration::from_secs(5), |_| Ok(())).unwrap_err();
        assert_eq!(err.to_string(), "the file: the server sent more than the 1000 bytes expected; cut off there");

        let resp = client.get(&url).send().unwrap();
        let mut got = 0;
        let n = copy_body_within(resp, "the file", Some(4096), Duration::from_secs(5), |c| {
            got += c.len();
            Ok(())
        })
        .unwrap();
        assert_eq!((n, got), (4096, 4096));

        let url = partial_server(4096, 100);
        let resp = client.get(&url).send().unwrap();
        let err = copy_body_within(resp, "the file", None, Duration::from_millis(500), |_| Ok(())).unwrap_err();
        assert!(err.downcast_ref::<BodyBroken>().is_some(), "{err:#}");
        assert_eq!(err.to_string(), "the file: the server sent nothing for 500ms (after 100 bytes)");
    }

    #[test]
    fn nothing_listening_is_reported_after_the_last_attempt() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = client().unwrap();
        let err = send_with_pause(
            "cannot download it",
            || client.get(format!("http://127.0.0.1:{port}/")),
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("cannot download it (attempt 3 of 3)"), "{err:#}");
    }
}
