//! Scripts that run once on a guest's next boot, installed the way virt-customize and
//! virt-builder `--firstboot` install them, so an image prepared by either tool behaves the
//! same: `/usr/lib/virt-sysprep/firstboot.sh` runs every executable file of
//! `/usr/lib/virt-sysprep/scripts/` in name order (`PPPP-NNNN-name`: priority, then the order
//! they were added), moving each to `scripts-done/` before it runs so that it runs once; a
//! systemd unit `guestfs-firstboot.service` (enabled for `multi-user.target`) and sysvinit
//! links start it; its output goes to `/root/virt-sysprep-firstboot.log`.
//!
//! Two things differ, where virt-customize is weak: each script's exit status and output are
//! kept beside it in `scripts-done/` (`NAME.status`, `NAME.log`) instead of the directory being
//! emptied, so a failure can be read back; and the unit waits for `network-online.target`, not
//! only `network.target`, so scripts that talk to a server (Puppet) find the network up.
//! virt-customize's own firstboot.sh runs scripts installed here, and this one runs
//! virt-customize's: the layout is the same.

use super::inspect::Inspection;
use super::Guest;
use anyhow::{bail, Result};

pub const DIR: &str = "/usr/lib/virt-sysprep";
pub const SCRIPTS: &str = "/usr/lib/virt-sysprep/scripts";
pub const DONE: &str = "/usr/lib/virt-sysprep/scripts-done";
pub const RUNNER: &str = "/usr/lib/virt-sysprep/firstboot.sh";
pub const LOG: &str = "/root/virt-sysprep-firstboot.log";
pub const UNIT: &str = "/usr/lib/systemd/system/guestfs-firstboot.service";
const TARGET: &str = "multi-user.target";

/// virt-customize's default priority.
pub const DEFAULT_PRIORITY: u32 = 5000;

const RUNNER_SCRIPT: &str = r#"#!/bin/sh -

### BEGIN INIT INFO
# Provides:          virt-sysprep
# Required-Start:    $null
# Should-Start:      $all
# Required-Stop:     $null
# Should-Stop:       $all
# Default-Start:     2 3 5
# Default-Stop:      0 1 6
# Short-Description: Start scripts to run once at next boot
# Description:       Start scripts to run once at next boot
#	These scripts run the first time the guest boots,
#	and are then moved to scripts-done. Output or errors from the scripts
#	are written to ~root/virt-sysprep-firstboot.log; each script's own
#	output and exit status are kept in scripts-done as NAME.log and NAME.status.
### END INIT INFO

# Installed by virt-pipeline; compatible with virt-customize --firstboot.
d=/usr/lib/virt-sysprep/scripts
d_done=/usr/lib/virt-sysprep/scripts-done
logfile=~root/virt-sysprep-firstboot.log

echo "$0" "$@" 2>&1 | tee -a $logfile
echo "Scripts dir: $d" 2>&1 | tee -a $logfile

if test "$1" = "start"
then
  mkdir -p $d_done
  for f in $d/* ; do
    if test -x "$f"
    then
      b=$(basename "$f")
      # move the script to the 'scripts-done' directory, so it is not
      # executed again at the next boot
      mv "$f" $d_done
      rm -f "$d_done/$b.status" "$d_done/$b.log"
      echo '=== Running' "$f" '===' 2>&1 | tee -a $logfile
      { "$d_done/$b"; echo $? > "$d_done/$b.status"; } 2>&1 | tee -a $logfile "$d_done/$b.log"
      echo "=== Exit status of $b: $(cat "$d_done/$b.status" 2>/dev/null) ===" 2>&1 | tee -a $logfile
      # A later script may power the guest off: what is recorded must be on the disk.
      sync
    fi
  done
fi
"#;

fn unit_text() -> String {
    format!(
        "[Unit]
Description=libguestfs firstboot service
Wants=network-online.target
After=network.target network-online.target
Before=prefdm.service

[Service]
Type=oneshot
ExecStart={RUNNER} start
RemainAfterExit=yes
StandardOutput=journal+console
StandardError=inherit
TimeoutSec=0

[Install]
WantedBy={TARGET}
"
    )
}

/// virt-customize's name sanitising: characters other than `[A-Za-z0-9_]` become `-`, at
/// most 60 of them.
pub fn sanitize_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).take(60).collect()
}

/// The sequence number of a `PPPP-NNNN-name` script name.
fn sequence(name: &str) -> Option<u32> {
    let mut parts = name.splitn(3, '-');
    let (prio, seq) = (parts.next()?, parts.next()?);
    (prio.len() == 4 && prio.bytes().all(|b| b.is_ascii_digit())).then_some(())?;
    seq.parse().ok()
}

/// Installs the firstboot service (once) and scripts into a mounted Linux guest. Remembers
/// which of the service's files were not there before, so they can be removed again.
pub struct Installer<'a> {
    g: &'a Guest,
    next: u32,
    created: Vec<String>,
}

impl<'a> Installer<'a> {
    pub fn new(g: &'a Guest, os: &Inspection) -> Result<Installer<'a>> {
        if !os.is_linux() {
            bail!("firstboot scripts are supported on Linux guests; this one is {} ({})", os.os_type, os.distro);
        }
        let mut inst = Installer { g, next: 1, created: Vec::new() };
        // The log the boot will write counts as the service's.
        inst.note_new(LOG)?;
        // Numbers continue after the scripts already pending or done, so scripts added by an
        // earlier stage (or by virt-customize) keep running first and no name is reused.
        for dir in [SCRIPTS, DONE] {
            if g.is_dir(dir)? {
                for name in g.ls(dir)? {
                    if let Some(n) = sequence(&name) {
                        inst.next = inst.next.max(n + 1);
                    }
                }
            }
        }
        inst.install_service(os)?;
        Ok(inst)
    }

    /// The service's files this installer created (absent from the guest before).
    pub fn created(&self) -> &[String] {
        &self.created
    }

    fn note_new(&mut self, path: &str) -> Result<()> {
        if !self.g.exists(path)? && !self.g.is_symlink(path)? {
            self.created.push(path.to_string());
        }
        Ok(())
    }

    fn write(&mut self, path: &str, content: &[u8], mode: u32) -> Result<()> {
        self.note_new(path)?;
        self.g.write(path, content)?;
        self.g.chmod(mode, path)?;
        Ok(())
    }

    fn link(&mut self, target: &str, link: &str) -> Result<()> {
        self.note_new(link)?;
        self.g.ln_sf(target, link)?;
        Ok(())
    }

    /// Makes a directory, recording it (or its outermost new parent) for removal.
    pub fn mkdir(&mut self, dir: &str) -> Result<()> {
        if !self.g.is_dir(dir)? {
            // Only the outermost new directory needs recording: removal is recursive.
            let outer =
                std::iter::successors(Some(dir), |d| d.rsplit_once('/').map(|(p, _)| p).filter(|p| !p.is_empty()))
                    .filter(|d| !self.g.is_dir(d).unwrap_or(true))
                    .last()
                    .unwrap_or(dir)
                    .to_string();
            self.created.push(outer);
            self.g.mkdir_p(dir)?;
        }
        Ok(())
    }

    fn install_service(&mut self, os: &Inspection) -> Result<()> {
        self.mkdir(SCRIPTS)?;
        self.write(RUNNER, RUNNER_SCRIPT.as_bytes(), 0o755)?;
        // Both systemd and sysvinit, as virt-customize does: the init system can change, and
        // the script runs once whichever starts it.
        let systemd = self.g.is_dir("/etc/systemd/system")?;
        if systemd {
            self.mkdir("/usr/lib/systemd/system")?;
            self.write(UNIT, unit_text().as_bytes(), 0o644)?;
            let wants = format!("/etc/systemd/system/{TARGET}.wants");
            self.mkdir(&wants)?;
            self.link(UNIT, &format!("{wants}/guestfs-firstboot.service"))?;
            // libguestfs <= 1.37.17 enabled it for default.target.
            self.g.rm_f("/etc/systemd/system/default.target.wants/guestfs-firstboot.service")?;
        }
        if self.g.is_dir("/etc/rc.d")? || self.g.is_dir("/etc/init.d")? {
            if os.is_debian_family() {
                self.mkdir("/etc/init.d")?;
                self.link(RUNNER, "/etc/init.d/guestfs-firstboot")?;
                for level in [2, 3, 5] {
                    self.mkdir(&format!("/etc/rc{level}.d"))?;
                    self.link("../init.d/guestfs-firstboot", &format!("/etc/rc{level}.d/S99guestfs-firstboot"))?;
                }
            } else if os.is_redhat_family() {
                for level in [2, 3, 5] {
                    self.mkdir(&format!("/etc/rc.d/rc{level}.d"))?;
                    self.link(RUNNER, &format!("/etc/rc.d/rc{level}.d/S99guestfs-firstboot"))?;
                }
            } else if matches!(os.distro.as_str(), "opensuse" | "sles" | "suse-based") {
                self.link(RUNNER, "/etc/init.d/guestfs-firstboot")?;
                for level in [2, 3, 5] {
                    self.mkdir(&format!("/etc/init.d/rc{level}.d"))?;
                    self.link("../guestfs-firstboot", &format!("/etc/init.d/rc{level}.d/S99guestfs-firstboot"))?;
                }
            } else if !systemd {
                bail!(
                    "cannot install a firstboot service on {}: no systemd, and its sysvinit layout is unknown",
                    os.distro
                );
            }
        } else if !systemd {
            bail!("cannot install a firstboot service: the guest has neither /etc/systemd/system nor /etc/init.d");
        }
        Ok(())
    }

    /// The file name the next script added with `priority` and `name` gets.
    pub fn next_name(&self, priority: u32, name: &str) -> String {
        format!("{:04}-{:04}-{}", priority.min(9999), self.next, sanitize_name(name))
    }

    /// Adds an executable script; returns its file name in `scripts/`.
    pub fn add(&mut self, priority: u32, name: &str, content: &[u8]) -> Result<String> {
        let file = self.next_name(priority, name);
        self.next += 1;
        let path = format!("{SCRIPTS}/{file}");
        self.g.write(&path, content)?;
        self.g.chmod(0o755, &path)?;
        Ok(file)
    }
}

/// One script that ran: its name, exit status (none when the guest went down while it ran,
/// as when a script powers the guest off) and its output.
#[derive(Debug, Clone)]
pub struct ScriptResult {
    pub name: String,
    pub status: Option<i32>,
    pub log: String,
}

/// What the firstboot scripts left in the guest after a boot.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Scripts that ran, in the order they ran.
    pub done: Vec<ScriptResult>,
    /// Scripts still waiting in `scripts/` (they never ran).
    pub pending: Vec<String>,
    /// The whole `/root/virt-sysprep-firstboot.log`.
    pub log: String,
}

pub fn read_results(g: &Guest) -> Result<Results> {
    let mut results = Results::default();
    if g.is_dir(DONE)? {
        let mut names: Vec<String> =
            g.ls(DONE)?.into_iter().filter(|n| !n.ends_with(".status") && !n.ends_with(".log")).collect();
        names.sort();
        for name in names {
            let status_file = format!("{DONE}/{name}.status");
            let status = if g.is_file(&status_file)? { g.read_string(&status_file)?.trim().parse().ok() } else { None };
            let log_file = format!("{DONE}/{name}.log");
            let log = if g.is_file(&log_file)? { g.read_string(&log_file)? } else { String::new() };
            results.done.push(ScriptResult { name, status, log });
        }
    }
    if g.is_dir(SCRIPTS)? {
        results.pending = g.ls(SCRIPTS)?;
        results.pending.sort();
    }
    if g.is_file(LOG)? {
        results.log = g.read_string(LOG)?;
    }
    Ok(results)
}

/// Removes the record of scripts that ran, and the service files listed in `created`.
pub fn remove(g: &Guest, created: &[String]) -> Result<()> {
    g.rm_rf(DONE)?;
    // Longest paths first: links inside directories that are removed too.
    let mut paths = created.to_vec();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in paths {
        g.rm_rf(&p)?;
    }
    Ok(())
}

/// The serial of the raw disk a build boot's last script writes its record to.
pub const RECORD_SERIAL: &str = "vp-firstboot";
/// The record disk's size: the scripts' output beyond it is not recorded (the results are
/// then read from the layer instead).
pub const RECORD_DISK_BYTES: u64 = 32 << 20;
const RECORD_MAGIC: &str = "virt-pipeline-firstboot-record 1";
/// How the last script ends the boot: it waits to be stopped by the shutdown, so the runner
/// never gets to write into the layer again.
const STOP: &str = "poweroff && exec sleep 600\n";

/// The last script of a build boot. It writes a record of what the scripts left — each
/// one's output and exit status, the scripts still pending, the service's log — to the disk
/// whose serial is [`RECORD_SERIAL`], removes `remove` (what the stage installed) and the
/// scripts done, and powers the guest off: the stage reads the record (see [`read_record`])
/// and needs no appliance to read back and clean the layer. Itself silent: its own output
/// would be written while it reads it.
pub fn finish_script(remove: &[String]) -> String {
    let remove: Vec<String> = remove.iter().map(|p| shell_quote(p)).collect();
    format!(
        r#"#!/bin/sh
# The end of virt-pipeline's firstboot run: the scripts' record goes to the record disk,
# what the stage installed is removed, and the build boot stops here.
exec >/dev/null 2>&1
d={SCRIPTS}
d_done={DONE}
logfile={LOG}
sys=/sys/block
devdir=/dev
dev=
for b in "$sys"/*; do
  if [ "$(cat "$b/serial" 2>/dev/null)" = {RECORD_SERIAL} ]; then dev="$devdir/${{b##*/}}"; fi
done
record=$(mktemp /run/virt-pipeline-record.XXXXXX || mktemp /dev/shm/virt-pipeline-record.XXXXXX)
if [ -n "$dev" ] && [ -n "$record" ]; then
  {{
    echo '{RECORD_MAGIC}'
    for f in "$d_done"/*.log "$d_done"/*.status "$logfile"; do
      [ -f "$f" ] || continue
      n=$(( $(wc -c < "$f") ))
      if [ "$f" = "$logfile" ]; then echo "service-log $n"; else echo "file ${{f##*/}} $n"; fi
      head -c "$n" "$f"
    done
    for f in "$d"/*; do
      [ -e "$f" ] && echo "pending ${{f##*/}}"
    done
  }} > "$record"
  rm -rf -- {remove} "$d_done"
  echo "removed $?" >> "$record"
  cat "$record" > "$dev"
  rm -f "$record"
  sync
fi
{STOP}"#,
        remove = remove.join(" ")
    )
}

/// The record [`finish_script`] wrote onto the record disk `disk`: the results, and whether
/// the guest removed what it was told to. None when there is no whole record (the guest
/// went down before its last script, or the output did not fit).
pub fn read_record(disk: &std::path::Path) -> Result<Option<(Results, bool)>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(disk)?.take(RECORD_DISK_BYTES).read_to_end(&mut bytes)?;
    Ok(parse_record(&bytes))
}

fn parse_record(bytes: &[u8]) -> Option<(Results, bool)> {
    fn line<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a str> {
        let end = *at + bytes.get(*at..)?.iter().position(|&b| b == b'\n')?;
        let text = std::str::from_utf8(&bytes[*at..end]).ok()?;
        *at = end + 1;
        Some(text)
    }
    fn body(bytes: &[u8], at: &mut usize, size: &str) -> Option<String> {
        let n: usize = size.parse().ok()?;
        let text = String::from_utf8_lossy(bytes.get(*at..at.checked_add(n)?)?).into_owned();
        *at += n;
        Some(text)
    }
    let mut at = 0;
    if line(bytes, &mut at)? != RECORD_MAGIC {
        return None;
    }
    let mut results = Results::default();
    let (mut logs, mut statuses) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    loop {
        let text = line(bytes, &mut at)?;
        let (word, rest) = text.split_once(' ')?;
        match word {
            "file" => {
                let (name, size) = rest.rsplit_once(' ')?;
                let content = body(bytes, &mut at, size)?;
                if let Some(script) = name.strip_suffix(".log") {
                    logs.insert(script.to_string(), content);
                } else {
                    statuses.insert(name.strip_suffix(".status")?.to_string(), content.trim().parse().ok());
                }
            }
            "service-log" => results.log = body(bytes, &mut at, rest)?,
            "pending" => results.pending.push(rest.to_string()),
            "removed" => {
                // Every script that ran has a log (the runner creates it before the script
                // starts), in the order they ran: name order.
                results.done = logs
                    .into_iter()
                    .map(|(name, log)| ScriptResult { status: statuses.get(&name).copied().flatten(), name, log })
                    .collect();
                results.pending.sort();
                return Some((results, rest == "0"));
            }
            _ => return None,
        }
    }
}

/// `'text'` for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_as_virt_customize_does() {
        assert_eq!(sanitize_name("puppet agent/run.sh"), "puppet-agent-run-sh");
        assert_eq!(sanitize_name(&"x".repeat(80)).len(), 60);
        assert_eq!(sequence("5000-0012-puppet"), Some(12));
        assert_eq!(sequence("0100-0003-a-b-c"), Some(3));
        assert_eq!(sequence("puppet"), None);
        assert_eq!(sequence("5000-0012-puppet.status").unwrap(), 12);
    }

    /// The last script under a plain shell, on a scratch tree standing for the guest's (a
    /// file for the record disk, found by its serial in a stand-in for /sys/block): the
    /// record holds each script's output and status, the pending scripts and the service's
    /// log, and the listed files and the scripts done are gone.
    #[test]
    fn the_finish_script_records_the_results_and_removes_what_it_is_told() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let at = |p: &str| r.join(p.trim_start_matches('/'));
        for dir in [SCRIPTS, DONE, "/sys/block/vda", "/sys/block/vdb", "/dev", "/root", "/etc/unit.d"] {
            std::fs::create_dir_all(at(dir)).unwrap();
        }
        std::fs::write(at("/sys/block/vda/serial"), "").unwrap();
        std::fs::write(at("/sys/block/vdb/serial"), format!("{RECORD_SERIAL}\n")).unwrap();
        std::fs::write(at("/dev/vdb"), vec![0u8; 4096]).unwrap();
        let done = |name: &str, text: &str| std::fs::write(at(&format!("{DONE}/{name}")), text).unwrap();
        done("5000-0001-a", "#!/bin/sh\n");
        done("5000-0001-a.log", "line one\nline two without newline");
        done("5000-0001-a.status", "0\n");
        done("5000-0002-b b.log", "");
        done("5000-0002-b b.status", "3\n");
        done("9999-0003-virt-pipeline-poweroff.log", "");
        std::fs::write(at(&format!("{SCRIPTS}/5000-0004-later")), "").unwrap();
        std::fs::write(at(LOG), "=== Running a ===\n").unwrap();
        std::fs::write(at("/etc/unit.d/unit"), "").unwrap();

        let removed = at("/etc/unit.d").display().to_string();
        let script = finish_script(std::slice::from_ref(&removed))
            .replace("d=/usr/lib", &format!("d={}/usr/lib", r.display()))
            .replace("d_done=/usr/lib", &format!("d_done={}/usr/lib", r.display()))
            .replace("logfile=/root", &format!("logfile={}/root", r.display()))
            .replace("sys=/sys/block", &format!("sys={}/sys/block", r.display()))
            .replace("devdir=/dev", &format!("devdir={}/dev", r.display()))
            .replace(STOP, "");
        let st = std::process::Command::new("sh").arg("-c").arg(&script).status().unwrap();
        assert!(st.success());

        let (results, cleaned) = read_record(&at("/dev/vdb")).unwrap().expect("a whole record");
        assert!(cleaned);
        let got: Vec<(&str, Option<i32>, &str)> =
            results.done.iter().map(|d| (d.name.as_str(), d.status, d.log.as_str())).collect();
        assert_eq!(
            got,
            [
                ("5000-0001-a", Some(0), "line one\nline two without newline"),
                ("5000-0002-b b", Some(3), ""),
                ("9999-0003-virt-pipeline-poweroff", None, ""),
            ]
        );
        assert_eq!(results.pending, ["5000-0004-later"]);
        assert_eq!(results.log, "=== Running a ===\n");
        assert!(!at(DONE).exists() && !std::path::Path::new(&removed).exists());
        assert!(at(SCRIPTS).exists(), "only what it is told to remove goes");

        // Cut short, or from another program: no record.
        let bytes = std::fs::read(at("/dev/vdb")).unwrap();
        let end = bytes.windows(7).position(|w| w == b"removed").unwrap();
        assert!(parse_record(&bytes[..end]).is_none());
        assert!(parse_record(&[0u8; 64]).is_none());
        assert!(parse_record(b"virt-pipeline-firstboot-record 1\nfile x.log 999999\nshort").is_none());
    }

    /// The runner under a plain shell, on a scratch tree standing for the guest's: scripts
    /// run in name order, once, with their status and output kept; a failure does not stop
    /// the scripts after it.
    #[test]
    fn runner_runs_each_script_once_and_keeps_statuses() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let d = r.join("scripts");
        std::fs::create_dir_all(&d).unwrap();
        let home = r.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let runner = RUNNER_SCRIPT
            .replace("/usr/lib/virt-sysprep", &r.display().to_string())
            .replace("~root", &home.display().to_string());
        std::fs::write(r.join("firstboot.sh"), runner).unwrap();
        let order = r.join("order");
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = d.join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho {name} >> {}\n{body}\n", order.display())).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("5000-0002-second", "echo out; echo err >&2; exit 7");
        script("5000-0001-first", "true");
        script("0100-0003-early", "exit 0");
        let run = || {
            let st = std::process::Command::new("sh")
                .arg(r.join("firstboot.sh"))
                .arg("start")
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        };
        run();
        run();
        assert_eq!(std::fs::read_to_string(&order).unwrap(), "0100-0003-early\n5000-0001-first\n5000-0002-second\n");
        let done = r.join("scripts-done");
        assert_eq!(std::fs::read_to_string(done.join("5000-0002-second.status")).unwrap().trim(), "7");
        assert_eq!(std::fs::read_to_string(done.join("5000-0001-first.status")).unwrap().trim(), "0");
        let log = std::fs::read_to_string(done.join("5000-0002-second.log")).unwrap();
        assert!(log.contains("out") && log.contains("err"), "{log}");
        assert!(std::fs::read_dir(&d).unwrap().next().is_none(), "scripts/ is empty");
        let main_log = std::fs::read_to_string(home.join("virt-sysprep-firstboot.log")).unwrap();
        assert!(main_log.contains("=== Running") && main_log.contains("Exit status of 5000-0002-second: 7"));
    }
}
