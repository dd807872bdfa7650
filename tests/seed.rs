//! `pipeline seed`: the ISO's volume label as blkid (cloud-init's device probe) sees it, its
//! files read back with xorriso, and what cloud-init 22.4 (Debian 12's) makes of them: its
//! own NoCloud and ConfigDrive readers, network-config parser, cloud-config schema and
//! write_files decoding, run on the extracted volume. scripts/install-deps unpacks that
//! cloud-init (not installed as a package, whose services would run at the host's boot).
//! No VM boots here.

mod common;

use common::{bin, repo_root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDieO8acFP3jUa776+J1vicdXCiBrdom/NxsqHLss7Sx operator@example";

/// Where scripts/install-deps unpacks cloud-init's Python package.
const CLOUD_INIT: &str = "/usr/local/lib/virt-pipeline/cloud-init";

/// Reads an extracted seed volume with cloud-init's own code and prints what it got as JSON.
const READER: &str = r##"
import json, sys
from cloudinit import sources, util
from cloudinit.config import cc_write_files
from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
from cloudinit.net import network_state

fmt, root = sys.argv[1], sys.argv[2]
if fmt == "nocloud":
    from cloudinit.sources import DataSourceNoCloud as nocloud
    seeded = util.pathprefix2dict(root, required=["user-data", "meta-data"], optional=["vendor-data", "network-config"])
    data = nocloud._merge_new_seed({"meta-data": {}, "user-data": "", "vendor-data": "", "network-config": None}, seeded)
    md, userdata, netcfg = data["meta-data"], data["user-data"], data["network-config"]
    keys = sources.normalize_pubkey_data(md.get("public-keys"))
else:
    from cloudinit.sources.helpers import openstack
    results = openstack.ConfigDriveReader(root).read_v2()
    md, userdata = results["metadata"], results.get("userdata")
    # What SourceMixin.get_public_ssh_keys reads for a version 2 config drive.
    keys = sources.normalize_pubkey_data(md.get("public_keys"))
    nj = results.get("networkdata")
    netcfg = openstack.convert_net_json(nj, known_macs={}) if nj else None
if isinstance(userdata, bytes):
    userdata = userdata.decode()
out = {"instance_id": md.get("instance-id"), "hostname": md.get("local-hostname"), "keys": keys, "user_data": userdata}
if userdata.startswith("#cloud-config"):
    cfg = util.load_yaml(userdata, default={})
    validate_cloudconfig_schema(cfg, get_schema(), strict=True)
    files = []
    for f in cfg.get("write_files", []):
        content = cc_write_files.extract_contents(f.get("content", ""), cc_write_files.canonicalize_extraction(f.get("encoding")))
        files.append({"path": f["path"], "content": content.decode() if isinstance(content, bytes) else content,
                      "mode": cc_write_files.decode_perms(f.get("permissions"), 0o644), "owner": f.get("owner")})
    cfg.pop("write_files", None)
    out["config"], out["write_files"] = cfg, files
if netcfg is not None:
    ns = network_state.parse_net_config_data(netcfg)
    out["interfaces"] = [
        {"name": i["name"], "mac": i.get("mac_address"),
         "subnets": [{k: s.get(k) for k in ("type", "address", "prefix", "gateway") if s.get(k) is not None} for s in i["subnets"]]}
        for i in ns.iter_interfaces()
    ]
    out["dns"] = {"nameservers": ns.dns_nameservers, "search": ns.dns_searchdomains}
print(json.dumps(out, default=str))
"##;

fn seed(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(bin()).arg("seed").args(args).current_dir(cwd).output().expect("run pipeline");
    eprintln!(
        "$ pipeline seed {}\n--- stdout\n{}--- stderr\n{}--- exit {:?}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

/// The volume label and filesystem type as blkid reports them: cloud-init finds its seed
/// with `blkid -t LABEL=cidata` / `LABEL=config-2`.
fn blkid(iso: &Path) -> (String, String) {
    let get = |tag: &str| {
        let out = Command::new("blkid").args(["-p", "-o", "value", "-s", tag]).arg(iso).output().expect("run blkid");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    (get("LABEL"), get("TYPE"))
}

/// The ISO's tree extracted with xorriso.
fn extract(iso: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("extracted");
    let out = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/"])
        .arg(&root)
        .output()
        .expect("run xorriso (scripts/install-deps installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    root
}

/// Every file below `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn cloud_init_reads(format: &str, root: &Path) -> Value {
    assert!(
        Path::new(CLOUD_INIT).join("cloudinit").is_dir(),
        "cloud-init's Python package is missing at {CLOUD_INIT}: run scripts/install-deps"
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", READER, format])
        .arg(root)
        .env("PYTHONPATH", CLOUD_INIT)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "cloud-init's reader failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The example seed of docs/seeds.md, with its files, copied into `dir`.
fn example(dir: &Path) -> PathBuf {
    let src = repo_root().join("pipelines/seed");
    let status = Command::new("cp").arg("-a").arg(&src).arg(dir.join("seed")).status().unwrap();
    assert!(status.success());
    // A secret readable by its owner only, as a user would keep it: git records no mode
    // but the executable bit, so a checkout has it 0644.
    let secret = dir.join("seed/files/etc-app/secret.conf");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    dir.join("seed/seed-example.toml")
}

#[test]
fn nocloud_iso_is_what_cloud_init_reads() {
    let d = tempfile::tempdir().unwrap();
    let file = example(d.path());
    let iso = d.path().join("out/seed.iso");
    std::fs::create_dir_all(iso.parent().unwrap()).unwrap();
    let out = seed(d.path(), &[file.to_str().unwrap(), "--format", "nocloud", "--output", iso.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(blkid(&iso), ("cidata".into(), "iso9660".into()));
    let root = extract(&iso, d.path());
    assert_eq!(tree(&root), ["meta-data", "network-config", "user-data"]);
    let got = cloud_init_reads("nocloud", &root);
    assert_eq!(got["instance_id"], "web1.example");
    assert_eq!(got["hostname"], "web1");
    assert_eq!(got["keys"], serde_json::json!([ED25519]));
    let cfg = &got["config"];
    assert_eq!(cfg["packages"], serde_json::json!(["nginx", "curl"]), "user_data, then user_data_source");
    assert_eq!(cfg["mounts"], serde_json::json!([["/dev/vdb", "/var/lib/docker"]]));
    assert_eq!(cfg["users"][1]["system"], true, "YAML booleans stay booleans");
    let files: Vec<(String, String, u64)> = got["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (f["path"].as_str().unwrap().into(), f["content"].as_str().unwrap().into(), f["mode"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        files,
        [
            ("/etc/motd".into(), "Welcome to web1, set up by cloud-init.\n".into(), 0o644),
            ("/etc/app/app.conf".into(), "listen = 8080\n".into(), 0o644),
            ("/etc/app/secret.conf".into(), "token = changeme\n".into(), 0o600),
            ("/foobar.txt".into(), "this part is from user-data-extra.yaml".into(), 0o644),
        ]
    );
    assert_eq!(
        got["interfaces"],
        serde_json::json!([{ "name": "eth0", "mac": "52:54:00:12:34:56",
            "subnets": [{ "type": "static", "address": "10.0.2.15", "prefix": 24, "gateway": "10.0.2.2" }] }])
    );
    assert_eq!(got["dns"], serde_json::json!({ "nameservers": ["10.0.2.3"], "search": ["example.net"] }));
}

#[test]
fn configdrive_iso_is_what_cloud_init_reads() {
    let d = tempfile::tempdir().unwrap();
    let file = example(d.path());
    let iso = d.path().join("config.iso");
    // Replaced atomically when it exists.
    std::fs::write(&iso, "an older seed").unwrap();
    let out = seed(
        d.path(),
        &[
            file.to_str().unwrap(),
            "--format",
            "configdrive",
            "--output",
            "config.iso",
            "--set",
            "hostname=db1",
            "--set",
            "instance_id=7d7e2a1c-5b1e-4c39-9f0e-3a1d2b4c5e6f",
            "--set",
            "network.interfaces[0].address=10.0.2.20/24",
        ],
    );
    assert!(out.status.success());
    assert_eq!(blkid(&iso), ("config-2".into(), "iso9660".into()));
    let root = extract(&iso, d.path());
    assert_eq!(
        tree(&root),
        ["openstack/latest/meta_data.json", "openstack/latest/network_data.json", "openstack/latest/user_data"]
    );
    let got = cloud_init_reads("configdrive", &root);
    assert_eq!(got["instance_id"], "7d7e2a1c-5b1e-4c39-9f0e-3a1d2b4c5e6f", "cloud-init takes the uuid");
    assert_eq!(got["hostname"], "db1");
    assert_eq!(got["keys"], serde_json::json!([ED25519]), "the keys arrive through public_keys");
    assert_eq!(got["config"]["packages"], serde_json::json!(["nginx", "curl"]));
    assert_eq!(
        got["interfaces"],
        serde_json::json!([{ "name": "eth0", "mac": "52:54:00:12:34:56",
            "subnets": [{ "type": "static", "address": "10.0.2.20", "prefix": 24 }] }])
    );
    assert_eq!(got["dns"]["nameservers"], serde_json::json!(["10.0.2.3"]));
    // A route, not a subnet gateway, in OpenStack's format: read back as the route.
    let net: Value =
        serde_json::from_slice(&std::fs::read(root.join("openstack/latest/network_data.json")).unwrap()).unwrap();
    assert_eq!(net["networks"][0]["routes"][0]["gateway"], "10.0.2.2");
}

#[test]
fn script_mode_and_dhcp_reach_cloud_init() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("s.toml"),
        format!(
            "hostname = \"cirros\"\nssh_keys = [{ED25519:?}]\nuser_data_mode = \"script\"\nuser_data = {{ file = \"hello.sh\" }}\n[network]\n[[network.interfaces]]\nname = \"eth0\"\ndhcp = true\n"
        ),
    )
    .unwrap();
    std::fs::write(d.path().join("hello.sh"), "#!/bin/sh\necho hello > /tmp/hello\n").unwrap();
    for format in ["nocloud", "configdrive"] {
        let iso = d.path().join(format!("{format}.iso"));
        let out = seed(d.path(), &["s.toml", "--format", format, "--output", iso.to_str().unwrap()]);
        assert!(out.status.success());
        let root = extract(&iso, &d.path().join(format));
        let got = cloud_init_reads(format, &root);
        assert_eq!(got["user_data"], "#!/bin/sh\necho hello > /tmp/hello\n", "{format}");
        assert_eq!(got["keys"], serde_json::json!([ED25519]), "{format}");
        // Virtlet's `dhcp` (NoCloud) and OpenStack's `ipv4_dhcp` (ConfigDrive) both mean DHCPv4.
        let dhcp = got["interfaces"][0]["subnets"][0]["type"].as_str().unwrap().to_string();
        assert!(dhcp == "dhcp" || dhcp == "dhcp4", "{format}: {dhcp}");
    }
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("motd"), "hi\n").unwrap();
    // Links out of the seed file's directory: to a file, and inside a directory.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "not for the seed\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("shadow")).unwrap();
    std::fs::create_dir(d.path().join("tree")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("tree/linked")).unwrap();
    let private =
        "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\\n-----END OPENSSH PRIVATE KEY-----";
    let cases: &[(&str, &str)] = &[
        ("hostname = \"web1\"\nhostnme = \"x\"\n", "unknown field `hostnme`"),
        ("hostname = \"web1\"\nuser_data = \"packages: [a\\n\"\n", "user_data: not valid cloud-config YAML"),
        (&format!("hostname = \"web1\"\nssh_keys = [\"{private}\"]\n"), "ssh_keys[0]: is a private key"),
        ("hostname = \"web1\"\nssh_keys = [\"hello world\"]\n", "ssh_keys[0]: `hello world...` is not an OpenSSH public key"),
        (
            "hostname = \"web1\"\n[[write_files]]\nsource = \"motd\"\npath = \"/etc/motd\"\n[[write_files]]\nsource = \"conf.d\"\npath = \"/etc/conf.d\"\n",
            "write_files[1].source: cannot read",
        ),
        (
            "hostname = \"web1\"\n[[write_files]]\nsource = \"/proc/self/environ\"\npath = \"/etc/env\"\n",
            "write_files[0].source: /proc/self/environ lies outside the seed file's directory",
        ),
        (
            &format!(
                "hostname = \"web1\"\n[[write_files]]\nsource = \"../{}/secret\"\npath = \"/etc/motd\"\n",
                outside.path().file_name().unwrap().to_string_lossy()
            ),
            "secret lies outside the seed file's directory",
        ),
        ("hostname = \"web1\"\nuser_data_source = \"shadow\"\n", "shadow lies outside the seed file's directory"),
        ("hostname = \"web1\"\nuser_data = { file = \"/etc/hostname\" }\n", "user_data.file: /etc/hostname lies outside"),
        (
            "hostname = \"web1\"\n[[write_files]]\nsource = \"tree\"\npath = \"/etc/tree\"\n",
            "tree/linked lies outside the seed file's directory",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(d.path().join("bad.toml"), text).unwrap();
        let iso = d.path().join("seed.iso");
        let out = seed(d.path(), &["bad.toml", "--output", "seed.iso"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml") && err.contains(want), "{want}: {err}");
        assert!(!iso.exists(), "nothing at --output");
    }
    let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 4, "no temporary files either: {leftovers:?}");
    // An --output whose directory does not exist is bad input too.
    std::fs::write(d.path().join("ok.toml"), "hostname = \"web1\"\n").unwrap();
    let out = seed(d.path(), &["ok.toml", "--output", "no/such/dir/seed.iso"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!d.path().join("no").exists());
}

/// A merged document keeps PyYAML's reading of every scalar: a plain `yes` is a boolean,
/// a quoted 'on' a string (a YAML 1.2 round trip gets both wrong).
#[test]
fn yaml_1_1_scalars_survive_the_merge() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("motd"), "hi\n").unwrap();
    std::fs::write(
        d.path().join("s.toml"),
        "hostname = \"web1\"\nuser_data = \"\"\"\nssh_pwauth: yes\nbootcmd:\n- [echo, 'on']\n\"\"\"\n[[write_files]]\nsource = \"motd\"\npath = \"/etc/motd\"\n",
    )
    .unwrap();
    let iso = d.path().join("seed.iso");
    assert!(seed(d.path(), &["s.toml", "--output", iso.to_str().unwrap()]).status.success());
    let got = cloud_init_reads("nocloud", &extract(&iso, d.path()));
    assert_eq!(got["config"]["ssh_pwauth"], true);
    assert_eq!(got["config"]["bootcmd"], serde_json::json!([["echo", "on"]]));
    assert_eq!(got["write_files"][0]["path"], "/etc/motd");
}
