//! `pipeline exec` with Virter provisioning files against real peers and no VM: OpenSSH
//! servers started by the test on 127.0.0.1 (their own host keys and authorized_keys), real
//! rsync, and podman with runc running a locally imported busybox image. The targets are
//! this machine, so the files the steps write prove what ran.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// An sshd of the test's own on 127.0.0.1, stopped on drop.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client key, the host key and a known_hosts for the servers started with it.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        for name in ["client", "host"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(dir.path().join(name))
                .output()
                .expect("ssh-keygen (openssh-client)");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(dir.path().join("known_hosts"), "").unwrap();
        Keys { dir }
    }
    fn client(&self) -> PathBuf {
        self.dir.path().join("client")
    }
    fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    fn sshd(&self) -> Sshd {
        let d = self.dir.path();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
        let config = d.join(format!("sshd_config-{port}"));
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n",
                d.join("host").display(),
                d.join("authorized_keys").display()
            ),
        )
        .unwrap();
        // The host key, as the user's known_hosts would list it.
        let public = std::fs::read_to_string(d.join("host.pub")).unwrap();
        let public: Vec<&str> = public.split_whitespace().take(2).collect();
        let mut known = std::fs::read_to_string(self.known_hosts()).unwrap();
        known.push_str(&format!("[127.0.0.1]:{port} {}\n", public.join(" ")));
        std::fs::write(self.known_hosts(), known).unwrap();
        // sshd started as root wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = d.join(format!("sshd-{port}.log"));
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start /usr/sbin/sshd (scripts/install-deps installs openssh-server)");
        Sshd { child, port, log }
    }
}

/// `pipeline --work-dir W exec ARGS` in `cwd` (the Virter working directory).
fn exec(cwd: &Path, keys: &Keys, args: &[&str]) -> Output {
    let work = cwd.parent().unwrap().join("pipeline-work");
    let mut all: Vec<String> = vec!["--work-dir".into(), work.display().to_string(), "exec".into()];
    all.extend(["--ssh-key".into(), keys.client().display().to_string()]);
    all.extend(["--known-hosts".into(), keys.known_hosts().display().to_string()]);
    all.extend(args.iter().map(|s| s.to_string()));
    let out = Command::new(bin()).args(&all).current_dir(cwd).output().expect("run pipeline");
    eprintln!(
        "$ pipeline {}\n--- stdout\n{}--- stderr\n{}--- exit {:?}",
        all.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn sshd_log(s: &Sshd) -> String {
    std::fs::read_to_string(&s.log).unwrap_or_default()
}

/// A working directory with files for the rsync glob, and the directory the steps write to
/// "on the targets" (this machine).
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let top = tempfile::tempdir().unwrap();
    let work = top.path().join("work");
    let remote = top.path().join("remote");
    std::fs::create_dir_all(work.join("files/sub")).unwrap();
    std::fs::create_dir_all(&remote).unwrap();
    for (f, text) in [("a.conf", "A"), ("b.conf", "B"), ("skip.txt", "no"), ("sub/c.conf", "nested")] {
        std::fs::write(work.join("files").join(f), text).unwrap();
    }
    (top, work, remote)
}

#[test]
fn a_virter_file_runs_shell_rsync_and_container_steps_on_two_targets() {
    let image = busybox_image();
    let keys = Keys::new();
    let (s1, s2) = (keys.sshd(), keys.sshd());
    let (_top, work, remote) = setup();
    let r = remote.display();
    // Virter's format as Virter writes it: Go templates, a global env overridden per step,
    // a multi-line script, a Go glob, a container step with copy.
    let provisioning = format!(
        r#"version = 1

[values]
Dest = "/nonexistent/overridden-by-set"
Image = "{image}"
Greeting = "hello"

[env]
MARK = "global"

[[steps]]
[steps.shell]
script = """
port=${{SSH_CONNECTION##* }}
mkdir -p "$DEST/rsync"
echo "$GREETING" > "$DEST/greeting"
for i in 1 2 3; do
  echo "line $i" >> "$DEST/multi-$port"
done
echo "$MARK" > "$DEST/mark-own"
"""
[steps.shell.env]
DEST = "{{{{.Dest}}}}"
GREETING = "{{{{ .Greeting }}}} from {{{{if .Dest}}}}the values{{{{end}}}}"
MARK = "step"

[[steps]]
[steps.shell]
script = 'echo "$MARK" > "$DEST/mark-global"'
env = {{ DEST = "{{{{.Dest}}}}" }}

[[steps]]
[steps.rsync]
source = "files/*.conf"
dest = "{r}/rsync/"

[[steps]]
[steps.container]
image = "{{{{.Image}}}}"
pull = "Never"
command = ["sh", "-c", "mkdir -p /tmp/out && cd /tmp/out && echo \"$TARGETS\" > targets && echo \"$VIRTER_ACCESS_NETWORK\" > network && echo \"$TEXT\" > text && echo \"$SSH_PRIVATE_KEY\" | head -n 1 > key-env && head -n 1 /root/.ssh/id_rsa > key-file && cat /etc/ssh/ssh_config.virter > ssh_config && cat /root/.ssh/known_hosts > known_hosts && ls /virter/workspace/files > workspace"]
[steps.container.env]
TEXT = "{{{{.Greeting}}}} container"
[steps.container.copy]
source = "/tmp/out"
dest = "copied"
"#
    );
    std::fs::write(work.join("provisioning.toml"), provisioning).unwrap();
    let t1 = format!("root@127.0.0.1:{}", s1.port);
    let t2 = format!("127.0.0.1:{}", s2.port);
    let set = format!("values.Dest={r}");
    let out = exec(&work, &keys, &["-p", "provisioning.toml", "--set", &set, &t1, &t2]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", sshd_log(&s1), sshd_log(&s2));

    // shell: templated env, step env over [env], the multi-line script on both targets.
    assert_eq!(read(&remote.join("greeting")), "hello from the values\n");
    for s in [&s1, &s2] {
        assert_eq!(read(&remote.join(format!("multi-{}", s.port))), "line 1\nline 2\nline 3\n");
    }
    assert_eq!(read(&remote.join("mark-own")), "step\n");
    assert_eq!(read(&remote.join("mark-global")), "global\n");
    // rsync: Go's `*` matched the two .conf files, not the .txt nor the one in sub/.
    let mut sent: Vec<String> = std::fs::read_dir(remote.join("rsync"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    sent.sort();
    assert_eq!(sent, ["a.conf", "b.conf"]);
    assert_eq!(read(&remote.join("rsync/a.conf")), "A");
    // container: Virter's environment and binds, copied out into the working directory.
    let copied = work.join("copied");
    let names = format!("127.0.0.1-{},127.0.0.1-{}\n", s1.port, s2.port);
    assert_eq!(read(&copied.join("targets")), names);
    assert_eq!(read(&copied.join("network")), "127.0.0.1/8\n");
    assert_eq!(read(&copied.join("text")), "hello container\n");
    assert_eq!(read(&copied.join("key-env")), "-----BEGIN OPENSSH PRIVATE KEY-----\n");
    assert_eq!(read(&copied.join("key-file")), "-----BEGIN OPENSSH PRIVATE KEY-----\n");
    let config = read(&copied.join("ssh_config"));
    assert!(
        config
            .contains(&format!("Host 127.0.0.1-{}\n\tHostName 127.0.0.1\n\tPort {}\n\tUser root\n", s1.port, s1.port)),
        "{config}"
    );
    let known = read(&copied.join("known_hosts"));
    assert!(known.contains(&format!("[127.0.0.1]:{} ssh-ed25519 ", s2.port)), "{known}");
    assert_eq!(read(&copied.join("workspace")), "a.conf\nb.conf\nskip.txt\nsub\n");
    // The container is gone.
    let ps = Command::new("podman").args(["ps", "-a", "--format", "{{.Names}}"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("virter-127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn a_failing_step_stops_the_run_and_its_status_is_the_exit_code() {
    let image = busybox_image();
    let keys = Keys::new();
    let s = keys.sshd();
    let (_top, work, remote) = setup();
    let target = format!("root@127.0.0.1:{}", s.port);
    let r = remote.display();
    std::fs::write(
        work.join("fails.toml"),
        format!(
            "version = 1\n[[steps]]\n[steps.shell]\nscript = \"\"\"\necho before > {r}/before\nexit 7\necho after > {r}/after\n\"\"\"\n[[steps]]\n[steps.shell]\nscript = \"touch {r}/next-step\"\n"
        ),
    )
    .unwrap();
    let out = exec(&work, &keys, &["-p", "fails.toml", &target]);
    assert_eq!(out.status.code(), Some(7), "{}", sshd_log(&s));
    assert!(stderr(&out).contains("steps[0] (shell)") && stderr(&out).contains("status 7"), "{}", stderr(&out));
    assert!(remote.join("before").exists());
    assert!(!remote.join("after").exists() && !remote.join("next-step").exists());

    // A container's status passes through too, and copy runs although it failed.
    std::fs::write(
        work.join("container-fails.toml"),
        format!(
            "version = 1\n[[steps]]\n[steps.container]\nimage = \"{image}\"\npull = \"Never\"\ncommand = [\"sh\", \"-c\", \"mkdir -p /tmp/o && echo partial > /tmp/o/result && exit 5\"]\ncopy = {{ source = \"/tmp/o\", dest = \"out\" }}\n"
        ),
    )
    .unwrap();
    let out = exec(&work, &keys, &["-p", "container-fails.toml", &target]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(read(&work.join("out/result")), "partial\n");
}

#[test]
fn steps_from_set_alone_run() {
    let keys = Keys::new();
    let s = keys.sshd();
    let (_top, work, remote) = setup();
    let target = format!("127.0.0.1:{}", s.port);
    let script = format!("steps[0].shell.script=env > {}/env-out", remote.display());
    let out = exec(&work, &keys, &["--set", &script, "--set", "steps[0].shell.env.FROM_SET=yes", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", sshd_log(&s));
    assert!(read(&remote.join("env-out")).lines().any(|l| l == "FROM_SET=yes"));
}

#[test]
fn bad_input_exits_2_before_any_step_runs() {
    let keys = Keys::new();
    // No server is needed: nothing may be contacted. The port is closed.
    let target = "127.0.0.1:1";
    let (_top, work, remote) = setup();
    let marker = remote.join("ran");
    let first = format!("[[steps]]\n[steps.shell]\nscript = \"touch {}\"\n", marker.display());
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        ("unknown step type", format!("version = 1\n{first}[[steps]]\n[steps.ansible]\nplaybook = \"x\"\n"), vec![], "ansible"),
        ("not TOML", "version = 1\n[[steps]\n".to_string(), vec![], "line 2"),
        (
            "undefined value",
            format!("version = 1\n{first}[[steps]]\n[steps.shell]\nscript = \"x\"\nenv = {{ A = \"{{{{.Undefined}}}}\" }}\n"),
            vec![],
            "`Undefined`",
        ),
        (
            "rsync source outside",
            format!("version = 1\n{first}[[steps]]\n[steps.rsync]\nsource = \"../*\"\ndest = \"/tmp\"\n"),
            vec![],
            "outside the working directory",
        ),
        (
            "no container engine",
            format!("version = 1\n{first}[[steps]]\n[steps.container]\nimage = \"x\"\n"),
            vec!["--container-engine", "no-such-engine"],
            "no-such-engine",
        ),
        ("bad target", format!("version = 1\n{first}"), vec!["--", "root@host:notaport"], "notaport"),
    ];
    for (what, text, extra, needle) in cases {
        std::fs::write(work.join("p.toml"), text).unwrap();
        let mut args = vec!["-p", "p.toml"];
        args.extend(extra.iter().copied());
        if !extra.contains(&"--") {
            args.push(target);
        }
        let out = exec(&work, &keys, &args);
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(stderr(&out).contains(needle), "{what}: {}", stderr(&out));
        assert!(!marker.exists(), "{what}: a step ran");
    }
    // Neither a file nor --set: nothing to run.
    let out = exec(&work, &keys, &[target]);
    assert_eq!(out.status.code(), Some(2));
}
