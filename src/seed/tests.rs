use super::yaml::{parse_mapping, Node};
use super::*;
use std::os::unix::fs::PermissionsExt;

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDieO8acFP3jUa776+J1vicdXCiBrdom/NxsqHLss7Sx operator@example";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBB9j9/+wygtt79Ib8TLjwxJQcpXn/YDm8Te6BBIIHQMUr9zze/SmdFNNwIviUNM++RsoMpdK8iG9cLumF22bgN8= ecdsa@example";

fn seed_in(dir: &Path, text: &str, sets: &[&str]) -> Result<Seed> {
    let path = dir.join("seed.toml");
    std::fs::write(&path, text).unwrap();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Seed::load(&path, &sets)
}

fn load(text: &str) -> Seed {
    let d = tempfile::tempdir().unwrap();
    seed_in(d.path(), text, &[]).unwrap()
}

fn bad(dir: &Path, text: &str, sets: &[&str]) -> String {
    let e = seed_in(dir, text, sets).unwrap_err();
    assert_eq!(crate::base::error::exit_code(&e), 2, "{e:#}");
    format!("{e:#}")
}

fn user_data(seed: &Seed) -> Node {
    let text = seed.user_data();
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    parse_mapping(text).unwrap()
}

fn paths(doc: &Node) -> Vec<String> {
    match doc.get("write_files") {
        Some(Node::Seq(items)) => items.iter().map(|i| i.get("path").unwrap().as_str().unwrap().to_string()).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn merge_order_is_generated_then_user_data_then_source() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("motd"), "hi\n").unwrap();
    std::fs::write(
        d.path().join("extra.yaml"),
        "#cloud-config\npackages: [curl]\nwrite_files:\n- path: /from-source\n  content: s\ntimezone: UTC\n",
    )
    .unwrap();
    let text = "hostname = \"web1\"\nuser_data_source = \"extra.yaml\"\nuser_data = \"\"\"\n#cloud-config\npackages: [nginx]\nwrite_files:\n- path: /from-user\n  content: u\ntimezone: Europe/Berlin\nusers: [default]\n\"\"\"\n[[write_files]]\nsource = \"motd\"\npath = \"/etc/motd\"\n[[mounts]]\ndevice = \"/dev/vdb\"\npath = \"/data\"\n";
    let seed = seed_in(d.path(), text, &[]).unwrap();
    let doc = user_data(&seed);
    assert_eq!(paths(&doc), ["/etc/motd", "/from-user", "/from-source"], "lists append in Virtlet's order");
    assert_eq!(doc.get("packages"), parse_mapping("p: [nginx, curl]").unwrap().get("p"));
    assert_eq!(doc.get("timezone").and_then(Node::as_str), Some("UTC"), "the source file is merged last");
    assert_eq!(doc.get("mounts"), parse_mapping("m: [[/dev/vdb, /data]]").unwrap().get("m"));
    assert!(doc.get("users").is_some());
    let mut inputs = seed.inputs();
    inputs.sort();
    let mut want = vec![d.path().join("seed.toml"), d.path().join("extra.yaml"), d.path().join("motd")];
    want.sort();
    assert_eq!(inputs, want);
}

#[test]
fn overwrite_mode_replaces_top_level_keys() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("motd"), "hi\n").unwrap();
    let text = "hostname = \"web1\"\nuser_data_mode = \"overwrite\"\nuser_data = \"write_files: [{path: /from-user, content: u}]\\npackages: [a]\\n\"\n[[write_files]]\nsource = \"motd\"\npath = \"/etc/motd\"\n";
    let doc = user_data(&seed_in(d.path(), text, &[]).unwrap());
    assert_eq!(paths(&doc), ["/from-user"], "the user's write_files replace the generated ones");
    // The same file merged keeps both.
    let doc = user_data(&seed_in(d.path(), text, &["user_data_mode=merge"]).unwrap());
    assert_eq!(paths(&doc), ["/etc/motd", "/from-user"]);
}

#[test]
fn script_mode_writes_the_script_alone() {
    let seed = load(
        "hostname = \"web1\"\nuser_data_mode = \"script\"\nuser_data = \"#!/bin/sh\\necho hello > /tmp/hello\\n\"\n",
    );
    assert_eq!(seed.user_data(), "#!/bin/sh\necho hello > /tmp/hello\n");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("motd"), "hi\n").unwrap();
    let e = bad(
        d.path(),
        "hostname = \"web1\"\nuser_data_mode = \"script\"\nuser_data = \"#!/bin/sh\\n\"\n[[write_files]]\nsource = \"motd\"\npath = \"/etc/motd\"\n",
        &[],
    );
    assert!(e.contains("seed.toml: write_files: in script mode"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\nuser_data_mode = \"script\"\nuser_data = \"packages: [a]\"\n", &[]);
    assert!(e.contains("user_data") && e.contains("must start with `#!`"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\nuser_data = \"#!/bin/sh\\necho\\n\"\n", &[]);
    assert!(e.contains("user_data_mode = \\\"script\\\"") || e.contains("user_data_mode = \"script\""), "{e}");
}

#[test]
fn write_files_from_a_directory_carry_content_and_modes() {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("conf");
    std::fs::create_dir_all(conf.join("sub")).unwrap();
    std::fs::write(conf.join("a.conf"), "alpha\n").unwrap();
    std::fs::write(conf.join("sub/secret"), [0u8, 1, 2, 255]).unwrap();
    std::fs::set_permissions(conf.join("a.conf"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(conf.join("sub/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = "hostname = \"web1\"\n[[write_files]]\nsource = \"conf\"\npath = \"/etc/app/\"\nowner = \"root:adm\"\n";
    let doc = user_data(&seed_in(d.path(), text, &[]).unwrap());
    let Some(Node::Seq(items)) = doc.get("write_files") else { panic!("{doc:?}") };
    let field = |i: usize, k: &str| items[i].get(k).and_then(Node::as_str).unwrap().to_string();
    assert_eq!((field(0, "path"), field(1, "path")), ("/etc/app/a.conf".into(), "/etc/app/sub/secret".into()));
    assert_eq!((field(0, "permissions"), field(1, "permissions")), ("0640".into(), "0600".into()));
    assert_eq!(field(0, "encoding"), "b64");
    let decode = |s: String| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).unwrap();
    assert_eq!(decode(field(0, "content")), b"alpha\n");
    assert_eq!(decode(field(1, "content")), [0u8, 1, 2, 255]);
    assert_eq!(field(1, "owner"), "root:adm");
    // An explicit mode applies to every file; --set retries a number-looking mode as a string.
    let doc = user_data(&seed_in(d.path(), text, &["write_files[0].permissions=0600"]).unwrap());
    let Some(Node::Seq(items)) = doc.get("write_files") else { panic!() };
    assert!(items.iter().all(|i| i.get("permissions").and_then(Node::as_str) == Some("0600")));
}

#[test]
fn nocloud_meta_data_is_virtlets_json() {
    let seed =
        load(&format!("instance_id = \"web1.default\"\nhostname = \"web1\"\nssh_keys = [{ED25519:?}, {ECDSA:?}]\n"));
    let files = seed.files(Format::NoCloud);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["meta-data", "user-data"], "network-config only with [network]");
    let meta: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    assert_eq!(
        meta,
        serde_json::json!({ "instance-id": "web1.default", "local-hostname": "web1", "public-keys": [ED25519, ECDSA] })
    );
    assert_eq!(files[1].1, b"#cloud-config\n{}\n", "NoCloud needs a user-data file, even an empty one");
}

#[test]
fn configdrive_meta_data_has_uuid_hostname_and_a_public_keys_map() {
    let seed = load(&format!(
        "hostname = \"web1\"\nssh_keys = \"\"\"\n{ED25519}\n\n{ECDSA}\n\"\"\"\n[network]\n[[network.interfaces]]\nname = \"eth0\"\ndhcp = true\n"
    ));
    let files = seed.files(Format::ConfigDrive);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["openstack/latest/meta_data.json", "openstack/latest/user_data", "openstack/latest/network_data.json"]
    );
    let meta: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    assert_eq!(meta["uuid"], "web1", "instance-id defaults to the hostname, repeated as uuid");
    assert_eq!(meta["instance-id"], "web1");
    assert_eq!(meta["hostname"], "web1");
    assert_eq!(meta["local-hostname"], "web1");
    assert_eq!(meta["public_keys"], serde_json::json!({ "key-0": ED25519, "key-1": ECDSA }));
    assert_eq!(meta["public-keys"], serde_json::json!([ED25519, ECDSA]));
    let net: serde_json::Value = serde_json::from_slice(&files[2].1).unwrap();
    assert_eq!(net["networks"][0]["type"], "ipv4_dhcp");
}

#[test]
fn bad_input_names_the_file_and_the_key() {
    let d = tempfile::tempdir().unwrap();
    let ok = "hostname = \"web1\"\n";
    let e = bad(d.path(), "hostname = \"web1\"\nhost_name = \"x\"\n", &[]);
    assert!(e.contains("seed.toml") && e.contains("unknown field `host_name`"), "{e}");
    let e = bad(d.path(), ok, &["netwrk.x=1"]);
    assert!(e.contains("--set netwrk") && e.contains("no such key"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\nuser_data = \"packages: [a, b\\n\"\n", &[]);
    assert!(e.contains("seed.toml: user_data: not valid cloud-config YAML") && e.contains("line"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\nuser_data = \"- a\\n- b\\n\"\n", &[]);
    assert!(e.contains("not a YAML mapping"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\nuser_data = { file = \"nope.yaml\" }\n", &[]);
    assert!(e.contains("user_data.file: cannot read") && e.contains("nope.yaml"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\nuser_data = { path = \"x\" }\n", &[]);
    assert!(e.contains("user_data") && e.contains("unknown field `path`"), "{e}");
    let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
    let e = bad(d.path(), &format!("hostname = \"web1\"\nssh_keys = [{ED25519:?}, {private:?}]\n"), &[]);
    assert!(e.contains("ssh_keys[1]: is a private key"), "{e}");
    let e = bad(d.path(), ok, &["ssh_keys=ssh-ed25519 AAAAnot-base64"]);
    assert!(e.contains("ssh_keys[0]") && e.contains("not an OpenSSH public key"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\n[[write_files]]\nsource = \"missing\"\npath = \"/x\"\n", &[]);
    assert!(e.contains("write_files[0].source: cannot read") && e.contains("missing"), "{e}");
    let e = bad(d.path(), ok, &["hostname=web_1"]);
    assert!(e.contains("hostname: `web_1` is not a host name"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\n[network]\n[[network.interfaces]]\nname = \"eth0\"\n", &[]);
    assert!(e.contains("network.interfaces[0]: give dhcp = true"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\n[[mounts]]\ndevice = \"/dev/vdb\"\npath = \"data\"\n", &[]);
    assert!(e.contains("mounts[0].path"), "{e}");
    let e = bad(d.path(), "hostname = \"web1\"\nuser_data_mode = \"append\"\n", &[]);
    assert!(e.contains("user_data_mode") && e.contains("unknown variant"), "{e}");
}

#[test]
fn set_overrides_any_key() {
    let seed = {
        let d = tempfile::tempdir().unwrap();
        seed_in(
            d.path(),
            "hostname = \"web1\"\n",
            &["hostname=db1", "instance_id=12345", &format!("ssh_keys={ED25519}"), "user_data=packages: [postgresql]"],
        )
        .unwrap()
    };
    assert_eq!(seed.config().hostname, "db1");
    assert_eq!(seed.instance_id(), "12345", "a number-looking value is a string where one is wanted");
    assert_eq!(seed.config().ssh_keys, [ED25519]);
    assert!(seed.user_data().contains("postgresql"));
}

#[test]
fn formats_parse_by_name() {
    assert_eq!("nocloud".parse::<Format>().unwrap().volume_id(), "cidata");
    assert_eq!("configdrive".parse::<Format>().unwrap().volume_id(), "config-2");
    assert!("iso".parse::<Format>().unwrap_err().contains("nocloud or configdrive"));
}
