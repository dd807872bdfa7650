//! The firstboot stage on the debootstrapped Debian fixture, with real Puppet from Debian:
//! the seed's agent run against a `puppetserver` this test starts on the host (reached from
//! the guest as 10.0.2.2 through qemu's user networking), masterless `puppet apply`, failures
//! carrying Puppet's own messages, and scripts left for the image's first boot running once
//! under a plain qemu boot, as virt-customize's do. One boot per firstboot stage; the two
//! Puppet stages share one puppetserver. `scripts/test` runs them one at a time (the `boots`
//! group of .config/nextest.toml).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use virt_pipeline::vm::qemu::{Vm, VmConfig};

/// The fixture with Debian's Puppet agent installed: a layer shared by these tests (cached
/// after the first run). `puppet` is bookworm's transitional name; `puppet-agent` the package.
fn agent_base(fx: &DebianFixture) -> PathBuf {
    let file = fx.dir.join("firstboot-puppet-agent.toml");
    std::fs::write(
        &file,
        format!(
            r#"version = 1
from = {{ pipeline = "{}" }}
[pipeline]
name = "firstboot-puppet-agent"
[[stages]]
[stages.customize]
steps = [{{ install = ["puppet-agent"] }}]
"#,
            fx.pipeline.display()
        ),
    )
    .unwrap();
    let out = pipeline(&fx.dir, &fx.gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
    assert!(out.status.success(), "installing the Puppet agent failed:\n{}", stderr(&out));
    file
}

/// Runs a pipeline on the fixture's work directory with its logs in `logs`.
fn run(fx: &DebianFixture, file: &Path, logs: &Path) -> std::process::Output {
    pipeline(
        &fx.dir,
        &fx.gnupg,
        &["--work-dir", "work", "run", file.to_str().unwrap(), "--log-dir", logs.to_str().unwrap()],
    )
}

/// The firstboot stage's log of the newest run under `logs`.
fn firstboot_log(logs: &Path, name: &str) -> String {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(logs.join(name)).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    let run = runs.last().unwrap();
    let log = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-firstboot.log"))
        .expect("a firstboot log");
    std::fs::read_to_string(log).unwrap()
}

/// Debian's puppetserver with a configuration, CA and code directory of its own (nothing
/// under /etc/puppet is read or written), on a free port of 127.0.0.1, autosigning, its
/// certificate valid for `puppet.test`. Stopped on drop.
struct PuppetServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl PuppetServer {
    fn start(site_pp: &str) -> PuppetServer {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().display().to_string();
        for sub in ["puppet", "code/environments/production/manifests", "var", "run", "log", "conf.d"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let files = [
            (
                "puppet/puppet.conf",
                format!(
                    "[main]\nvardir = {t}/var\nlogdir = {t}/log\nrundir = {t}/run\ncodedir = {t}/code\nssldir = {t}/ssl\n\
                     [server]\ncadir = {t}/ca\ncertname = puppet.test\ndns_alt_names = puppet,puppet.test,localhost\nautosign = true\n"
                ),
            ),
            ("code/environments/production/manifests/site.pp", site_pp.to_string()),
            (
                "conf.d/puppetserver.conf",
                format!(
                    "jruby-puppet: {{\n ruby-load-path: [/usr/lib/puppetserver/ruby/vendor_ruby]\n gem-home: /var/lib/puppetserver/jruby-gems\n \
                     gem-path: [${{jruby-puppet.gem-home}}, \"/usr/lib/puppetserver/vendored-jruby-gems\"]\n server-conf-dir: {t}/puppet\n \
                     server-code-dir: {t}/code\n server-var-dir: {t}/var\n server-run-dir: {t}/run\n server-log-dir: {t}/log\n max-active-instances: 1\n}}\n\
                     http-client: {{}}\nprofiler: {{}}\n"
                ),
            ),
            ("conf.d/webserver.conf", format!("webserver: {{\n client-auth: want\n ssl-host: 127.0.0.1\n ssl-port: {port}\n}}\n")),
            ("conf.d/global.conf", format!("global: {{ logging-config: {t}/logback.xml }}\n")),
            (
                "logback.xml",
                "<configuration scan=\"false\"><appender name=\"STDOUT\" class=\"ch.qos.logback.core.ConsoleAppender\">\
                 <encoder><pattern>%d %-5p [%c{2}] %m%n</pattern></encoder></appender>\
                 <root level=\"info\"><appender-ref ref=\"STDOUT\"/></root></configuration>\n"
                    .to_string(),
            ),
        ];
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        for name in ["auth.conf", "ca.conf", "metrics.conf", "web-routes.conf"] {
            std::fs::copy(
                Path::new("/etc/puppet/puppetserver/conf.d").join(name),
                dir.path().join("conf.d").join(name),
            )
            .expect("puppetserver is installed (scripts/install-deps)");
        }
        let st = Command::new("puppetserver")
            .args(["ca", "setup", "--config", &format!("{t}/puppet/puppet.conf")])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "puppetserver ca setup failed");
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new("java");
        cmd.args(["-Xms512m", "-Xmx1g", "-Djruby.lib=/usr/share/jruby/lib", "-XX:+CrashOnOutOfMemoryError"])
            .args(["-jar", "/usr/share/puppetserver/puppetserver.jar", "--config", &format!("{t}/conf.d")])
            .args(["--bootstrap-config", "/etc/puppet/puppetserver/services.d"])
            .current_dir("/usr/share/puppetserver")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        virt_pipeline::base::interrupt::dies_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut server = PuppetServer { child, dir, port };
        let started = Instant::now();
        while !server.log().contains("Puppet Server has successfully started") {
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!("puppetserver exited ({st}):\n{}", server.log());
            }
            assert!(started.elapsed() < Duration::from_secs(300), "puppetserver did not start:\n{}", server.log());
            std::thread::sleep(Duration::from_secs(1));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn signed(&self, certname: &str) -> bool {
        self.dir.path().join("ca/signed").join(format!("{certname}.pem")).exists()
    }
}

impl Drop for PuppetServer {
    fn drop(&mut self) {
        terminate(self.child.id());
        let _ = self.child.wait();
    }
}

/// The firstboot stage's keys for an agent run as `certname` against `server`.
fn agent_stage(server: &PuppetServer, certname: &str) -> String {
    format!(
        r#"commands = ["echo '10.0.2.2 puppet.test' >> /etc/hosts"]
puppet = {{ server = "puppet.test", environment = "production", certname = "{certname}", extra_args = ["--serverport", "{}"] }}
"#,
        server.port
    )
}

fn layer_paths_absent(g: &virt_pipeline::guest::Guest, paths: &[&str]) {
    for p in paths {
        assert!(!g.exists(p).unwrap() && !g.is_symlink(p).unwrap(), "{p} is left in the layer");
    }
}

/// Everything the stage installs for a `run = true` boot, none of which the layer keeps.
const SERVICE_FILES: &[&str] = &[
    "/usr/lib/virt-sysprep",
    "/usr/lib/systemd/system/guestfs-firstboot.service",
    "/etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service",
    "/etc/init.d/guestfs-firstboot",
    "/etc/rc2.d/S99guestfs-firstboot",
    "/root/virt-sysprep-firstboot.log",
];

/// One puppetserver (its start and CA set-up take a minute) serves both Puppet tests: the
/// node `refused.example.net` gets a catalogue that fails, every other node one that works.
#[test]
fn puppet_runs_against_a_puppetserver() {
    let fx = debian_fixture();
    let base = agent_base(&fx);
    let site = "node 'refused.example.net' {\n  exec { 'refused-by-test': command => '/bin/false' }\n}\n\
                node default {\n  file { '/etc/puppet-applied': content => \"certname=${trusted['certname']} environment=${server_facts['environment']}\\n\" }\n}\n";
    let server = PuppetServer::start(site);
    puppet_agent_and_apply_configure_the_layer_and_the_guest_powers_off(&fx, &base, &server);
    failing_puppet_runs_fail_the_stage_with_puppets_messages(&fx, &base, &server);
}

/// A Puppet agent run at first boot, and masterless Puppet, in one boot: the agent in the guest gets a
/// certificate from the server and applies its catalogue, `puppet apply` applies a host
/// manifest with its module path copied in, and the guest powers itself off; the layer holds
/// the catalogue's, the manifest's and a host script's effects, and neither the copies nor
/// the firstboot machinery.
fn puppet_agent_and_apply_configure_the_layer_and_the_guest_powers_off(
    fx: &DebianFixture,
    base: &Path,
    server: &PuppetServer,
) {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "hello.sh", "#!/bin/sh\necho \"hello from $(hostname)\" > /root/hello\n");
    let module = dir.path().join("modules/motd/manifests");
    std::fs::create_dir_all(&module).unwrap();
    write_file(
        &module,
        "init.pp",
        "class motd(String $text) {\n  file { '/etc/motd-puppet': content => \"${text}\\n\", mode => '0640' }\n}\n",
    );
    write_file(dir.path(), "site.pp", "class { 'motd': text => 'configured masterless' }\n");
    let file = write_file(
        dir.path(),
        "p.toml",
        &format!(
            "version = 1\nfrom = {{ pipeline = \"{}\" }}\n[pipeline]\nname = \"firstboot-agent\"\n[[stages]]\n[stages.firstboot]\nscripts = [\"hello.sh\"]\npuppet_apply = {{ manifest = \"site.pp\", modules = \"modules\" }}\n{}timeout = \"40m\"\n",
            base.display(),
            agent_stage(server, "web1.example.net")
        ),
    );
    let logs = dir.path().join("logs");
    let out = run(fx, &file, &logs);
    assert!(out.status.success(), "the firstboot stage failed:\n{}\nserver log:\n{}", stderr(&out), server.log());
    let layer = PathBuf::from(stdout(&out).trim());
    assert!(server.signed("web1.example.net"), "the server signed the agent's certificate");

    let log = firstboot_log(&logs, "firstboot-agent");
    assert!(log.contains("the guest powered itself off"), "{log}");
    assert!(
        log.contains("console: ") && log.contains("reboot: Power down"),
        "the kernel's power-off is on the console"
    );
    assert!(log.contains("puppet-agent exit status 0") && log.contains("Applied catalog"), "{log}");

    let g = open_readonly(&[&layer]);
    g.inspect_and_mount(true).unwrap();
    assert_eq!(
        g.read_string("/etc/puppet-applied").unwrap(),
        "certname=web1.example.net environment=production\n",
        "the catalogue's effect is in the layer"
    );
    assert!(g.read_string("/root/hello").unwrap().starts_with("hello from "));
    assert_eq!(g.read_string("/etc/motd-puppet").unwrap(), "configured masterless\n", "puppet apply's effect");
    assert_eq!(g.lstat_mode("/etc/motd-puppet").unwrap() & 0o777, 0o640);
    layer_paths_absent(&g, SERVICE_FILES);
}

/// A catalogue whose resource fails (agent exit 4/6 under --detailed-exitcodes) and a
/// masterless manifest that fails to evaluate (exit 1) both run in one boot; the stage fails
/// with each script's status and Puppet's own messages, and no layer is committed.
fn failing_puppet_runs_fail_the_stage_with_puppets_messages(fx: &DebianFixture, base: &Path, server: &PuppetServer) {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "fail.pp", "fail('the manifest says no')\n");
    let file = write_file(
        dir.path(),
        "p.toml",
        &format!(
            "version = 1\nfrom = {{ pipeline = \"{}\" }}\n[pipeline]\nname = \"firstboot-fail\"\n[[stages]]\n[stages.firstboot]\npuppet_apply = {{ manifest = \"fail.pp\" }}\n{}timeout = \"40m\"\n",
            base.display(),
            agent_stage(server, "refused.example.net")
        ),
    );
    let logs = dir.path().join("logs");
    let out = run(fx, &file, &logs);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(stdout(&out).trim().is_empty(), "no layer is printed");
    assert!(err.contains("puppet-apply failed (exit status 1)") && err.contains("the manifest says no"), "{err}");
    assert!(
        err.contains("puppet-agent failed (exit status 4)") || err.contains("puppet-agent failed (exit status 6)"),
        "{err}"
    );
    assert!(err.contains("Exec[refused-by-test]") && err.contains("returned 1 instead of one of [0]"), "{err}");
    assert!(firstboot_log(&logs, "firstboot-fail").contains("the guest powered itself off"));
}

/// `run = false`: the scripts are installed as virt-customize installs them and wait; a plain
/// qemu boot of the image (no virt-pipeline involved) runs them once, in order, moving each to
/// scripts-done with its exit status, and the last one's poweroff ends the boot.
#[test]
fn scripts_left_for_the_first_boot_run_once_on_a_plain_boot() {
    let fx = debian_fixture();
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "first.sh", "#!/bin/sh\necho first >> /root/firstboot-ran\n");
    let file = write_file(
        dir.path(),
        "p.toml",
        &format!(
            "version = 1\nfrom = {{ pipeline = \"{}\" }}\n[pipeline]\nname = \"firstboot-later\"\n[[stages]]\n[stages.firstboot]\nrun = false\nscripts = [\"first.sh\"]\ncommands = [\"echo second >> /root/firstboot-ran; exit 3\", \"sync; poweroff\"]\n",
            fx.pipeline.display()
        ),
    );
    let out = run(&fx, &file, &dir.path().join("logs"));
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = PathBuf::from(stdout(&out).trim());
    let name = virt_pipeline::guest::firstboot::sanitize_name;
    let scripts = [
        "5000-0001-first-sh".to_string(),
        format!("5000-0002-{}", name("echo second >> /root/firstboot-ran; exit 3")),
        "5000-0003-sync--poweroff".to_string(),
    ];

    // The boot writes into an overlay: the cached layer stays as it is.
    let disk = dir.path().join("boot.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&layer)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    {
        let g = open_readonly(&[&disk]);
        g.inspect_and_mount(true).unwrap();
        let mut pending = g.ls("/usr/lib/virt-sysprep/scripts").unwrap();
        pending.sort();
        assert_eq!(pending, scripts);
        assert!(g.is_symlink("/etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service").unwrap());
        let unit = g.read_string("/usr/lib/systemd/system/guestfs-firstboot.service").unwrap();
        assert!(unit.contains("ExecStart=/usr/lib/virt-sysprep/firstboot.sh start"));
        assert!(unit.contains("Wants=network-online.target"));
    }

    let mut config = VmConfig::new(accel());
    config.disks.push((disk.clone(), "qcow2".into()));
    config.no_reboot = true;
    let console = dir.path().join("console.log");
    let mut vm = Vm::start(&config, &console).unwrap();
    let limit = Duration::from_secs(20 * 60);
    let status = loop {
        if let Some(st) = vm.try_exit().unwrap() {
            break st;
        }
        assert!(
            vm.started.elapsed() < limit,
            "the guest did not power off; last console lines:\n{}",
            virt_pipeline::vm::qemu::tail(&vm.console_text(), 20)
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(status.success(), "qemu: {status}");
    let console_text = vm.console_text();
    drop(vm);
    assert!(
        console_text.contains("=== Running /usr/lib/virt-sysprep/scripts/5000-0001-first-sh ==="),
        "{console_text}"
    );

    let g = open_readonly(&[&disk]);
    g.inspect_and_mount(true).unwrap();
    assert_eq!(g.read_string("/root/firstboot-ran").unwrap(), "first\nsecond\n", "each script ran once, in order");
    assert!(g.ls("/usr/lib/virt-sysprep/scripts").unwrap().is_empty(), "nothing is left to run at the next boot");
    let done = g.ls("/usr/lib/virt-sysprep/scripts-done").unwrap();
    for s in &scripts {
        assert!(done.contains(s), "{s} is in scripts-done: {done:?}");
    }
    let status = |s: &str| g.read_string(&format!("/usr/lib/virt-sysprep/scripts-done/{s}.status")).unwrap();
    assert_eq!(status(&scripts[0]).trim(), "0");
    assert_eq!(status(&scripts[1]).trim(), "3", "a failing script's status is recorded");
    let log = g.read_string("/root/virt-sysprep-firstboot.log").unwrap();
    assert!(log.contains(&format!("Exit status of {}: 3", scripts[1])), "{log}");
}

/// Bad input is refused before anything runs, naming the file and the key.
#[test]
fn bad_firstboot_input_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(dir.path());
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.path().join("x.qcow2"))
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let cases = [
        ("scripts = [\"missing.sh\"]", "stages[0].firstboot.scripts[0]", "does not exist"),
        ("run = false\ncommands = [\"true\"]\ntimeout = \"1h\"", "stages[0].firstboot.timeout", "run = false"),
        ("commands = [\"true\"]\ntimeout = \"soon\"", "stages[0].firstboot.timeout", "not a duration"),
        ("puppet_apply = { manifest = \"nope.pp\" }", "stages[0].firstboot.puppet_apply.manifest", "does not exist"),
        ("run = true", "stages[0].firstboot", "nothing to run"),
        ("puppet = { environment = \"production\" }", "server", "missing field"),
    ];
    for (keys, at, what) in cases {
        let file = write_file(
            dir.path(),
            "p.toml",
            &format!("version = 1\nfrom = {{ image = \"x.qcow2\" }}\n[pipeline]\nname = \"bad\"\n[[stages]]\n[stages.firstboot]\n{keys}\n"),
        );
        let out = pipeline(dir.path(), &gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{keys}: {err}");
        assert!(err.contains("p.toml") && err.contains(at) && err.contains(what), "{keys}: {err}");
    }
}
