//! SSH to a running guest: a fresh ed25519 key pair per run, sessions that retry while the
//! guest boots and record its host key in a private known_hosts (so rsync, ssh and
//! containers can then check it strictly), and Virter's way of running a shell step.
//!
//! All channel I/O is non-blocking and polled, so a hung guest never hangs the tool: every
//! loop checks for a signal (`interrupt::check`) and the session's deadline.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fresh ed25519 key pair for one run, in a private temporary directory (0700) that is
/// removed when the key is dropped.
pub struct AccessKey {
    dir: tempfile::TempDir,
    public: String,
    private_key: PathBuf,
    known_hosts: PathBuf,
}

impl AccessKey {
    pub fn generate() -> Result<AccessKey> {
        use rand::RngCore;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::Builder::new()
            .prefix("virt-pipeline-ssh-")
            .tempdir()
            .context("cannot create a directory for the run's SSH key")?;
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut tag = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut tag);
        let mut key = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
            .map_err(|e| anyhow!("cannot generate an ed25519 key: {e}"))?;
        key.set_comment(format!("virt-pipeline-{}", hex::encode(tag)));
        let private = key.to_openssh(ssh_key::LineEnding::LF).map_err(|e| anyhow!("cannot encode the SSH key: {e}"))?;
        let public = key.public_key().to_openssh().map_err(|e| anyhow!("cannot encode the SSH public key: {e}"))?;
        let private_key = dir.path().join("id_ed25519");
        let known_hosts = dir.path().join("known_hosts");
        for (path, content) in [(&private_key, private.as_bytes()), (&known_hosts, b"".as_slice())] {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(content)?;
        }
        std::fs::write(dir.path().join("id_ed25519.pub"), format!("{public}\n"))?;
        Ok(AccessKey { dir, public, private_key, known_hosts })
    }

    /// The authorized_keys line: `ssh-ed25519 AAAA… virt-pipeline-<hex>`.
    pub fn public_line(&self) -> &str {
        &self.public
    }

    /// The private key, OpenSSH format, mode 0600.
    pub fn private_key_path(&self) -> &Path {
        &self.private_key
    }

    /// The run's own known_hosts, filled by [`Session::connect`].
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// The private directory holding the key files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Where a target's sshd is reached: `name` is how steps and logs call it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Endpoint {
    /// The host as known_hosts and ssh name it: `host`, or `[host]:port` off port 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// OpenSSH's client to `endpoint` with the run's key, checking the host key [`Session`]
/// recorded in the key's known_hosts strictly, and no user configuration. A command's words
/// go after it: `--` ends ssh's options first, so none of them is read as one.
pub fn openssh_command(endpoint: &Endpoint, key: &AccessKey) -> std::process::Command {
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(key.private_key_path())
        .args(["-p", &endpoint.port.to_string(), "-o"])
        .arg(format!("UserKnownHostsFile={}", key.known_hosts_path().display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "--"])
        .arg(format!("{}@{}", endpoint.user, endpoint.host));
    cmd
}

/// Why one connection attempt failed: worth retrying (the guest is still booting) or not.
#[derive(Debug)]
pub enum ConnectError {
    NotYet(anyhow::Error),
    /// sshd answered and said no to the key (a decision, not a guest still booting).
    Refused(anyhow::Error),
    Fatal(anyhow::Error),
}

/// How long one blocking step of the protocol (TCP connect, handshake, authentication,
/// opening a channel) may take before the attempt counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// libssh2's "would block" in non-blocking mode.
const EAGAIN: i32 = -37;

pub struct Session {
    session: ssh2::Session,
    stream: TcpStream,
    endpoint: Endpoint,
    deadline: Mutex<Option<Instant>>,
}

impl Session {
    /// Connects and authenticates with the key file, retrying until `timeout` (a booting
    /// guest refuses connections for a while); records the host key in `known_hosts`
    /// (`[host]:port ssh-ed25519 …`) so rsync/ssh/containers can use it strictly.
    pub fn connect(endpoint: &Endpoint, key: &Path, known_hosts: &Path, timeout: Duration) -> Result<Session> {
        let start = Instant::now();
        loop {
            crate::base::interrupt::check()?;
            match Session::connect_once(endpoint, key, known_hosts) {
                Ok(session) => return Ok(session),
                Err(ConnectError::Fatal(e) | ConnectError::Refused(e)) => return Err(e),
                Err(ConnectError::NotYet(e)) if start.elapsed() >= timeout => {
                    return Err(e.context(format!(
                        "no SSH connection to {} ({}@{}:{}) within {}s",
                        endpoint.name,
                        endpoint.user,
                        endpoint.host,
                        endpoint.port,
                        timeout.as_secs()
                    )))
                }
                Err(ConnectError::NotYet(_)) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    /// One attempt: TCP, handshake, host key recorded, public-key authentication.
    pub fn connect_once(endpoint: &Endpoint, key: &Path, known_hosts: &Path) -> Result<Session, ConnectError> {
        let not_yet = |e: anyhow::Error| ConnectError::NotYet(e);
        let addr = (endpoint.host.as_str(), endpoint.port)
            .to_socket_addrs()
            .map_err(|e| ConnectError::Fatal(anyhow!("cannot resolve {}: {e}", endpoint.host)))?
            .next()
            .ok_or_else(|| ConnectError::Fatal(anyhow!("{} resolves to no address", endpoint.host)))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| not_yet(anyhow!("cannot connect to {addr}: {e}")))?;
        let mut session = ssh2::Session::new().map_err(|e| ConnectError::Fatal(e.into()))?;
        session.set_tcp_stream(stream.try_clone().map_err(|e| ConnectError::Fatal(e.into()))?);
        session.set_timeout(STEP_TIMEOUT.as_millis() as u32);
        // Ask for the ed25519 host key first: it is the one every sshd since 6.5 has, and
        // the one OpenSSH clients then find in known_hosts.
        let _ = session.method_pref(
            ssh2::MethodType::HostKey,
            "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa",
        );
        // Under user-mode networking qemu accepts the connection before the guest listens,
        // then drops it: a failed handshake means "not yet".
        session.handshake().map_err(|e| not_yet(anyhow!("SSH handshake with {addr} failed: {e}")))?;
        let (host_key, kind) = session.host_key().ok_or_else(|| not_yet(anyhow!("{addr} sent no host key")))?;
        let line = known_hosts_line(&endpoint.known_hosts_name(), host_key, kind).map_err(ConnectError::Fatal)?;
        record_host_key(known_hosts, &endpoint.known_hosts_name(), &line).map_err(ConnectError::Fatal)?;

        if let Err(e) = session.userauth_pubkey_file(&endpoint.user, None, key, None) {
            return Err(match e.code() {
                // LIBSSH2_ERROR_FILE: the key file itself could not be used.
                ssh2::ErrorCode::Session(-16) => {
                    ConnectError::Fatal(anyhow!("cannot use the SSH key {}: {e}", key.display()))
                }
                // Authentication failed / public key unverified: the server said no.
                ssh2::ErrorCode::Session(-18) | ssh2::ErrorCode::Session(-19) => ConnectError::Refused(anyhow!(
                    "the SSH server of {} ({addr}) refused the key for user {}: {e}; check /etc/ssh/sshd_config in the image (`PermitRootLogin prohibit-password` or `yes` for root, `PubkeyAuthentication yes`, `AuthorizedKeysFile` including .ssh/authorized_keys)",
                    endpoint.name, endpoint.user
                )),
                // A transport error: sshd went away mid-way (still starting up).
                _ => not_yet(anyhow!("SSH authentication with {addr} failed: {e}")),
            });
        }
        if !session.authenticated() {
            return Err(ConnectError::Refused(anyhow!(
                "the SSH server of {} did not accept the run's key",
                endpoint.name
            )));
        }
        Ok(Session { session, stream, endpoint: endpoint.clone(), deadline: Mutex::new(None) })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Commands started after this fail once `deadline` passes (the remote side is left to
    /// the caller, who shuts the VM down).
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        if let Ok(mut d) = self.deadline.lock() {
            *d = deadline;
        }
    }

    /// Virter's shell step: `env` exported first, then the whole script written to one
    /// `sh` session's stdin (no pty, no `set -e` added); output lines (stdout and stderr)
    /// passed to `output` as they come; returns the shell's exit status.
    pub fn run_script(
        &self,
        script: &str,
        env: &BTreeMap<String, String>,
        output: &mut dyn FnMut(&str),
    ) -> Result<i32> {
        let mut input = String::new();
        for (name, value) in env {
            if !valid_env_name(name) {
                bail!("`{name}` is not a valid environment variable name");
            }
            input.push_str(&format!("export {name}={}\n", shell_quote(value)));
        }
        input.push_str(script);
        if !script.ends_with('\n') {
            input.push('\n');
        }
        self.run_channel("sh", input.as_bytes(), output)
    }

    /// One command, its exit status and combined output.
    pub fn exec(&self, command: &str) -> Result<(i32, String)> {
        let mut text = String::new();
        let status = self.run_channel(command, b"", &mut |line| {
            text.push_str(line);
            text.push('\n');
        })?;
        Ok((status, text))
    }

    fn run_channel(&self, command: &str, stdin: &[u8], output: &mut dyn FnMut(&str)) -> Result<i32> {
        let what = || format!("`{}` on {}", first_line(command), self.endpoint.name);
        self.session.set_blocking(true);
        let mut channel =
            self.session.channel_session().with_context(|| format!("cannot open an SSH channel for {}", what()))?;
        channel.exec(command).with_context(|| format!("cannot start {}", what()))?;
        self.session.set_blocking(false);
        let result = self.pump(&mut channel, stdin, output);
        self.session.set_blocking(true);
        if let Err(e) = result {
            // Closing the channel waits for the guest's answer: briefly, it may be hung.
            self.session.set_timeout(2000);
            drop(channel);
            self.session.set_timeout(STEP_TIMEOUT.as_millis() as u32);
            return Err(e.context(what()));
        }
        let _ = channel.wait_close();
        let status = channel.exit_status().with_context(|| format!("no exit status for {}", what()))?;
        if let Ok(Some(signal)) = channel.exit_signal().map(|s| s.exit_signal) {
            bail!("{} was killed by signal {signal}", what());
        }
        Ok(status)
    }

    /// Feeds stdin and reads stdout/stderr until the remote side closes its output.
    fn pump(&self, channel: &mut ssh2::Channel, stdin: &[u8], output: &mut dyn FnMut(&str)) -> Result<()> {
        let mut written = 0;
        let mut eof_sent = false;
        let mut lines = [LineBuffer::default(), LineBuffer::default()];
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            crate::base::interrupt::check()?;
            if let Some(deadline) = self.deadline.lock().ok().and_then(|d| *d) {
                if Instant::now() >= deadline {
                    bail!("the stage's time limit passed while it ran");
                }
            }
            let mut progress = false;
            if written < stdin.len() {
                match channel.write(&stdin[written..]) {
                    Ok(n) => {
                        written += n;
                        progress |= n > 0;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // The command may exit without reading all of its input.
                    Err(_) => written = stdin.len(),
                }
            } else if !eof_sent {
                match channel.send_eof() {
                    Ok(()) => eof_sent = true,
                    Err(e) if e.code() == ssh2::ErrorCode::Session(EAGAIN) => {}
                    Err(_) => eof_sent = true,
                }
            }
            for (i, lb) in lines.iter_mut().enumerate() {
                let read = if i == 0 { channel.read(&mut buf) } else { channel.stderr().read(&mut buf) };
                match read {
                    Ok(0) => {}
                    Ok(n) => {
                        progress = true;
                        lb.push(&buf[..n], output);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(anyhow!("reading the output failed: {e}")),
                }
            }
            if !progress && channel.eof() {
                for lb in &mut lines {
                    lb.finish(output);
                }
                return Ok(());
            }
            if !progress {
                self.wait_socket(written < stdin.len() || !eof_sent)?;
            }
        }
    }

    /// Waits until the socket is ready in the direction libssh2 is blocked on, at most a
    /// short while (so signals and deadlines are noticed).
    fn wait_socket(&self, want_write: bool) -> Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let dirs = self.session.block_directions();
        let mut flags = PollFlags::POLLIN;
        if want_write || matches!(dirs, ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both) {
            flags |= PollFlags::POLLOUT;
        }
        let mut fds = [PollFd::new(self.stream.as_fd(), flags)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(anyhow!("waiting on the SSH connection failed: {e}")),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.session.set_blocking(true);
        self.session.set_timeout(2000);
        let _ = self.session.disconnect(None, "done", None);
    }
}

/// The longest line passed on whole: a guest printing without newlines (a progress meter,
/// binary output) has its output passed on in pieces of this size, not held without bound.
const MAX_LINE: usize = 64 << 10;

/// Splits a byte stream into lines as they complete.
#[derive(Default)]
struct LineBuffer(Vec<u8>);

impl LineBuffer {
    fn push(&mut self, data: &[u8], output: &mut dyn FnMut(&str)) {
        self.0.extend_from_slice(data);
        while let Some(pos) = self.0.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.0.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            output(text.trim_end_matches('\r'));
        }
        while self.0.len() >= MAX_LINE {
            let piece: Vec<u8> = self.0.drain(..MAX_LINE).collect();
            output(&String::from_utf8_lossy(&piece));
        }
    }

    fn finish(&mut self, output: &mut dyn FnMut(&str)) {
        if !self.0.is_empty() {
            let text = String::from_utf8_lossy(&self.0).into_owned();
            output(text.trim_end_matches('\r'));
            self.0.clear();
        }
    }
}

fn first_line(command: &str) -> &str {
    command.lines().next().unwrap_or("")
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Single-quotes a value for sh.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn known_hosts_line(name: &str, key: &[u8], kind: ssh2::HostKeyType) -> Result<String> {
    use base64::Engine;
    let algorithm = match kind {
        ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
        ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        ssh2::HostKeyType::Rsa => "ssh-rsa",
        ssh2::HostKeyType::Dss => "ssh-dss",
        ssh2::HostKeyType::Unknown => bail!("the SSH server sent a host key of an unknown type"),
    };
    Ok(format!("{name} {algorithm} {}", base64::engine::general_purpose::STANDARD.encode(key)))
}

/// Writes the host key for `name`, replacing an earlier one: each boot of a layer is a new
/// machine behind a port that may have been used before, and the first key seen on that
/// loopback port is the guest's (nothing else can sit between qemu and the guest).
fn record_host_key(known_hosts: &Path, name: &str, line: &str) -> Result<()> {
    let old = std::fs::read_to_string(known_hosts).unwrap_or_default();
    let mut text: String =
        old.lines().filter(|l| l.split_whitespace().next() != Some(name)).map(|l| format!("{l}\n")).collect();
    text.push_str(line);
    text.push('\n');
    crate::base::atomic::write(known_hosts, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_end_is_passed_on_in_bounded_pieces() {
        let mut buffer = LineBuffer::default();
        let mut got: Vec<String> = Vec::new();
        let mut out = |l: &str| got.push(l.to_string());
        for _ in 0..40 {
            buffer.push(&[b'.'; 4096], &mut out);
        }
        buffer.push(b"end\nnext", &mut out);
        buffer.finish(&mut out);
        assert_eq!(
            got.iter().map(|l| l.len()).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 40 * 4096 - 2 * MAX_LINE + 3, 4]
        );
        assert!(buffer.0.capacity() <= 2 * MAX_LINE + 8192, "what is held stays bounded");
    }

    #[test]
    fn key_files_are_private_and_openssh() {
        use std::os::unix::fs::PermissionsExt;
        let key = AccessKey::generate().unwrap();
        assert!(key.public_line().starts_with("ssh-ed25519 AAAA"));
        assert!(key.public_line().split(' ').nth(2).unwrap().starts_with("virt-pipeline-"));
        let private = std::fs::read_to_string(key.private_key_path()).unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(key.private_key_path()), 0o600);
        assert_eq!(mode(key.dir()), 0o700);
        let dir = key.dir().to_path_buf();
        drop(key);
        assert!(!dir.exists(), "the key directory is removed with the key");
    }

    #[test]
    fn two_keys_differ() {
        let (a, b) = (AccessKey::generate().unwrap(), AccessKey::generate().unwrap());
        assert_ne!(a.public_line(), b.public_line());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert!(valid_env_name("_A1"));
        assert!(!valid_env_name("1A"));
        assert!(!valid_env_name("A-B"));
    }

    #[test]
    fn host_key_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        record_host_key(&kh, "[127.0.0.1]:2222", "[127.0.0.1]:2222 ssh-ed25519 AAAA1").unwrap();
        record_host_key(&kh, "[127.0.0.1]:2223", "[127.0.0.1]:2223 ssh-ed25519 AAAA2").unwrap();
        record_host_key(&kh, "[127.0.0.1]:2222", "[127.0.0.1]:2222 ssh-ed25519 AAAA3").unwrap();
        let text = std::fs::read_to_string(&kh).unwrap();
        assert_eq!(text, "[127.0.0.1]:2223 ssh-ed25519 AAAA2\n[127.0.0.1]:2222 ssh-ed25519 AAAA3\n");
    }
}

/// Against a real OpenSSH server on 127.0.0.1 (no VM): the project's own sshd, with a host
/// key and authorized_keys of the test's own.
#[cfg(test)]
mod sshd_tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    struct Sshd {
        child: Child,
        dir: tempfile::TempDir,
        host_key: AccessKey,
        port: u16,
    }

    impl Drop for Sshd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn user() -> String {
        let out = Command::new("id").arg("-un").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn sshd(authorized: &str) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let host_key = AccessKey::generate().unwrap();
        let port = crate::vm::free_port().unwrap();
        std::fs::write(dir.path().join("authorized_keys"), format!("{authorized}\n")).unwrap();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n",
                host_key.private_key_path().display(),
                dir.path().join("authorized_keys").display()
            ),
        )
        .unwrap();
        // As root, sshd insists on its privilege-separation directory.
        if user() == "root" {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/sshd (scripts/install-deps installs openssh-server)");
        Sshd { child, dir, host_key, port }
    }

    fn endpoint(port: u16) -> Endpoint {
        Endpoint { name: "local".into(), host: "127.0.0.1".into(), port, user: user() }
    }

    fn connect(server: &Sshd, key: &AccessKey) -> Result<Session> {
        Session::connect(
            &endpoint(server.port),
            key.private_key_path(),
            key.known_hosts_path(),
            Duration::from_secs(30),
        )
        .map_err(|e| e.context(std::fs::read_to_string(server.dir.path().join("sshd.log")).unwrap_or_default()))
    }

    #[test]
    fn host_key_recorded_and_openssh_checks_it_strictly() {
        let key = AccessKey::generate().unwrap();
        let server = sshd(key.public_line());
        let session = connect(&server, &key).unwrap();
        let (status, out) = session.exec("echo hello; echo oops >&2; exit 3").unwrap();
        assert_eq!(status, 3);
        assert!(out.contains("hello\n") && out.contains("oops\n"), "{out}");

        let known = std::fs::read_to_string(key.known_hosts_path()).unwrap();
        let host_public: Vec<&str> = server.host_key.public_line().split(' ').take(2).collect();
        assert_eq!(known.trim(), format!("[127.0.0.1]:{} {}", server.port, host_public.join(" ")));
        // OpenSSH itself accepts the recorded key with strict checking and nothing else.
        let out = Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", key.known_hosts_path().display()))
            .arg("-i")
            .arg(key.private_key_path())
            .args(["-p", &server.port.to_string(), &format!("{}@127.0.0.1", user()), "echo strict-ok"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("strict-ok"), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn script_runs_like_virter_shell_step() {
        let key = AccessKey::generate().unwrap();
        let server = sshd(key.public_line());
        let session = connect(&server, &key).unwrap();
        let env = BTreeMap::from([("GREETING".to_string(), "it's a 'test' $HOME".to_string())]);
        // No `set -e`: the failing `false` does not stop the script; the last status counts.
        let script = "echo \"$GREETING\"\nfalse\nfor i in 1 2; do\n  echo line$i\ndone\necho err >&2\nexit 7";
        let mut lines = Vec::new();
        let status = session.run_script(script, &env, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(status, 7);
        assert!(lines.contains(&"it's a 'test' $HOME".to_string()), "{lines:?}");
        assert!(lines.contains(&"line1".to_string()) && lines.contains(&"line2".to_string()), "{lines:?}");
        assert!(lines.contains(&"err".to_string()), "{lines:?}");

        // The same session serves further commands; a script's last line needs no newline.
        let mut lines = Vec::new();
        assert_eq!(
            session.run_script("printf 'no newline'", &BTreeMap::new(), &mut |l| lines.push(l.to_string())).unwrap(),
            0
        );
        assert_eq!(lines, vec!["no newline"]);
    }

    #[test]
    fn a_large_script_and_large_output_pass_through() {
        let key = AccessKey::generate().unwrap();
        let server = sshd(key.public_line());
        let session = connect(&server, &key).unwrap();
        // Larger than the SSH window in both directions.
        let script: String = (0..40_000).map(|i| format!("echo {i}\n")).collect();
        let mut count = 0;
        let mut last = String::new();
        let status = session
            .run_script(&script, &BTreeMap::new(), &mut |l| {
                count += 1;
                last = l.to_string();
            })
            .unwrap();
        assert_eq!((status, count, last.as_str()), (0, 40_000, "39999"));
    }

    #[test]
    fn a_refused_key_says_what_to_change() {
        let key = AccessKey::generate().unwrap();
        let other = AccessKey::generate().unwrap();
        let server = sshd(other.public_line());
        let err = format!("{:#}", connect(&server, &key).err().expect("the key is refused"));
        assert!(err.contains("refused the key") && err.contains("PermitRootLogin"), "{err}");
    }

    #[test]
    fn a_deadline_stops_a_hanging_command() {
        let key = AccessKey::generate().unwrap();
        let server = sshd(key.public_line());
        let session = connect(&server, &key).unwrap();
        session.set_deadline(Some(Instant::now() + Duration::from_secs(1)));
        let err = session.exec("sleep 60").expect_err("the deadline passes");
        assert!(format!("{err:#}").contains("time limit"), "{err:#}");
    }

    #[test]
    fn nothing_listening_times_out() {
        let key = AccessKey::generate().unwrap();
        let port = crate::vm::free_port().unwrap();
        let err =
            Session::connect(&endpoint(port), key.private_key_path(), key.known_hosts_path(), Duration::from_secs(2))
                .err()
                .expect("no server");
        assert!(format!("{err:#}").contains("no SSH connection"), "{err:#}");
    }
}
