//! A real Garage cluster (https://garagehq.deuxfleurs.fr) for the tests of S3 publishing:
//! three nodes on 127.0.0.1 with replication factor 3, so that a test can kill one node and
//! still read and write through quorums of two, as in production.
//!
//! The bucket is also served by Garage's website endpoint. That endpoint picks the bucket
//! from the Host header: the port is dropped, a `root_domain` suffix is stripped if present,
//! and what remains is looked up as a global bucket alias. IP addresses are not valid bucket
//! names, so the bucket gets the extra alias `localhost` and `web_url` is
//! `http://localhost:PORT`: any plain HTTP client (curl, virt-builder) reaches it through
//! /etc/hosts, without a Host header of its own. (`http://BUCKET.web.garage.localhost:PORT`
//! works too, but only for curl, which resolves `*.localhost` itself; glibc does not.)
//! The price: S3 ListBuckets lists the bucket twice, as `localhost` and as itself.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const REGION: &str = "garage";
/// The host name of `web_url`, a global alias of the bucket (see the module's doc).
const WEB_HOST: &str = "localhost";
const DEFAULT_BINARY: &str = "/usr/local/lib/virt-pipeline/garage/bin/garage";
const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Garage {
    nodes: Vec<GarageNode>,
    key_id: String,
    secret: String,
}

/// One `garage server` process with its config, data and log under a directory of its own.
pub struct GarageNode {
    dir: PathBuf,
    config: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    web_port: u16,
    /// `None` while killed.
    child: Option<Child>,
}

impl Garage {
    /// Starts the three nodes under `dir`, joins them in one zone, waits until every node sees
    /// the cluster healthy, then creates an access key with read, write and owner rights on
    /// `bucket`, and serves `bucket` as a website.
    pub fn start(dir: &Path, bucket: &str) -> Garage {
        let binary = binary();
        let rpc_secret = hex::encode(rand::random::<[u8; 32]>());
        let ports = free_ports(NODES * 4);
        let nodes = ports
            .chunks(4)
            .enumerate()
            .map(|(i, p)| GarageNode::new(&dir.join(format!("node{i}")), &rpc_secret, [p[0], p[1], p[2], p[3]]))
            .collect();
        let mut garage = Garage { nodes, key_id: String::new(), secret: String::new() };
        for node in &mut garage.nodes {
            node.spawn(&binary);
        }
        for i in 0..NODES {
            garage.wait_until(i, "the node answers", |_| true);
        }
        let ids: Vec<String> = garage.nodes.iter().map(|n| n.id()).collect();
        for id in &ids[1..] {
            garage.admin(&["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            garage.admin(&["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        garage.admin(&["layout", "apply", "--version", "1"]);
        garage.wait_for_cluster();

        let key: serde_json::Value =
            serde_json::from_str(&garage.admin(&["json-api", "CreateKey", r#"{"name":"tests"}"#])).unwrap();
        garage.key_id = key["accessKeyId"].as_str().unwrap().to_string();
        garage.secret = key["secretAccessKey"].as_str().unwrap().to_string();
        garage.admin(&["bucket", "create", bucket]);
        garage.admin(&["bucket", "allow", "--read", "--write", "--owner", bucket, "--key", &garage.key_id]);
        garage.admin(&["bucket", "website", "--allow", bucket]);
        if bucket != WEB_HOST {
            garage.admin(&["bucket", "alias", bucket, WEB_HOST]);
        }
        garage
    }

    /// S3 endpoint of node `node`, e.g. "http://127.0.0.1:PORT".
    pub fn s3_endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    /// The bucket's root on node `node`'s website endpoint, "http://localhost:PORT" (see the
    /// module's doc for why `localhost`).
    pub fn web_url(&self, node: usize) -> String {
        format!("http://{WEB_HOST}:{}", self.nodes[node].web_port)
    }

    /// The access key id and secret.
    pub fn credentials(&self) -> (String, String) {
        (self.key_id.clone(), self.secret.clone())
    }

    /// The environment for a `pipeline` process to reach the cluster through node 0.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.s3_endpoint(0)),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Kills node `node` with SIGKILL, as a crash would, and waits until the running nodes
    /// see it down. Garage notices a dead peer only when a write to it fails, in practice on
    /// its next ping (every 15 s; 7 to 13 s were measured), and requests it sends the dead
    /// node meanwhile stall until then: waiting here keeps such stalls out of the test.
    pub fn kill(&mut self, node: usize) {
        let mut child = self.nodes[node].child.take().unwrap_or_else(|| panic!("Garage node {node} is not running"));
        child.kill().unwrap();
        child.wait().unwrap();
        self.wait_for_cluster();
    }

    /// Starts the killed node `node` again on its own config and data, and waits until every
    /// running node sees every running node.
    pub fn restart(&mut self, node: usize) {
        assert!(self.nodes[node].child.is_none(), "Garage node {node} is running");
        self.nodes[node].spawn(&binary());
        self.wait_until(node, "the node answers", |_| true);
        // A node counts a peer as up only over a connection of its own to it, and retries a
        // peer it failed to reach only every 30 s: connect both ways now rather than waiting.
        let id = self.nodes[node].id();
        for other in (0..NODES).filter(|&j| j != node && self.nodes[j].child.is_some()) {
            self.admin_on(other, &["node", "connect", &id]);
            self.admin_on(node, &["node", "connect", &self.nodes[other].id()]);
        }
        self.wait_for_cluster();
    }

    /// `garage -c CONFIG ARGS` on node 0 (on the first running node when node 0 is killed);
    /// its stdout. Panics with its stderr and the nodes' logs when it fails.
    pub fn admin(&self, args: &[&str]) -> String {
        let node = self.nodes.iter().position(|n| n.child.is_some()).expect("every Garage node is killed");
        self.admin_on(node, args)
    }

    fn admin_on(&self, node: usize, args: &[&str]) -> String {
        let out = self.cli(node, args);
        if !out.status.success() {
            panic!("garage {} failed: {}\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr), self.log_tails());
        }
        String::from_utf8(out.stdout).unwrap()
    }

    fn cli(&self, node: usize, args: &[&str]) -> Output {
        garage_command(&binary(), &self.nodes[node].config).args(args).output().unwrap()
    }

    /// Waits until every running node has the layout and is connected to every running node
    /// (with all three up: Garage's "healthy").
    fn wait_for_cluster(&self) {
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        for i in (0..NODES).filter(|&i| self.nodes[i].child.is_some()) {
            self.wait_until(i, &format!("sees {running} storage nodes up"), |h| h["storageNodesUp"] == running);
        }
    }

    /// Polls node `node`'s view of the cluster health until `ready` holds of it.
    fn wait_until(&self, node: usize, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < TIMEOUT {
            let out = self.cli(node, &["json-api", "GetClusterHealth"]);
            if out.status.success() {
                let health = serde_json::from_slice(&out.stdout).unwrap();
                if ready(&health) {
                    return;
                }
                last = health.to_string();
            } else {
                last = String::from_utf8_lossy(&out.stderr).into_owned();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("Garage node {node}: not ready ({what}) after {TIMEOUT:?}; last health: {last}\n{}", self.log_tails());
    }

    fn log_tails(&self) -> String {
        self.nodes.iter().enumerate().map(|(i, n)| format!("--- node {i} log, last lines:\n{}", n.log_tail())).collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl GarageNode {
    /// Writes the node's config; `ports` are rpc, s3, web and admin.
    fn new(dir: &Path, rpc_secret: &str, ports: [u16; 4]) -> GarageNode {
        let [rpc_port, s3_port, web_port, admin_port] = ports;
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("garage.toml");
        let text = format!(
            r#"metadata_dir = {meta:?}
data_dir = {data:?}
db_engine = "lmdb"
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[s3_web]
bind_addr = "127.0.0.1:{web_port}"
root_domain = ".web.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
            meta = dir.join("meta").to_str().unwrap(),
            data = dir.join("data").to_str().unwrap(),
        );
        std::fs::write(&config, text).unwrap();
        GarageNode { dir: dir.to_path_buf(), config, rpc_port, s3_port, web_port, child: None }
    }

    /// Runs `garage server`, appending its output to the node's log.
    fn spawn(&mut self, binary: &Path) {
        let log = OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let child = garage_command(binary, &self.config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// "NODE_ID@127.0.0.1:RPC_PORT", as `garage node connect` takes it.
    fn id(&self) -> String {
        let out = garage_command(&binary(), &self.config).args(["node", "id", "-q"]).output().unwrap();
        assert!(out.status.success(), "garage node id: {}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(id.ends_with(&format!("@127.0.0.1:{}", self.rpc_port)), "unexpected node id {id}");
        id
    }

    fn log(&self) -> PathBuf {
        self.dir.join("garage.log")
    }

    /// The last few kilobytes of the node's log.
    fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(self.log()) else { return String::new() };
        let len = file.metadata().unwrap().len();
        file.seek(SeekFrom::Start(len.saturating_sub(4096))).unwrap();
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).unwrap();
        String::from_utf8_lossy(&tail).into_owned()
    }
}

/// The Garage binary: `VIRT_PIPELINE_GARAGE`, else the one scripts/install-deps installs.
fn binary() -> PathBuf {
    let path = std::env::var_os("VIRT_PIPELINE_GARAGE").map_or_else(|| PathBuf::from(DEFAULT_BINARY), PathBuf::from);
    assert!(
        path.is_file(),
        "the Garage binary {} is missing: run scripts/install-deps (it installs {DEFAULT_BINARY}) or set \
         VIRT_PIPELINE_GARAGE to a garage binary",
        path.display()
    );
    path
}

/// `garage -c CONFIG`, deaf to the GARAGE_* variables that would override the config (a
/// developer's own cluster), and without colours in the logs.
fn garage_command(binary: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("-c").arg(config).env("NO_COLOR", "1");
    for var in ["GARAGE_RPC_HOST", "GARAGE_RPC_SECRET", "GARAGE_RPC_SECRET_FILE"] {
        cmd.env_remove(var);
    }
    cmd
}

/// `n` distinct free ports of 127.0.0.1: all are bound at once so that none repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}
