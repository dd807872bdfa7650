//! The appliance under TCG. A distribution's x86 kernel is a bzImage whose payload is
//! compressed (XZ on Debian), and without KVM its decompressor runs emulated: about 4 of an
//! appliance launch's 11 seconds here (BENCHMARKS.md, "Appliance launch under TCG"). qemu boots an
//! uncompressed kernel directly through its PVH entry point, so under TCG the wrapper builds
//! libguestfs's appliance itself, with the same supermin command libguestfs runs, into a
//! directory of its own, replaces the kernel there with its uncompressed form, and hands that
//! directory to libguestfs as a fixed appliance. supermin's `--if-newer` still rebuilds it
//! when the host's packages change, as it does libguestfs's own.
//!
//! Anything unexpected (another architecture, an appliance path without supermin.d, a kernel
//! without a PVH entry or in a compression read here) leaves libguestfs's own appliance in use.

use anyhow::{bail, Context, Result};
use object::read::elf::{FileHeader, ProgramHeader};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The kernel of the appliance is the host's own; a bound on what it may unpack to.
const MAX_KERNEL_BYTES: u64 = 512 << 20;

/// The Xen note type qemu looks for to boot an ELF kernel at its 32-bit PVH entry.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const README: &str = "A libguestfs fixed appliance built by virt-pipeline for TCG: supermin's appliance with \
the kernel stored uncompressed, so that the emulated CPU does not decompress it at every launch. \
virt-pipeline rebuilds it when it is out of date; removing this directory is always safe.\n";

/// Whether to use the appliance with the uncompressed kernel under TCG: yes, unless
/// `PIPELINE_APPLIANCE=libguestfs` asks for libguestfs's own.
pub fn wanted() -> std::result::Result<bool, String> {
    appliance_choice(std::env::var("PIPELINE_APPLIANCE").ok().as_deref())
}

fn appliance_choice(value: Option<&str>) -> std::result::Result<bool, String> {
    match value {
        None | Some("") | Some("uncompressed") => Ok(true),
        Some("libguestfs") => Ok(false),
        Some(other) => Err(format!("PIPELINE_APPLIANCE={other:?} is not `libguestfs` or `uncompressed`")),
    }
}

/// How long an appliance may take to bring its daemon up before it is taken for hung, unless
/// `PIPELINE_LAUNCH_TIMEOUT` says otherwise. A launch takes 7-15 s under TCG here, up to
/// about a minute on a loaded host.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The launch timeout in force: `PIPELINE_LAUNCH_TIMEOUT` (a duration: `90s`, `10m`) or
/// [`LAUNCH_TIMEOUT`].
pub fn launch_timeout() -> std::result::Result<Duration, String> {
    timeout_from(std::env::var("PIPELINE_LAUNCH_TIMEOUT").ok().as_deref())
}

fn timeout_from(value: Option<&str>) -> std::result::Result<Duration, String> {
    match value {
        None => Ok(LAUNCH_TIMEOUT),
        Some(v) => humantime::parse_duration(v)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("PIPELINE_LAUNCH_TIMEOUT={v:?} is not a duration such as 90s or 10m")),
    }
}

/// The appliance's environment variables checked, so that a bad value stops a command before
/// anything runs rather than at its first launch.
pub fn check_environment() -> std::result::Result<(), String> {
    wanted().and(launch_timeout()).map(|_| ())
}

/// Watches one launch: past the timeout, kills this process's appliance qemu (a child whose
/// command line names libguestfs's daemon socket, `guestfsd.sock`), so that the launch
/// returns with an error instead of waiting for a kernel that will never come up.
pub struct LaunchWatchdog {
    stop: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LaunchWatchdog {
    pub fn start_with(timeout: Duration) -> LaunchWatchdog {
        let (stop, stopped) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timeout) {
                flag.store(true, Ordering::SeqCst);
                for pid in appliance_children() {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        });
        LaunchWatchdog { stop: Some(stop), fired, thread: Some(thread) }
    }

    /// Stops watching; whether the appliance was killed.
    pub fn fired(mut self) -> bool {
        self.finish();
        self.fired.load(Ordering::SeqCst)
    }

    fn finish(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LaunchWatchdog {
    fn drop(&mut self) {
        self.finish();
    }
}

/// This process's children that are libguestfs appliances.
fn appliance_children() -> Vec<nix::unistd::Pid> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The parent's pid is the second field after the parenthesised command name.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(me) && cmdline.split(|b| *b == 0).any(|arg| arg.windows(13).any(|w| w == b"guestfsd.sock"))
        })
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// The directory to give libguestfs as its path under TCG, or why there is none.
/// `libguestfs_path` is the handle's default path (where supermin.d lives) and `cachedir`
/// its cache directory (`LIBGUESTFS_CACHEDIR`, `TMPDIR` or /var/tmp).
pub fn for_tcg(libguestfs_path: &str, cachedir: &Path) -> Result<PathBuf> {
    if std::env::consts::ARCH != "x86_64" {
        bail!("an uncompressed kernel is booted on x86_64 only");
    }
    let supermin_d = libguestfs_path
        .split(':')
        .map(|dir| Path::new(dir).join("supermin.d"))
        .find(|d| d.is_dir())
        .with_context(|| format!("no supermin.d in libguestfs's path {libguestfs_path}"))?;
    let home = private_dir(&cachedir.join(format!(".virt-pipeline-appliance-{}", nix::unistd::geteuid())))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(home.join("lock"))
        .context("cannot open the appliance lock")?;
    // One process of ours at a time builds or rewrites the appliance.
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock the appliance: {e}"))?;
    let appliance = home.join("appliance.d");
    crate::base::command::checked(
        std::process::Command::new("supermin")
            .args(["--build", "--if-newer", "--lock"])
            .arg(home.join("supermin.lock"))
            .args(["--copy-kernel", "-f", "ext2", "--host-cpu", std::env::consts::ARCH])
            .arg(&supermin_d)
            .arg("-o")
            .arg(&appliance),
        "supermin",
    )?;
    let kernel = appliance.join("kernel");
    if !is_elf(&kernel)? {
        // A fresh build: its kernel is the compressed one. Its mtime is the package's, which
        // supermin's --if-newer would take as out of date; a rewritten file is new.
        let unpacked = std::fs::read(&kernel)
            .context("cannot read the appliance's kernel")
            .and_then(|image| uncompressed_kernel(&image));
        match unpacked {
            Ok(elf) => crate::base::atomic::write(&kernel, &elf)?,
            Err(e) => {
                std::fs::File::options()
                    .write(true)
                    .open(&kernel)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()))
                    .context("cannot touch the appliance's kernel")?;
                return Err(e);
            }
        }
    }
    let readme = appliance.join("README.fixed");
    if !readme.exists() {
        crate::base::atomic::write(&readme, README.as_bytes())?;
    }
    Ok(appliance)
}

/// `dir`, created 0700 if missing; refused when it is a symlink, another user's, or writable
/// by others (it lives in a shared /var/tmp, and what is in it boots as the appliance).
fn private_dir(dir: &Path) -> Result<PathBuf> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        bail!("{} is not a directory of this user's alone", dir.display());
    }
    Ok(dir.to_path_buf())
}

fn is_elf(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF")
}

/// The ELF kernel inside an x86 bzImage, when qemu can boot it directly (it has a PVH entry).
pub fn uncompressed_kernel(bzimage: &[u8]) -> Result<Vec<u8>> {
    let payload = bzimage_payload(bzimage).context("the kernel is not a bzImage of boot protocol 2.08 or later")?;
    let limit = MAX_KERNEL_BYTES + 1;
    let mut elf = Vec::new();
    // Each decoder stops at the end of its stream: the kernel's build appends the unpacked
    // size after it.
    match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => unxz_one_stream(payload, limit, &mut elf),
        [0x1f, 0x8b, ..] => flate2::read::GzDecoder::new(payload).take(limit).read_to_end(&mut elf),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            zstd::stream::read::Decoder::new(payload)?.single_frame().take(limit).read_to_end(&mut elf)
        }
        _ => bail!("the kernel's payload is in a compression not read here (XZ, gzip and zstd are)"),
    }
    .context("cannot unpack the kernel")?;
    if elf.len() as u64 > MAX_KERNEL_BYTES {
        bail!("the kernel unpacks to more than {} MiB", MAX_KERNEL_BYTES >> 20);
    }
    if !has_pvh_entry(&elf)? {
        bail!("the kernel has no PVH entry point (CONFIG_PVH), which qemu needs to boot it uncompressed");
    }
    Ok(elf)
}

/// One XZ stream, ignoring what follows it (xz2's reader calls trailing bytes corrupt).
fn unxz_one_stream(mut input: &[u8], limit: u64, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let corrupt = |e: xz2::stream::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut stream = xz2::stream::Stream::new_stream_decoder(u64::MAX, 0).map_err(corrupt)?;
    loop {
        out.reserve(1 << 20);
        let before = stream.total_in();
        let status = stream.process_vec(input, out, xz2::stream::Action::Run).map_err(corrupt)?;
        input = &input[(stream.total_in() - before) as usize..];
        if status == xz2::stream::Status::StreamEnd || out.len() as u64 >= limit {
            return Ok(out.len());
        }
        if input.is_empty() && out.len() < out.capacity() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the XZ stream is cut short"));
        }
    }
}

/// The compressed payload of a bzImage: the setup header's `payload_offset` and
/// `payload_length`, counted from the protected-mode code after the setup sectors.
fn bzimage_payload(image: &[u8]) -> Option<&[u8]> {
    let u16_at = |at: usize| image.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| image.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if image.get(0x202..0x206)? != b"HdrS" || u16_at(0x206)? < 0x208 {
        return None;
    }
    let setup_sectors = match *image.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sectors + 1) * 512 + u32_at(0x248)? as usize;
    image.get(start..start.checked_add(u32_at(0x24c)? as usize)?)
}

fn has_pvh_entry(elf: &[u8]) -> Result<bool> {
    let header =
        object::elf::FileHeader64::<object::Endianness>::parse(elf).context("the unpacked kernel is not ELF64")?;
    let endian = header.endian().context("the unpacked kernel is not ELF64")?;
    if header.e_machine(endian) != object::elf::EM_X86_64 {
        return Ok(false);
    }
    for segment in header.program_headers(endian, elf).context("the unpacked kernel's program headers")? {
        let Some(mut notes) = segment.notes(endian, elf).context("the unpacked kernel's notes")? else { continue };
        while let Some(note) = notes.next().context("the unpacked kernel's notes")? {
            if note.name() == b"Xen" && note.n_type(endian) == object::elf::NoteType(XEN_ELFNOTE_PHYS32_ENTRY) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A bzImage shell around `payload`: setup header, two setup sectors, then the payload.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 3 * 512];
        image[0x1f1] = 2;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&64u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0u8; 64]);
        image.extend_from_slice(payload);
        // The size the kernel's build appends after the stream.
        image.extend_from_slice(&1234u32.to_le_bytes());
        image
    }

    /// The smallest ELF64 x86_64 file with one PT_NOTE segment holding `note` (name, type).
    fn elf_with_note(name: &[u8], n_type: u32) -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&n_type.to_le_bytes());
        note.extend_from_slice(name);
        note.resize(note.len() + 4 - (name.len() % 4), 0);
        note.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        let mut elf = vec![0u8; 64 + 56];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = &mut elf[64..120];
        ph[0..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_filesz
        ph[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_memsz
        ph[48..56].copy_from_slice(&4u64.to_le_bytes()); // p_align
        elf.extend_from_slice(&note);
        elf
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn a_kernel_is_unpacked_from_each_compression_the_kernel_builds_with() {
        let elf = elf_with_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let zst = zstd::encode_all(&elf[..], 1).unwrap();
        for payload in [xz(&elf), gz.finish().unwrap(), zst] {
            assert_eq!(uncompressed_kernel(&bzimage(&payload)).unwrap(), elf);
        }
    }

    #[test]
    fn a_kernel_qemu_cannot_boot_uncompressed_is_refused() {
        let no_pvh = elf_with_note(b"Xen", 17);
        let err = uncompressed_kernel(&bzimage(&xz(&no_pvh))).unwrap_err();
        assert!(err.to_string().contains("no PVH entry point"), "{err:#}");
        let other_vendor = elf_with_note(b"GNU", XEN_ELFNOTE_PHYS32_ENTRY);
        assert!(uncompressed_kernel(&bzimage(&xz(&other_vendor))).is_err());
        let lz4 = bzimage(b"\x02\x21\x4c\x18rest");
        assert!(uncompressed_kernel(&lz4).unwrap_err().to_string().contains("compression not read here"));
        assert!(uncompressed_kernel(b"not a kernel").is_err());
        let short = xz(&elf_with_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY));
        assert!(uncompressed_kernel(&bzimage(&short[..short.len() / 2])).is_err());
        // A payload length past the end of the file.
        let mut cut = bzimage(&xz(&elf_with_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY)));
        cut.truncate(cut.len() - 20);
        cut[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(uncompressed_kernel(&cut).is_err());
    }

    #[test]
    fn the_environment_variables_take_their_values_and_refuse_others() {
        assert_eq!(appliance_choice(None), Ok(true));
        assert_eq!(appliance_choice(Some("uncompressed")), Ok(true));
        assert_eq!(appliance_choice(Some("libguestfs")), Ok(false));
        assert_eq!(
            appliance_choice(Some("fast")),
            Err("PIPELINE_APPLIANCE=\"fast\" is not `libguestfs` or `uncompressed`".to_string())
        );
        assert_eq!(timeout_from(None), Ok(LAUNCH_TIMEOUT));
        assert_eq!(timeout_from(Some("90s")), Ok(Duration::from_secs(90)));
        for bad in ["0s", "soon", ""] {
            assert!(timeout_from(Some(bad)).unwrap_err().contains("PIPELINE_LAUNCH_TIMEOUT"), "{bad}");
        }
    }

    #[test]
    fn a_launch_past_its_time_has_its_appliance_killed_and_nothing_else() {
        use std::os::unix::process::ExitStatusExt;
        let spawn = |name: &str| std::process::Command::new("sh").args(["-c", "sleep 30", name]).spawn().unwrap();
        let mut appliance = spawn("/tmp/libguestfsX/guestfsd.sock");
        let mut other = spawn("something-else");
        let watchdog = LaunchWatchdog::start_with(Duration::from_millis(200));
        assert_eq!(appliance.wait().unwrap().signal(), Some(9), "the appliance is killed");
        assert!(watchdog.fired());
        assert!(other.try_wait().unwrap().is_none(), "another child lives on");
        other.kill().unwrap();
        other.wait().unwrap();
        let in_time = LaunchWatchdog::start_with(Duration::from_secs(60));
        assert!(!in_time.fired(), "a launch that ends in time stops the watchdog at once");
    }

    #[test]
    fn the_appliance_directory_must_be_this_users_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        assert_eq!(private_dir(&mine).unwrap(), mine);
        assert_eq!(std::fs::metadata(&mine).unwrap().mode() & 0o777, 0o700);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        assert!(private_dir(&shared).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        assert!(private_dir(&link).is_err());
    }
}
